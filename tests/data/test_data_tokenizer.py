"""Tokenizer wrapper: training, loading via AutoTokenizer, padding/truncation, chat rendering."""

import json
import os

import numpy as np
import pytest

from rlhf_jax.data import DataError, Tokenizer, load_tokenizer, render_plain_chat, train_tokenizer

SENTENCES = [
    "the cat sat on the mat.",
    "the dog sat on the log.",
    "hello world, how are you?",
    "a cat and a dog are friends!",
]


@pytest.fixture(scope="module")
def wl(tmp_path_factory):
    return train_tokenizer(SENTENCES, tmp_path_factory.mktemp("wl"), vocab_size=64)


def make_gpt2_style(out_dir, chat_template=None):
    """Byte-level BPE with only <|endoftext|> (BOS = EOS, no pad), like GPT-2."""
    from tokenizers import Tokenizer as Raw
    from tokenizers import decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Raw(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    raw.train_from_iterator(SENTENCES, trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    if chat_template is not None:
        hf.chat_template = chat_template
    hf.save_pretrained(out_dir)
    return load_tokenizer(out_dir)


def test_trained_wordlevel_loads_through_autotokenizer(wl, tmp_path):
    assert isinstance(wl, Tokenizer)
    assert os.path.exists(os.path.join(wl.path, "tokenizer_config.json"))
    cfg = json.load(open(os.path.join(wl.path, "tokenizer_config.json")))
    assert cfg["pad_token"] == "<pad>" and cfg["eos_token"] == "<eos>"
    again = load_tokenizer(wl.path)
    assert (again.pad_id, again.eos_id, again.bos_id) == (0, 1, None)
    assert again.hf.convert_tokens_to_ids("<unk>") == 2
    assert again.vocab_size == len(again.hf.get_vocab())
    assert not again.has_chat_template


def test_wordlevel_round_trip_and_unknown_words(wl):
    ids = wl.tokenize("the cat sat on the mat.")[0]
    assert len(ids) == 7 and min(ids) > 2
    assert wl.decode(np.array([ids])) == ["the cat sat on the mat."]
    assert wl.decode(wl.tokenize("Hello World, how are you?")[0]) == ["hello world, how are you?"]
    unk = wl.tokenize("the zebra sat")[0]
    assert unk[1] == 2
    assert wl.decode(unk) == ["the sat"]  # <unk> is special, skipped


def test_training_is_deterministic(tmp_path):
    a = train_tokenizer(SENTENCES * 2, tmp_path / "a", vocab_size=20)
    b = train_tokenizer(SENTENCES * 2, tmp_path / "b", vocab_size=20)
    assert a.hf.get_vocab() == b.hf.get_vocab()
    assert open(tmp_path / "a" / "tokenizer.json").read() == open(
        tmp_path / "b" / "tokenizer.json"
    ).read()
    assert a.vocab_size == 20


def test_bpe_round_trip_is_exact(tmp_path):
    tok = train_tokenizer(SENTENCES, tmp_path / "bpe", vocab_size=300, kind="bpe")
    assert (tok.pad_id, tok.eos_id) == (0, 1)
    text = "\n\nHuman: Hello, World!\n\nAssistant: the cat  sat."
    ids, mask = tok.encode([text], 64)
    assert tok.decode(ids, mask) == [text]
    # merges learned from the corpus make common words single tokens
    assert len(tok.tokenize(" cat")[0]) == 1


def test_train_tokenizer_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="vocab_size >= 259"):
        train_tokenizer(SENTENCES, tmp_path / "x", vocab_size=100, kind="bpe")
    with pytest.raises(ValueError, match="'wordlevel' or 'bpe'"):
        train_tokenizer(SENTENCES, tmp_path / "y", kind="unigram")


def test_encode_padding_sides_hand_checked(wl):
    v = wl.hf.get_vocab()
    the, cat, sat, dog = v["the"], v["cat"], v["sat"], v["dog"]
    ids, mask = wl.encode(["the cat sat", "dog"], 5)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    np.testing.assert_array_equal(ids, [[the, cat, sat, 0, 0], [dog, 0, 0, 0, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    ids, mask = wl.encode(["the cat sat", "dog"], 5, side="left", add_eos=True)
    np.testing.assert_array_equal(ids, [[0, the, cat, sat, 1], [0, 0, 0, dog, 1]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1, 1], [0, 0, 0, 1, 1]])


def test_encode_truncation_sides_keep_eos(wl):
    v = wl.hf.get_vocab()
    the, cat, sat = v["the"], v["cat"], v["sat"]
    ids, mask = wl.encode("the cat sat", 2)
    np.testing.assert_array_equal(ids, [[the, cat]])
    ids, _ = wl.encode("the cat sat", 2, truncation_side="left")
    np.testing.assert_array_equal(ids, [[cat, sat]])
    ids, mask = wl.encode("the cat sat", 2, add_eos=True)
    np.testing.assert_array_equal(ids, [[the, 1]])
    ids, _ = wl.encode("the cat sat", 2, add_eos=True, truncation_side="left", side="left")
    np.testing.assert_array_equal(ids, [[sat, 1]])
    # no BOS in this tokenizer: add_bos is a no-op
    np.testing.assert_array_equal(wl.encode("the", 2, add_bos=True)[0], [[the, 0]])
    with pytest.raises(ValueError, match="no room"):
        wl.encode("the", 0, add_eos=True)
    assert wl.encode([], 4)[0].shape == (0, 4)


def test_decode_uses_only_masked_in_tokens(wl):
    v = wl.hf.get_vocab()
    ids = np.array([[v["the"], v["dog"], v["cat"], 0]])
    assert wl.decode(ids, np.array([[1, 0, 1, 0]])) == ["the cat"]
    assert wl.decode(ids) == ["the dog cat"]  # pad is special: skipped
    assert wl.decode(ids[0], np.array([0, 1, 0, 0])) == ["dog"]


def test_gpt2_style_tokenizer_pads_with_eos(tmp_path):
    tok = make_gpt2_style(tmp_path / "gpt2")
    eos = tok.hf.convert_tokens_to_ids("<|endoftext|>")
    assert tok.hf.pad_token_id is None
    assert tok.pad_id == tok.eos_id == tok.bos_id == eos
    ids, mask = tok.encode(["the cat", "a"], 6, side="left", add_eos=True, add_bos=True)
    assert ids[1, 0] == eos and mask[1, 0] == 0  # pad value = EOS, masked out
    assert ids[1, 3] == eos and mask[1, 3] == 1  # BOS (same id) is real
    assert ids[1, 5] == eos and mask[1, 5] == 1  # EOS is real
    assert tok.decode(ids, mask) == ["the cat", "a"]


def test_chat_template_vs_plain_fallback(tmp_path, wl):
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    template = (
        "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
        "{% if add_generation_prompt %}<assistant>{% endif %}"
    )
    tok = make_gpt2_style(tmp_path / "chat", chat_template=template)
    assert tok.has_chat_template
    assert tok.render_chat(msgs) == "<user>hi<assistant>yo"
    assert tok.render_chat(msgs[:1], add_generation_prompt=True) == "<user>hi<assistant>"
    assert wl.render_chat(msgs) == "\n\nHuman: hi\n\nAssistant: yo"
    assert wl.render_chat(msgs[:1], add_generation_prompt=True) == "\n\nHuman: hi\n\nAssistant:"


def test_render_plain_chat_roles():
    msgs = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "tool", "content": "42"},
    ]
    assert render_plain_chat(msgs, add_generation_prompt=True) == (
        "\n\nSystem: be nice\n\nHuman: hi\n\nAssistant: yo\n\nTool: 42\n\nAssistant:"
    )
    assert render_plain_chat([]) == ""


def test_load_tokenizer_errors_name_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(missing)
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(DataError, match="empty_dir"):
        load_tokenizer(empty)
    afile = tmp_path / "some_file.txt"
    afile.write_text("x")
    with pytest.raises(DataError, match="some_file.txt"):
        load_tokenizer(afile)
