"""Tokenizer wrapper: one code path for trained toy tokenizers and real Hugging Face checkpoints.

Every tokenizer is a ``transformers`` fast tokenizer loaded from a local directory with
``AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)``;
:func:`train_tokenizer` saves its result in that same form, so the built-in task and a real
checkpoint go through identical code.

Arrays produced here are ``int32`` numpy arrays ``ids [B, L]`` with an explicit ``mask [B, L]``
(1 = real token). Padding is found *only* through the mask, never by comparing ids with the pad
value. That is why a tokenizer without a pad token (GPT-2, Llama) may use its EOS id as the pad
*value*: padded positions are masked out everywhere, and real EOS tokens stay learnable (their
mask is 1). RLHF_NOTES recommends a dedicated pad token; :func:`train_tokenizer` gives one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from rlhf_jax.data.errors import DataError

__all__ = [
    "Tokenizer",
    "load_tokenizer",
    "train_tokenizer",
    "render_plain_chat",
    "PAD_TOKEN",
    "EOS_TOKEN",
    "UNK_TOKEN",
]

PAD_TOKEN, EOS_TOKEN, UNK_TOKEN = "<pad>", "<eos>", "<unk>"

_PLAIN_ROLES = {"user": "Human", "human": "Human", "assistant": "Assistant", "system": "System"}


def render_plain_chat(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """Anthropic-HH-style rendering used when a tokenizer has no chat template.

    Each message becomes ``"\\n\\n{Role}: {content}"`` with roles user -> Human,
    assistant -> Assistant, system -> System (any other role is capitalised); with
    ``add_generation_prompt`` the text ends with ``"\\n\\nAssistant:"``.
    """
    parts = []
    for m in messages:
        role = str(m["role"])
        parts.append(f"\n\n{_PLAIN_ROLES.get(role, role.capitalize())}: {m['content']}")
    if add_generation_prompt:
        parts.append("\n\nAssistant:")
    return "".join(parts)


def truncate_tokens(tokens: list[int], budget: int, truncation_side: str) -> list[int]:
    """Keep at most ``budget`` tokens: the first ones ('right') or the last ones ('left')."""
    if len(tokens) <= budget:
        return tokens
    return tokens[len(tokens) - budget :] if truncation_side == "left" else tokens[:budget]


def pad_rows(rows: Sequence[Sequence[int]], max_len: int, pad_id: int, side: str):
    """Pack token lists (each ``len <= max_len``) into ``(ids, mask)`` int32 ``[B, max_len]``."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    ids = np.full((len(rows), max_len), pad_id, dtype=np.int32)
    mask = np.zeros((len(rows), max_len), dtype=np.int32)
    for i, row in enumerate(rows):
        n = len(row)
        if n > max_len:
            raise ValueError(f"row {i} has {n} tokens > max_len {max_len}")
        start = 0 if side == "right" else max_len - n
        ids[i, start : start + n] = row
        mask[i, start : start + n] = 1
    return ids, mask


class Tokenizer:
    """A ``transformers`` fast tokenizer plus the fixed-shape encode/decode the library uses.

    ``hf`` is the wrapped ``PreTrainedTokenizerFast`` (``TokenizersBackend`` in transformers 5).
    """

    def __init__(self, hf: Any, path: str | None = None):
        self.hf = hf
        self.path = path
        if hf.eos_token_id is None:
            raise DataError(
                "tokenizer has no EOS token; responses need one to mark their end",
                file=path,
            )

    # ----------------------------------------------------------------- properties
    @property
    def eos_id(self) -> int:
        return int(self.hf.eos_token_id)

    @property
    def pad_id(self) -> int:
        """The pad token's id, or the EOS id when the tokenizer has none (see module doc)."""
        pad = self.hf.pad_token_id
        return self.eos_id if pad is None else int(pad)

    @property
    def bos_id(self) -> int | None:
        bos = self.hf.bos_token_id
        return None if bos is None else int(bos)

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included (``len(hf)``)."""
        return len(self.hf)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.hf, "chat_template", None))

    def __repr__(self) -> str:
        return (
            f"Tokenizer(path={self.path!r}, vocab_size={self.vocab_size}, pad_id={self.pad_id}, "
            f"eos_id={self.eos_id}, bos_id={self.bos_id})"
        )

    # ----------------------------------------------------------------- encode/decode
    def tokenize(self, texts: str | Sequence[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens added, no truncation."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            return []
        out = self.hf(
            texts, add_special_tokens=False, return_attention_mask=False, verbose=False
        )["input_ids"]
        return [list(map(int, row)) for row in out]

    def encode(
        self,
        texts: str | Sequence[str],
        max_len: int,
        *,
        side: str = "right",
        add_eos: bool = False,
        add_bos: bool = False,
        truncation_side: str = "right",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize and pad to ``(ids, mask)``, both int32 ``[B, max_len]``.

        ``side`` is where padding goes ('left' for prompts, so generation appends on the right;
        'right' for responses). Texts too long keep their first tokens
        (``truncation_side='right'``) or their last ones (``'left'``, for prompts). ``add_bos``
        prepends BOS (a no-op if the tokenizer has none) and ``add_eos`` appends EOS; both are
        kept even when the text is truncated (the content is cut to make room).
        """
        if truncation_side not in ("left", "right"):
            raise ValueError(f"truncation_side must be 'left' or 'right', got {truncation_side!r}")
        prefix = [self.bos_id] if add_bos and self.bos_id is not None else []
        suffix = [self.eos_id] if add_eos else []
        budget = max_len - len(prefix) - len(suffix)
        if budget < 0:
            raise ValueError(f"max_len={max_len} leaves no room for the BOS/EOS tokens")
        rows = [
            prefix + truncate_tokens(t, budget, truncation_side) + suffix
            for t in self.tokenize(texts)
        ]
        return pad_rows(rows, max_len, self.pad_id, side)

    def decode(self, ids: Any, mask: Any = None) -> list[str]:
        """Decode each row of ``ids`` ([B, T] or [T]); only positions with ``mask == 1`` are used
        (all positions when ``mask`` is None). Special tokens are skipped."""
        ids = np.asarray(ids)
        if ids.ndim == 1:
            ids = ids[None]
            mask = None if mask is None else np.asarray(mask)[None]
        if mask is not None:
            mask = np.asarray(mask).astype(bool)
            if mask.shape != ids.shape:
                raise ValueError(f"mask shape {mask.shape} != ids shape {ids.shape}")
        rows = [
            [int(t) for t in (row if mask is None else row[mask[i]])] for i, row in enumerate(ids)
        ]
        return list(self.hf.batch_decode(rows, skip_special_tokens=True))

    def render_chat(self, messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
        """Render a conversation to text: the tokenizer's chat template when it has one,
        otherwise :func:`render_plain_chat` (``"\\n\\nHuman: ...\\n\\nAssistant: ..."``)."""
        if self.has_chat_template:
            return self.hf.apply_chat_template(
                [dict(m) for m in messages],
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        return render_plain_chat(messages, add_generation_prompt)


TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer.model", "vocab.txt", "spiece.model")
"""Files one of which a tokenizer directory must hold (a fast tokenizer or what one is built from)."""


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer directory (``tokenizer.json`` etc.) offline through ``AutoTokenizer``."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer directory not found: {path}")
    if not os.path.isdir(path):
        raise DataError("expected a tokenizer directory, got a file", file=path)
    if not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise DataError(f"no tokenizer files in this directory (need one of "
                        f"{', '.join(TOKENIZER_FILES)})", file=path)
    try:
        hf = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 -- `tokenizers` raises a bare Exception for a bad tokenizer.json
        raise DataError(
            f"could not load a tokenizer from this directory (need tokenizer.json or the "
            f"tokenizer files of a Hugging Face checkpoint): {e}",
            file=path,
        ) from e
    if not getattr(hf, "is_fast", False):
        raise DataError(f"expected a fast tokenizer, got {type(hf).__name__}", file=path)
    if len(hf) < 2:
        raise DataError(f"the tokenizer has {len(hf)} token(s); a language model needs more", file=path)
    return Tokenizer(hf, path)


def train_tokenizer(
    texts: Iterable[str],
    out_dir: str | os.PathLike,
    vocab_size: int = 512,
    *,
    kind: str = "wordlevel",
    min_frequency: int = 1,
) -> Tokenizer:
    """Train a small tokenizer on ``texts``, save it to ``out_dir`` and load it back.

    Special tokens: ``<pad>`` = 0, ``<eos>`` = 1, ``<unk>`` = 2. Kinds:

    - ``'wordlevel'``: lowercased words and punctuation runs (``Whitespace`` pre-tokenizer);
      unknown words map to ``<unk>``; decoding joins words with spaces and re-attaches
      punctuation (``"hello world, how are you?"``). Newlines are not kept.
    - ``'bpe'``: GPT-2-style byte-level BPE (needs ``vocab_size >= 259``); never produces
      ``<unk>`` and decodes back to the exact text.

    Training is deterministic for the same texts. The result is saved with
    ``PreTrainedTokenizerFast.save_pretrained`` so :func:`load_tokenizer` reads it like any
    Hugging Face checkpoint.
    """
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD_TOKEN, EOS_TOKEN, UNK_TOKEN]
    if kind == "wordlevel":
        raw = RawTokenizer(models.WordLevel(unk_token=UNK_TOKEN))
        raw.normalizer = normalizers.Lowercase()
        raw.pre_tokenizer = pre_tokenizers.Whitespace()
        raw.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        trainer = trainers.WordLevelTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            show_progress=False,
        )
    elif kind == "bpe":
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        if vocab_size < len(alphabet) + len(specials):
            raise ValueError(
                f"byte-level BPE needs vocab_size >= {len(alphabet) + len(specials)}, "
                f"got {vocab_size}"
            )
        raw = RawTokenizer(models.BPE(unk_token=UNK_TOKEN))
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            initial_alphabet=alphabet,
            show_progress=False,
        )
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose 'wordlevel' or 'bpe'")

    raw.train_from_iterator(list(texts), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=raw, pad_token=PAD_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN
    )
    out_dir = os.fspath(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        hf.save_pretrained(out_dir)  # into the directory the caller keeps
    else:  # written beside it and renamed, so an interrupted save leaves no half a tokenizer
        import shutil
        import tempfile

        parent = os.path.dirname(os.path.abspath(out_dir))
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tokenizer_", dir=parent)
        try:
            hf.save_pretrained(tmp)
            if os.path.isdir(out_dir):
                os.rmdir(out_dir)
            os.replace(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return load_tokenizer(out_dir)
