"""Prompt datasets (for RL rollouts) and SFT datasets (prompt -> completion) from local files.

Same files (``.jsonl`` / ``.json`` / ``.parquet``), same rendering of conversations and same
:class:`DataError` rules as :mod:`rlhf_jax.data.preferences`; the kind of record is detected from
the first record's keys.

Prompt records (:func:`load_prompts`), first match wins:

- ``prompt`` — a string, or TRL conversational messages rendered with ``render(msgs, True)``;
- ``query`` — a string (or messages), as in TRL's PPO examples;
- ``info`` with ``info.post`` — summarize-from-feedback; the TL;DR prompt
  ``"SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:"``;
- ``post`` (+ ``title``, ``subreddit``) at top level — the TL;DR SFT files, same prompt;
- ``messages`` — a conversation ending in an assistant turn; the prompt is everything before it;
- ``chosen`` / ``rejected`` — HH dialogues; the shared prompt (see ``split_hh``).

``field=`` picks a field explicitly (a string, messages, or a TL;DR ``info`` object).

SFT records (:func:`load_sft`):

- ``prompt`` / ``completion`` — strings, or TRL conversational lists (the completion rendered as
  the continuation of the prompt, like preference continuations);
- ``messages`` — prompt = all turns before the last (assistant) one, rendered with the
  generation prompt (``...\\n\\nAssistant:`` in the plain rendering); completion = the last
  assistant turn as the continuation of that text (``" " + content`` in the plain rendering, so
  ``prompt + completion`` is the rendered conversation);
- ``post`` (or ``info.post``) / ``summary`` — TL;DR prompt, completion ``" " + summary``;
- ``text`` only — prompt ``""`` and completion = the text (plain LM data).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from rlhf_jax.data.errors import DataError, Where, type_name
from rlhf_jax.data.preferences import (
    Render,
    parse_hh,
    check_messages,
    get_field,
    get_str,
    leading_space,
    read_records,
    render_continuation,
    string_features,
    tldr_info_prompt,
    tldr_prompt,
)
from rlhf_jax.data.tokenizer import render_plain_chat

__all__ = ["load_prompts", "load_sft"]


def _text_or_messages(where: Where, rec: dict, name: str, render: Render) -> str:
    value = get_field(where, rec, name)
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "post" in value:
        return tldr_info_prompt(where, value, name)
    return render(check_messages(where, value, name), add_generation_prompt=True)


def _top_level_tldr(where: Where, rec: dict) -> str:
    post = get_str(where, rec, "post")
    optional = {}
    for key in ("title", "subreddit"):
        value = rec.get(key)
        if value is not None and not isinstance(value, str):
            raise where.error(f"expected a string, got {type_name(value)}", field=key)
        optional[key] = value
    return tldr_prompt(post, **optional)


def _split_conversation(where: Where, rec: dict, render: Render) -> tuple[str, str]:
    messages = check_messages(where, get_field(where, rec, "messages"), "messages")
    if not messages or messages[-1]["role"] != "assistant":
        last = messages[-1]["role"] if messages else "nothing (empty list)"
        raise where.error(
            f"expected the conversation to end with an assistant turn, got {last!r}",
            field="messages",
        )
    prompt = messages[:-1]
    return (
        render(prompt, add_generation_prompt=True),
        render_continuation(where, render, prompt, messages[-1:], "messages"),
    )


_PROMPT_KINDS: dict[str, tuple[Callable[[set], bool], Callable[[Where, dict, Render], str]]] = {
    "prompt": (lambda k: "prompt" in k, lambda w, r, f: _text_or_messages(w, r, "prompt", f)),
    "query": (lambda k: "query" in k, lambda w, r, f: _text_or_messages(w, r, "query", f)),
    "tldr": (lambda k: "info" in k, lambda w, r, f: tldr_info_prompt(w, get_field(w, r, "info"))),
    "tldr_post": (lambda k: "post" in k, lambda w, r, f: _top_level_tldr(w, r)),
    "messages": (lambda k: "messages" in k, lambda w, r, f: _split_conversation(w, r, f)[0]),
    "hh": (lambda k: {"chosen", "rejected"} <= k, lambda w, r, f: parse_hh(w, r, f)[0]),
}


def _detect_parser(where: Where, rec: dict, kinds: dict, message: str):
    """The parser of the first kind whose key check accepts ``rec`` (format detected from the
    first record); a DataError at ``where`` with ``message`` (``{keys}`` filled in) otherwise."""
    keys = set(rec)
    for check, fn in kinds.values():
        if check(keys):
            return fn
    raise where.error(message.format(keys=sorted(rec)))


def load_prompts(
    path: str | os.PathLike, field: str | None = None, *, render: Render | None = None
):
    """Load prompts into a ``datasets.Dataset`` with one string column ``prompt``.

    ``render(messages, add_generation_prompt=False) -> str`` renders conversations (default
    :func:`render_plain_chat`; ``Tokenizer.render_chat`` to use a chat template).
    """
    import datasets

    render = render or render_plain_chat
    file = os.fspath(path)
    parse = None
    if field is not None:
        parse = lambda w, r, f: _text_or_messages(w, r, field, f)  # noqa: E731
    prompts: list[str] = []
    for where, rec in read_records(file):
        if parse is None:
            parse = _detect_parser(where, rec, _PROMPT_KINDS, (
                "cannot find a prompt in a record with keys {keys}; expected one of "
                "'prompt', 'query', 'info' (TL;DR), 'post', 'messages', or 'chosen'/'rejected' "
                "(HH), or pass field="))
        prompts.append(parse(where, rec, render))
    if not prompts:
        raise DataError("no records", file=file)
    return datasets.Dataset.from_dict({"prompt": prompts}, features=string_features(["prompt"]))


def _sft_prompt_completion(where: Where, rec: dict, render: Render) -> tuple[str, str]:
    prompt = get_field(where, rec, "prompt")
    completion = get_field(where, rec, "completion")
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            raise where.error(
                f"expected a string (the prompt is a string), got {type_name(completion)}",
                field="completion",
            )
        return prompt, completion
    prompt = check_messages(where, prompt, "prompt")
    completion = check_messages(where, completion, "completion")
    return (
        render(prompt, add_generation_prompt=True),
        render_continuation(where, render, prompt, completion, "completion"),
    )


def _sft_tldr(where: Where, rec: dict, render: Render) -> tuple[str, str]:
    if "info" in rec:
        prompt = tldr_info_prompt(where, get_field(where, rec, "info"))
    else:
        prompt = _top_level_tldr(where, rec)
    return prompt, leading_space(get_str(where, rec, "summary"))


def _sft_text(where: Where, rec: dict, render: Render) -> tuple[str, str]:
    return "", get_str(where, rec, "text")


_SFT_KINDS: dict[str, tuple[Callable[[set], bool], Callable]] = {
    "prompt_completion": (lambda k: {"prompt", "completion"} <= k, _sft_prompt_completion),
    "messages": (lambda k: "messages" in k, _split_conversation),
    "tldr": (lambda k: "summary" in k and ("post" in k or "info" in k), _sft_tldr),
    "text": (lambda k: "text" in k, _sft_text),
}


def load_sft(path: str | os.PathLike, *, render: Render | None = None):
    """Load demonstrations into a ``datasets.Dataset`` with string columns ``prompt`` and
    ``completion`` (the model is trained on the completion given the prompt)."""
    import datasets

    render = render or render_plain_chat
    file = os.fspath(path)
    parse = None
    cols: dict[str, list[str]] = {"prompt": [], "completion": []}
    for where, rec in read_records(file):
        if parse is None:
            parse = _detect_parser(where, rec, _SFT_KINDS, (
                "cannot detect the SFT format from keys {keys}; expected "
                "'prompt'/'completion', 'messages', 'post'/'summary' (TL;DR) or 'text'"))
        prompt, completion = parse(where, rec, render)
        cols["prompt"].append(prompt)
        cols["completion"].append(completion)
    if not cols["prompt"]:
        raise DataError("no records", file=file)
    return datasets.Dataset.from_dict(cols, features=string_features(cols))
