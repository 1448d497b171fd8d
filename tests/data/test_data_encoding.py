"""The shared prompt|response layout and deterministic batching."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_jax.data import (
    batch_indices,
    encode_preferences,
    encode_prompt_response,
    encode_prompts,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(["one two three four five six"], tmp_path_factory.mktemp("tok"))


def ids_of(tok, words):
    v = tok.hf.get_vocab()
    return [v[w] for w in words.split()]


def test_encode_prompt_response_hand_checked(tok):
    one, two, three, four, five, six = ids_of(tok, "one two three four five six")
    out = encode_prompt_response(
        tok,
        ["one two", "three four five six"],  # second prompt is cut from the left
        ["three", "four five six"],  # second response: 3 tokens + EOS > R=3, loses EOS
        max_prompt_len=3,
        max_response_len=3,
    )
    assert set(out) == {"input_ids", "attention_mask", "response_mask", "prompt_len"}
    assert out["prompt_len"] == 3
    for key in ("input_ids", "attention_mask", "response_mask"):
        assert out[key].dtype == np.int32 and out[key].shape == (2, 6)
    eos, pad = tok.eos_id, tok.pad_id
    np.testing.assert_array_equal(
        out["input_ids"],
        [[pad, one, two, three, eos, pad], [four, five, six, four, five, six]],
    )
    np.testing.assert_array_equal(out["attention_mask"], [[0, 1, 1, 1, 1, 0], [1] * 6])
    np.testing.assert_array_equal(out["response_mask"], [[0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1]])


def test_response_eos_rules(tok):
    one, two = ids_of(tok, "one two")
    eos, pad = tok.eos_id, tok.pad_id
    # R-1 tokens: EOS fits; empty response: just EOS; add_eos=False: no EOS
    out = encode_prompt_response(tok, ["", ""], ["one two", ""], 1, 3)
    np.testing.assert_array_equal(out["input_ids"], [[pad, one, two, eos], [pad, eos, pad, pad]])
    np.testing.assert_array_equal(out["attention_mask"], [[0, 1, 1, 1], [0, 1, 0, 0]])
    out = encode_prompt_response(tok, ["one"], ["one two"], 1, 3, add_eos=False)
    np.testing.assert_array_equal(out["input_ids"], [[one, one, two, pad]])
    np.testing.assert_array_equal(out["response_mask"], [[0, 1, 1, 0]])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        encode_prompt_response(tok, ["a", "b"], ["c"], 2, 2)


def test_encode_prompts_matches_prompt_block(tok):
    prompts = ["one two three four", "five"]
    ids, mask = encode_prompts(tok, prompts, 3)
    out = encode_prompt_response(tok, prompts, ["six", "six"], 3, 2)
    np.testing.assert_array_equal(ids, out["input_ids"][:, :3])
    np.testing.assert_array_equal(mask, out["attention_mask"][:, :3])
    np.testing.assert_array_equal(ids[0], ids_of(tok, "two three four"))
    np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1]])


def test_encode_preferences(tok):
    data = {"prompt": ["one", "two three"], "chosen": ["four", "five six"],
            "rejected": ["six six six six", "one"]}
    out = encode_preferences(tok, data, 2, 4)
    assert out["prompt_len"] == 2
    for side in ("chosen", "rejected"):
        ref = encode_prompt_response(tok, data["prompt"], data[side], 2, 4)
        for key in ("input_ids", "attention_mask", "response_mask"):
            np.testing.assert_array_equal(out[f"{side}_{key}"], ref[key])
    np.testing.assert_array_equal(out["chosen_input_ids"][:, :2], out["rejected_input_ids"][:, :2])
    assert out["rejected_response_mask"][0].sum() == 4  # truncated, no EOS
    assert tok.eos_id not in out["rejected_input_ids"][0]

    import datasets

    ds = datasets.Dataset.from_dict(data)
    out_ds = encode_preferences(tok, ds, 2, 4)
    np.testing.assert_array_equal(out_ds["chosen_input_ids"], out["chosen_input_ids"])


def test_batch_indices_deterministic_and_disjoint():
    a = batch_indices(10, 3, seed=0, epoch=0)
    assert a.shape == (3, 3)
    np.testing.assert_array_equal(a, batch_indices(10, 3, seed=0, epoch=0))
    np.testing.assert_array_equal(
        a.ravel(), np.random.default_rng([0, 0]).permutation(10)[:9]
    )
    assert not np.array_equal(a, batch_indices(10, 3, seed=0, epoch=1))
    assert not np.array_equal(a, batch_indices(10, 3, seed=1, epoch=0))
    assert batch_indices(2, 3, 0, 0).shape == (0, 3)
    with pytest.raises(ValueError):
        batch_indices(10, 0, 0, 0)
    with pytest.raises(ValueError):
        batch_indices(10, 2, -1, 0)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 200), st.integers(1, 17), st.integers(0, 2**31), st.integers(0, 50))
def test_batch_indices_each_index_at_most_once(n, bs, seed, epoch):
    b = batch_indices(n, bs, seed, epoch)
    assert b.shape == (n // bs, bs)
    flat = b.ravel()
    assert len(set(flat.tolist())) == flat.size
    assert flat.size == 0 or (flat.min() >= 0 and flat.max() < n)
