"""load_preferences: every format in every file type, auto-detection, and error messages."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf_jax.data import DataError, load_preferences


def write(path, records, json_wrap=False):
    """Write records as .jsonl / .json / .parquet depending on the suffix."""
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif suffix == ".json":
        path.write_text(json.dumps({"data": records} if json_wrap else records))
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(records), path)
    else:
        path.write_text("whatever")
    return path


def rows(ds):
    assert ds.column_names == ["prompt", "chosen", "rejected"]
    return [(r["prompt"], r["chosen"], r["rejected"]) for r in ds]


EXTS = [".jsonl", ".json", ".parquet"]

TRL_PLAIN = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    {"prompt": "2+2=", "chosen": "4", "rejected": "5", "extra": 1},
]
TRL_CONV = [
    {
        "prompt": [{"role": "user", "content": "What color is the sky?"}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "Green."}],
    },
    {
        "prompt": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ],
        "chosen": [
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Bye!"},
        ],
        "rejected": [{"role": "assistant", "content": "Go away"}],
    },
]
HH = [
    {
        "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
        "rejected": "\n\nHuman: Hi there\n\nAssistant: What?",
    },
    {
        "chosen": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: Dee",
        "rejected": "\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant: Dum",
    },
]
TLDR = [
    {
        "info": {"id": "t1", "post": "My cat ignores me.", "title": "Cat help",
                 "subreddit": "cats"},
        "summaries": [{"text": " cat ignores owner", "policy": "a"},
                      {"text": "cat", "policy": "b"}],
        "choice": 1,
        "worker": "w",
    },
    {
        "info": {"post": "Long post", "title": None},
        "summaries": [{"text": "first"}, {"text": "second"}],
        "choice": 0,
    },
]

EXPECTED = {
    "trl_plain": [("The sky is", " blue.", " green."), ("2+2=", "4", "5")],
    "trl_conv": [
        ("\n\nHuman: What color is the sky?\n\nAssistant:", " Blue.", " Green."),
        (
            "\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant:",
            " Hello\n\nHuman: Bye\n\nAssistant: Bye!",
            " Go away",
        ),
    ],
    "hh": [
        ("\n\nHuman: Hi there\n\nAssistant:", " Hello! How can I help?", " What?"),
        ("\n\nHuman: A\n\nAssistant: B\n\nHuman: C\n\nAssistant:", " Dee", " Dum"),
    ],
    "tldr": [
        ("SUBREDDIT: r/cats\nTITLE: Cat help\nPOST: My cat ignores me.\nTL;DR:", " cat",
         " cat ignores owner"),
        ("POST: Long post\nTL;DR:", " first", " second"),
    ],
}
DATA = {"trl_plain": TRL_PLAIN, "trl_conv": TRL_CONV, "hh": HH, "tldr": TLDR}
FORMAT = {"trl_plain": "trl", "trl_conv": "trl", "hh": "hh", "tldr": "tldr"}


@pytest.mark.parametrize("ext", EXTS)
@pytest.mark.parametrize("kind", sorted(DATA))
def test_formats_in_every_file_type(tmp_path, kind, ext):
    path = write(tmp_path / f"prefs{ext}", DATA[kind])
    assert rows(load_preferences(path)) == EXPECTED[kind]  # auto-detected
    assert rows(load_preferences(str(path), format=FORMAT[kind])) == EXPECTED[kind]


def test_json_data_wrapper(tmp_path):
    path = write(tmp_path / "p.json", HH, json_wrap=True)
    assert rows(load_preferences(path)) == EXPECTED["hh"]


def test_trl_implicit_prompt(tmp_path):
    conv = [{
        "chosen": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "bad"}],
    }]
    path = write(tmp_path / "implicit.jsonl", conv)
    expected = [("\n\nHuman: Q\n\nAssistant:", " good", " bad")]
    assert rows(load_preferences(path)) == expected
    assert rows(load_preferences(path, format="trl")) == expected
    # string implicit prompt under format='trl' is split like HH
    assert rows(load_preferences(write(tmp_path / "hh.jsonl", HH), format="trl")) == EXPECTED["hh"]


def test_render_override(tmp_path):
    def render(messages, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    path = write(tmp_path / "conv.jsonl", TRL_CONV[:1])
    assert rows(load_preferences(path, render=render)) == [
        ("<user>What color is the sky?<assistant>", "Blue.", "Green.")
    ]


def test_unknown_format_name_suggests():
    with pytest.raises(ValueError, match="Did you mean 'hh'"):
        load_preferences("unused.jsonl", format="hhh")


def test_undetectable_format_lists_formats_and_keys(tmp_path):
    path = write(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError) as e:
        load_preferences(path)
    msg = str(e.value)
    assert "odd.jsonl:1:" in msg
    for word in ("'trl'", "'hh'", "'tldr'", "'question'", "'answer'"):
        assert word in msg


def test_missing_file_and_bad_extension(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_prefs.jsonl"):
        load_preferences(tmp_path / "missing_prefs.jsonl")
    path = write(tmp_path / "prefs.csv", [])
    with pytest.raises(DataError, match=r"prefs\.csv.*'\.csv'"):
        load_preferences(path)


def _jsonl_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_invalid_json_line_is_named(tmp_path):
    path = _jsonl_lines(tmp_path / "bad.jsonl", [json.dumps(TRL_PLAIN[0]), "", '{"prompt": '])
    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
        load_preferences(path)
    path = _jsonl_lines(tmp_path / "notobj.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match=r"notobj\.jsonl:1: expected a JSON object.*got a list"):
        load_preferences(path)


@pytest.mark.parametrize(
    "record, fmt, field, reason",
    [
        ({"prompt": "p", "chosen": None, "rejected": "r"}, "trl", "chosen",
         "expected a string (the prompt is a string), got null"),
        ({"prompt": "p", "chosen": "c"}, "trl", "rejected", "missing"),
        ({"prompt": 3, "chosen": "c", "rejected": "r"}, "trl", "prompt",
         "expected a string or a list of {role, content} messages, got a number"),
        ({"prompt": [{"role": "user"}], "chosen": [], "rejected": []}, "trl",
         "prompt[0].content", "missing"),
        ({"prompt": [{"role": "user", "content": "q"}], "chosen": "c", "rejected": []}, "trl",
         "chosen", "got a string"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "different"}, "hh", "chosen",
         "no shared prefix ending in"),
        ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": None}, "hh", "rejected",
         "got null"),
        ({"chosen": [{"role": "user", "content": "a"}],
          "rejected": [{"role": "user", "content": "b"}]}, "hh", "chosen", "share no leading"),
        (dict(TLDR[0], choice=2), "tldr", "choice", "expected 0 or 1, got 2"),
        (dict(TLDR[0], choice=True), "tldr", "choice", "expected 0 or 1, got True"),
        (dict(TLDR[0], summaries=[{"text": "a"}, {"txt": "b"}]), "tldr", "summaries[1].text",
         "missing"),
        (dict(TLDR[0], summaries=[{"text": "a"}]), "tldr", "summaries", "got 1 items"),
        (dict(TLDR[0], info={"title": "t"}), "tldr", "info.post", "missing"),
        (dict(TLDR[0], info={"post": "p", "subreddit": 5}), "tldr", "info.subreddit",
         "got a number"),
    ],
)
def test_malformed_record_names_file_line_and_field(tmp_path, record, fmt, field, reason):
    good = {"trl": TRL_PLAIN[0], "hh": HH[0], "tldr": TLDR[0]}[fmt]
    path = write(tmp_path / "data.jsonl", [good, good, record])
    with pytest.raises(DataError) as e:
        load_preferences(path, format=fmt)
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: field {field!r}: "), msg
    assert reason in msg
    assert (e.value.line, e.value.field) == (3, field)
    # auto-detection reaches the same record (first record sets the format)
    with pytest.raises(DataError, match=":3: "):
        load_preferences(path)


@pytest.mark.parametrize("ext", [".json", ".parquet"])
def test_record_index_in_json_and_parquet(tmp_path, ext):
    records = [TRL_PLAIN[0], {"prompt": "p", "chosen": "c", "rejected": None}]
    path = write(tmp_path / f"prefs{ext}", records)
    with pytest.raises(DataError) as e:
        load_preferences(path)
    assert str(e.value).startswith(f"{path}: record 1: field 'rejected': ")
    assert e.value.record == 1


@pytest.mark.parametrize("name,content,message", [
    ("broken.json", '[\n {"prompt": "a",\n oops}\n]', r"broken\.json:3: invalid JSON"),
    ("obj.json", '{"rows": []}', r"obj\.json: .*'data'.*\['rows'\]"),
    ("num.json", "3", r"num\.json: expected a list of records, got a number"),
    ("empty.jsonl", "\n\n", r"empty\.jsonl: no records"),
    ("corrupt.parquet", "not parquet", r"corrupt\.parquet: could not read parquet"),
])
def test_file_level_errors(tmp_path, name, content, message):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(DataError, match=message):
        load_preferences(p)
