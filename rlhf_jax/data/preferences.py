"""Preference (comparison) files -> ``datasets.Dataset`` with ``prompt``, ``chosen``, ``rejected``.

Formats (``format=None`` detects one from the first record's keys):

- ``'trl'`` — TRL preference records ``{"prompt", "chosen", "rejected"}``; each a plain string, or
  *conversational*: ``prompt`` a list of ``{"role", "content"}`` messages and ``chosen`` /
  ``rejected`` the assistant continuation lists. Conversations are rendered to text with
  ``render(messages, add_generation_prompt)`` — by default :func:`render_plain_chat`
  (``"\\n\\nHuman: ...\\n\\nAssistant:"``); pass ``render=tok.render_chat`` to use a model's chat
  template. The prompt is ``render(prompt, True)`` and each continuation is
  ``render(prompt + chosen)`` minus that prefix (the TRL convention), so with the plain rendering
  ``chosen`` starts with a space, exactly as in HH.
- ``'hh'`` — Anthropic HH-RLHF: ``chosen`` / ``rejected`` are whole dialogues
  ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. The prompt is their longest common prefix cut after
  the last ``"\\n\\nAssistant:"`` in it; chosen / rejected are the remainders (starting with the
  space after ``Assistant:``). TRL "implicit prompt" records (only ``chosen`` / ``rejected``) are
  read the same way; as conversations, the shared leading messages become the prompt.
- ``'tldr'`` — OpenAI summarize-from-feedback comparisons: ``info.post`` (+ ``info.title``,
  ``info.subreddit``), ``summaries`` (two ``{"text"}``), ``choice`` (0/1). Prompt
  ``"SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:"`` (missing parts omitted);
  chosen = ``" " + summaries[choice].text`` (leading whitespace normalised to one space).

Files: ``.jsonl`` (one JSON object per line; blank lines skipped), ``.json`` (a list of records or
``{"data": [...]}``) or ``.parquet``. Bad data raises :class:`DataError` naming the file, the
line (jsonl, 1-based) or record index (json/parquet, 0-based) and the field.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rlhf_jax.data.errors import DataError, Where, type_name
from rlhf_jax.data.tokenizer import render_plain_chat

__all__ = ["load_preferences", "read_records", "PREFERENCE_FORMATS", "split_hh", "tldr_prompt"]

Render = Callable[..., str]
ASSISTANT = "\n\nAssistant:"
_EXTENSIONS = (".jsonl", ".json", ".parquet")


# ----------------------------------------------------------------------------- reading files
def read_records(path: str | os.PathLike) -> Iterator[tuple[Where, dict]]:
    """Yield ``(where, record)`` for each record of a local jsonl / json / parquet file."""
    file = os.fspath(path)
    if not os.path.exists(file):
        raise FileNotFoundError(f"data file not found: {file}")
    ext = os.path.splitext(file)[1].lower()
    if ext not in _EXTENSIONS:
        raise DataError(f"unsupported file extension {ext or '(none)'!r}; use one of "
                        f"{', '.join(_EXTENSIONS)}", file=file)
    if ext == ".jsonl":
        yield from _read_jsonl(file)
    elif ext == ".json":
        yield from _read_json(file)
    else:
        yield from _read_parquet(file)


def _check_record(where: Where, rec: Any) -> dict:
    if not isinstance(rec, dict):
        raise where.error(f"expected a JSON object per record, got {type_name(rec)}")
    return rec


def _utf8(raw: bytes, where: Where) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise where.error(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})") from None


def _read_jsonl(file: str) -> Iterator[tuple[Where, dict]]:
    with open(file, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = Where(file, line=lineno)
            line = _utf8(raw, where)
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise where.error(f"invalid JSON: {e.msg} (column {e.colno})") from None
            yield where, _check_record(where, rec)


def _read_json(file: str) -> Iterator[tuple[Where, dict]]:
    with open(file, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})", file=file,
                        line=raw.count(b"\n", 0, e.start) + 1) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", file=file, line=e.lineno) from None
    if isinstance(data, dict):
        if "data" not in data:
            raise DataError("expected a list of records or an object with a 'data' list; "
                            f"got an object with keys {sorted(data)}", file=file)
        data = data["data"]
        if not isinstance(data, list):
            raise DataError(f"expected a list, got {type_name(data)}", file=file, field="data")
    if not isinstance(data, list):
        raise DataError(f"expected a list of records, got {type_name(data)}", file=file)
    for i, rec in enumerate(data):
        where = Where(file, record=i)
        yield where, _check_record(where, rec)


def _read_parquet(file: str) -> Iterator[tuple[Where, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(file)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"could not read parquet file: {e}", file=file) from e
    start = 0
    for batch in table.to_batches(max_chunksize=4096):
        for j, rec in enumerate(batch.to_pylist()):
            yield Where(file, record=start + j), rec
        start += batch.num_rows


# ----------------------------------------------------------------------------- field access
def get_field(where: Where, rec: dict, name: str, *, label: str | None = None) -> Any:
    """``rec[name]`` or a DataError saying the field is missing (keys seen listed)."""
    if name not in rec:
        raise where.error(f"missing (record has keys {sorted(rec)})", field=label or name)
    return rec[name]


def get_str(where: Where, rec: dict, name: str, *, label: str | None = None) -> str:
    value = get_field(where, rec, name, label=label)
    if not isinstance(value, str):
        raise where.error(f"expected a string, got {type_name(value)}", field=label or name)
    return value


def check_messages(where: Where, value: Any, field: str) -> list[dict]:
    """Validate a conversational list of ``{"role": str, "content": str}`` messages."""
    if not isinstance(value, (list, tuple)):
        raise where.error(
            f"expected a string or a list of {{role, content}} messages, got {type_name(value)}",
            field=field,
        )
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise where.error(f"expected a message object, got {type_name(m)}",
                              field=f"{field}[{i}]")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = "missing" if key not in m else f"expected a string, got {type_name(m[key])}"
                raise where.error(got, field=f"{field}[{i}].{key}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def render_continuation(
    where: Where, render: Render, prompt: list[dict], continuation: list[dict], field: str
) -> str:
    """Text of ``continuation`` after ``render(prompt, add_generation_prompt=True)``."""
    head = render(prompt, add_generation_prompt=True)
    full = render(prompt + continuation, add_generation_prompt=False)
    if not full.startswith(head):
        raise where.error(
            "rendered prompt + continuation does not start with the rendered prompt "
            "(the chat template renders them inconsistently)",
            field=field,
        )
    return full[len(head):]


# ----------------------------------------------------------------------------- formats
def split_hh(where: Where, chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH dialogues into (prompt, chosen, rejected) at the last shared Assistant turn."""
    n = 0
    limit = min(len(chosen), len(rejected))
    while n < limit and chosen[n] == rejected[n]:
        n += 1
    cut = chosen.rfind(ASSISTANT, 0, n)
    if cut < 0:
        raise where.error(
            f"no shared prefix ending in {ASSISTANT!r} between 'chosen' and 'rejected' "
            "(expected Anthropic HH dialogues '\\n\\nHuman: ...\\n\\nAssistant: ...')",
            field="chosen",
        )
    end = cut + len(ASSISTANT)
    return chosen[:end], chosen[end:], rejected[end:]


def tldr_prompt(post: str, title: str | None = None, subreddit: str | None = None) -> str:
    """``"SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:"``
    (missing parts omitted)."""
    parts = []
    if subreddit is not None:
        parts.append(f"SUBREDDIT: r/{subreddit}\n")
    if title is not None:
        parts.append(f"TITLE: {title}\n")
    parts.append(f"POST: {post}\nTL;DR:")
    return "".join(parts)


def tldr_info_prompt(where: Where, info: Any, field: str = "info") -> str:
    """The TL;DR prompt from a summarize-from-feedback ``info`` object."""
    if not isinstance(info, dict):
        raise where.error(f"expected an object, got {type_name(info)}", field=field)
    post = get_str(where, info, "post", label=f"{field}.post")
    optional = {}
    for key in ("title", "subreddit"):
        value = info.get(key)
        if value is not None and not isinstance(value, str):
            raise where.error(f"expected a string, got {type_name(value)}", field=f"{field}.{key}")
        optional[key] = value
    return tldr_prompt(post, **optional)


def leading_space(text: str) -> str:
    return " " + text.lstrip()


def parse_hh(where: Where, rec: dict, render: Render) -> tuple[str, str, str]:
    chosen = get_field(where, rec, "chosen")
    rejected = get_field(where, rec, "rejected")
    if isinstance(chosen, str):
        if not isinstance(rejected, str):
            raise where.error(f"expected a string like 'chosen', got {type_name(rejected)}",
                              field="rejected")
        return split_hh(where, chosen, rejected)
    # TRL implicit prompt, conversational: the shared leading messages are the prompt.
    chosen = check_messages(where, chosen, "chosen")
    rejected = check_messages(where, rejected, "rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise where.error("'chosen' and 'rejected' share no leading messages to use as the prompt",
                          field="chosen")
    prompt = chosen[:n]
    return (
        render(prompt, add_generation_prompt=True),
        render_continuation(where, render, prompt, chosen[n:], "chosen"),
        render_continuation(where, render, prompt, rejected[n:], "rejected"),
    )


def parse_trl(where: Where, rec: dict, render: Render) -> tuple[str, str, str]:
    if "prompt" not in rec and "chosen" in rec and "rejected" in rec:
        return parse_hh(where, rec, render)
    prompt = get_field(where, rec, "prompt")
    chosen = get_field(where, rec, "chosen")
    rejected = get_field(where, rec, "rejected")
    if isinstance(prompt, str):
        for name, value in (("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise where.error(
                    f"expected a string (the prompt is a string), got {type_name(value)}",
                    field=name,
                )
        return prompt, chosen, rejected
    prompt = check_messages(where, prompt, "prompt")
    chosen = check_messages(where, chosen, "chosen")
    rejected = check_messages(where, rejected, "rejected")
    return (
        render(prompt, add_generation_prompt=True),
        render_continuation(where, render, prompt, chosen, "chosen"),
        render_continuation(where, render, prompt, rejected, "rejected"),
    )


def parse_tldr(where: Where, rec: dict, render: Render) -> tuple[str, str, str]:
    prompt = tldr_info_prompt(where, get_field(where, rec, "info"))
    summaries = get_field(where, rec, "summaries")
    if not isinstance(summaries, (list, tuple)) or len(summaries) != 2:
        got = f"{len(summaries)} items" if isinstance(summaries, (list, tuple)) else type_name(
            summaries)
        raise where.error(f"expected a list of 2 summaries, got {got}", field="summaries")
    texts = []
    for i, s in enumerate(summaries):
        if not isinstance(s, dict):
            raise where.error(f"expected an object, got {type_name(s)}", field=f"summaries[{i}]")
        texts.append(get_str(where, s, "text", label=f"summaries[{i}].text"))
    choice = get_field(where, rec, "choice")
    if isinstance(choice, bool) or choice not in (0, 1):
        raise where.error(f"expected 0 or 1, got {choice!r}", field="choice")
    choice = int(choice)
    return prompt, leading_space(texts[choice]), leading_space(texts[1 - choice])


PREFERENCE_FORMATS: dict[str, Callable[[Where, dict, Render], tuple[str, str, str]]] = {
    "trl": parse_trl,
    "hh": parse_hh,
    "tldr": parse_tldr,
}


def lookup(name: str, registry: dict, what: str) -> Any:
    """``registry[name]`` or a ValueError with a did-you-mean suggestion."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, list(registry), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(registry)}.{hint}")


def detect_preference_format(keys) -> str | None:
    keys = set(keys)
    if {"summaries", "choice"} <= keys:
        return "tldr"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "trl"
    if {"chosen", "rejected"} <= keys:
        return "hh"
    return None


def load_preferences(
    path: str | os.PathLike, format: str | None = None, *, render: Render | None = None
):
    """Load a local preference file into a ``datasets.Dataset`` with string columns
    ``prompt``, ``chosen``, ``rejected`` (see the module docstring for the formats).

    ``render(messages, add_generation_prompt=False) -> str`` renders conversational records
    (default :func:`render_plain_chat`; e.g. ``Tokenizer.render_chat`` for a chat template).
    """
    import datasets

    render = render or render_plain_chat
    parse = None if format is None else lookup(format, PREFERENCE_FORMATS, "preference format")
    cols: dict[str, list[str]] = {"prompt": [], "chosen": [], "rejected": []}
    file = os.fspath(path)
    for where, rec in read_records(file):
        if parse is None:
            name = detect_preference_format(rec)
            if name is None:
                raise where.error(
                    f"cannot detect the preference format from keys {sorted(rec)}; known formats: "
                    "'trl' (prompt, chosen, rejected), 'hh' (chosen, rejected), "
                    "'tldr' (info, summaries, choice)"
                )
            parse = PREFERENCE_FORMATS[name]
        prompt, chosen, rejected = parse(where, rec, render)
        cols["prompt"].append(prompt)
        cols["chosen"].append(chosen)
        cols["rejected"].append(rejected)
    if not cols["prompt"]:
        raise DataError("no records", file=file)
    return datasets.Dataset.from_dict(cols, features=string_features(cols))


def string_features(cols: Sequence[str] | dict):
    import datasets

    return datasets.Features({c: datasets.Value("string") for c in cols})
