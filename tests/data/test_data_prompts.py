"""load_prompts / load_sft: accepted record shapes and error messages."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_jax.data import DataError, load_prompts, load_sft


def write(path, records):
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    elif path.suffix == ".json":
        path.write_text(json.dumps(records))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


USER_Q = [{"role": "user", "content": "Why?"}]
CONV = USER_Q + [{"role": "assistant", "content": "Because."}]


@pytest.mark.parametrize(
    "records, expected",
    [
        ([{"prompt": "Once upon"}, {"prompt": "a time"}], ["Once upon", "a time"]),
        ([{"query": "q1"}], ["q1"]),
        ([{"prompt": USER_Q}], ["\n\nHuman: Why?\n\nAssistant:"]),
        ([{"info": {"post": "P", "title": "T", "subreddit": "s"}, "summaries": [], "choice": 0}],
         ["SUBREDDIT: r/s\nTITLE: T\nPOST: P\nTL;DR:"]),
        ([{"post": "P", "title": "T", "summary": "x"}], ["TITLE: T\nPOST: P\nTL;DR:"]),
        ([{"messages": CONV}], ["\n\nHuman: Why?\n\nAssistant:"]),
        ([{"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "\n\nHuman: hi\n\nAssistant: b"}],
         ["\n\nHuman: hi\n\nAssistant:"]),
    ],
)
@pytest.mark.parametrize("ext", [".jsonl", ".json", ".parquet"])
def test_load_prompts_shapes(tmp_path, records, expected, ext):
    ds = load_prompts(write(tmp_path / f"prompts{ext}", records))
    assert ds.column_names == ["prompt"]
    assert ds["prompt"] == expected


def test_load_prompts_explicit_field_and_render(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"question": "Q?", "prompt": "ignored"}])
    assert load_prompts(path, field="question")["prompt"] == ["Q?"]
    path = write(tmp_path / "c.jsonl", [{"prompt": USER_Q}])

    def render(messages, add_generation_prompt=False):
        return "|".join(m["content"] for m in messages) + ("|>" if add_generation_prompt else "")

    assert load_prompts(path, render=render)["prompt"] == ["Why?|>"]


def test_load_prompts_errors(tmp_path):
    path = write(tmp_path / "p.jsonl", [{"prompt": "a"}, {"prompt": None}])
    with pytest.raises(DataError, match=r"p\.jsonl:2: field 'prompt': .*got null"):
        load_prompts(path)
    path = write(tmp_path / "q.jsonl", [{"x": 1}])
    with pytest.raises(DataError, match=r"q\.jsonl:1: cannot find a prompt.*\['x'\]"):
        load_prompts(path)
    path = write(tmp_path / "f.json", [{"a": "x"}, {"b": "y"}])
    with pytest.raises(DataError, match=r"f\.json: record 1: field 'a': missing"):
        load_prompts(path, field="a")
    with pytest.raises(FileNotFoundError, match="nothere.jsonl"):
        load_prompts(tmp_path / "nothere.jsonl")


@pytest.mark.parametrize(
    "records, expected",
    [
        ([{"prompt": "2+2=", "completion": "4"}], [("2+2=", "4")]),
        ([{"prompt": USER_Q, "completion": CONV[1:]}],
         [("\n\nHuman: Why?\n\nAssistant:", " Because.")]),
        ([{"messages": CONV + [{"role": "user", "content": "Ok"},
                               {"role": "assistant", "content": "Bye"}]}],
         [("\n\nHuman: Why?\n\nAssistant: Because.\n\nHuman: Ok\n\nAssistant:", " Bye")]),
        ([{"text": "plain text."}], [("", "plain text.")]),
        ([{"post": "P", "subreddit": "s", "summary": " sum"}],
         [("SUBREDDIT: r/s\nPOST: P\nTL;DR:", " sum")]),
        ([{"info": {"post": "P"}, "summary": "sum"}], [("POST: P\nTL;DR:", " sum")]),
    ],
)
@pytest.mark.parametrize("ext", [".jsonl", ".parquet"])
def test_load_sft_shapes(tmp_path, records, expected, ext):
    ds = load_sft(write(tmp_path / f"sft{ext}", records))
    assert ds.column_names == ["prompt", "completion"]
    assert list(zip(ds["prompt"], ds["completion"])) == expected


def test_load_sft_prompt_plus_completion_is_the_conversation(tmp_path):
    from rlhf_jax.data import render_plain_chat

    ds = load_sft(write(tmp_path / "m.jsonl", [{"messages": CONV}]))
    assert ds["prompt"][0] + ds["completion"][0] == render_plain_chat(CONV)


def test_load_sft_errors(tmp_path):
    path = write(tmp_path / "s.jsonl", [{"messages": CONV}, {"messages": USER_Q}])
    with pytest.raises(DataError, match=r"s\.jsonl:2: field 'messages': .*turn, got 'user'"):
        load_sft(path)
    path = write(tmp_path / "t.jsonl", [{"prompt": "a", "completion": "b"}, {"prompt": "a",
                                                                            "completion": 7}])
    with pytest.raises(DataError, match=r"t\.jsonl:2: field 'completion': .*got a number"):
        load_sft(path)
    path = write(tmp_path / "u.jsonl", [{"text": "a"}, {"txt": "b"}])
    with pytest.raises(DataError, match=r"u\.jsonl:2: field 'text': missing"):
        load_sft(path)
    path = write(tmp_path / "v.jsonl", [{"messages": [{"role": "user", "content": 1}]}])
    with pytest.raises(DataError, match=r"v\.jsonl:1: field 'messages\[0\]\.content': expected"):
        load_sft(path)
    path = write(tmp_path / "w.jsonl", [{"foo": "a"}])
    with pytest.raises(DataError, match=r"w\.jsonl:1: cannot detect the SFT format.*\['foo'\]"):
        load_sft(path)
