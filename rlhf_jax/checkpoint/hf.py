"""Hugging Face checkpoint import/export: ``config.json`` + safetensors for GPT-2, Llama and Qwen2.

``load_pretrained(path)`` reads a directory written by ``transformers``' ``save_pretrained`` (a single
``model.safetensors`` or a sharded ``model.safetensors.index.json``) into our Linen parameter tree
(see ``rlhf_jax/models/transformer.py``); ``save_pretrained(path, cfg, params)`` writes the inverse,
which ``transformers.AutoModelForCausalLM.from_pretrained`` loads. Only safetensors are read: pickle
files (``pytorch_model.bin``) can run arbitrary code and are refused without being opened; no remote
code is ever run.

Layout mapping (HF tensor -> ours; ``N`` query heads, ``K`` kv heads, ``H`` head dim)::

    GPT-2 (Conv1D weights are stored [in, out]; keys may lack the ``transformer.`` prefix)
      wte.weight [V,D] -> embedding            wpe.weight [L,D] -> pos_embedding
      h.i.ln_1 / ln_2 / ln_f {weight,bias} -> layer_i/attn_norm, layer_i/mlp_norm, final_norm
      h.i.attn.c_attn.weight [D,3D] -> split into q|k|v, each [D,N*H], transposed -> qkv_kernel
      h.i.attn.c_proj.weight [N*H,D] -> o_kernel = W.T.reshape(D,N,H)
      h.i.mlp.c_fc.weight [D,F] -> up_kernel = W.T   h.i.mlp.c_proj.weight [F,D] -> down_kernel = W.T
    Llama / Qwen2 (torch Linear weights are stored [out, in], as ours are: no transposes)
      model.embed_tokens.weight -> embedding   model.norm.weight -> final_norm/scale
      self_attn.{q,k,v}_proj.weight [N*H|K*H, D] -> qkv_kernel   (GQA: K <= N kv heads)
      self_attn.o_proj.weight [D,N*H] -> o_kernel = W.reshape(D,N,H)
      mlp.{gate,up,down}_proj.weight -> {gate,up,down}_kernel
      input_layernorm / post_attention_layernorm -> attn_norm / mlp_norm
    lm_head.weight [V,D] -> lm_head (untied only; a copy of the embedding is ignored when tied)

``qkv_kernel [K, G+2, H, D]`` groups each KV head's G = N/K query heads with its key and value
(``_fuse_qkv`` / ``_split_qkv``); the q/k/v biases are fused the same way.

RoPE checkpoints in HF format already use the "rotate_half" layout our ``rope`` implements, so no
permutation of q/k rows is needed.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from rlhf_jax.models.config import ARCHITECTURES, TransformerConfig, from_hf_config, to_hf_config
from rlhf_jax.models.layout import to_layout, unstack_layers

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_PICKLE_NAMES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.ckpt", "tf_model.h5",
                 "flax_model.msgpack")
_FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
_IGNORED = {  # non-parameter buffers some exporters write
    "gpt2": re.compile(r"(^|\.)attn\.(bias|masked_bias)$"),
    "llama": re.compile(r"(^|\.)rotary_emb\.inv_freq$"),
    "qwen2": re.compile(r"(^|\.)rotary_emb\.inv_freq$"),
}
_MAX_LISTED = 5


class HFCheckpointError(ValueError):
    """A Hugging Face checkpoint directory that cannot be loaded (or params that cannot be saved)."""


# ----------------------------------------------------------------------------- expected HF tensors

def hf_tensor_shapes(cfg: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """The HF tensor names (canonical spelling) and shapes a checkpoint of ``cfg`` must hold."""
    D, F, V, N, K, H = cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    s: dict[str, tuple[int, ...]] = {}
    if cfg.family == "gpt2":
        A = N * H
        s["transformer.wte.weight"] = (V, D)
        s["transformer.wpe.weight"] = (cfg.max_len, D)
        for i in range(cfg.n_layers):
            p = f"transformer.h.{i}."
            for ln in ("ln_1", "ln_2"):
                s[p + ln + ".weight"] = s[p + ln + ".bias"] = (D,)
            s[p + "attn.c_attn.weight"], s[p + "attn.c_attn.bias"] = (D, 3 * A), (3 * A,)
            s[p + "attn.c_proj.weight"], s[p + "attn.c_proj.bias"] = (A, D), (D,)
            s[p + "mlp.c_fc.weight"], s[p + "mlp.c_fc.bias"] = (D, F), (F,)
            s[p + "mlp.c_proj.weight"], s[p + "mlp.c_proj.bias"] = (F, D), (D,)
        s["transformer.ln_f.weight"] = s["transformer.ln_f.bias"] = (D,)
    else:
        s["model.embed_tokens.weight"] = (V, D)
        for i in range(cfg.n_layers):
            p = f"model.layers.{i}."
            s[p + "input_layernorm.weight"] = s[p + "post_attention_layernorm.weight"] = (D,)
            for name, heads in (("q", N), ("k", K), ("v", K)):
                s[p + f"self_attn.{name}_proj.weight"] = (heads * H, D)
                if cfg.qkv_bias:
                    s[p + f"self_attn.{name}_proj.bias"] = (heads * H,)
            s[p + "self_attn.o_proj.weight"] = (D, N * H)
            if cfg.out_bias:
                s[p + "self_attn.o_proj.bias"] = (D,)
            for name, shape in (("gate", (F, D)), ("up", (F, D)), ("down", (D, F))):
                s[p + f"mlp.{name}_proj.weight"] = shape
                if cfg.mlp_bias:
                    s[p + f"mlp.{name}_proj.bias"] = (shape[0],)
        s["model.norm.weight"] = (D,)
    if not cfg.tie_embeddings:
        s["lm_head.weight"] = (V, D)
    return s


def _canonical_key(family: str, key: str) -> str:
    if family == "gpt2" and not key.startswith(("transformer.", "lm_head.")):
        return "transformer." + key  # GPT2Model checkpoints (and some exports) have no prefix
    return key


# ----------------------------------------------------------------------------- layout conversion

def _fuse_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, cfg: TransformerConfig) -> np.ndarray:
    """q ``[N*H, ...]``, k and v ``[K*H, ...]`` (output-major) -> ``[K, G+2, H, ...]``."""
    K, H = cfg.n_kv_heads, cfg.head_dim
    G, rest = cfg.n_heads // K, q.shape[1:]
    return np.concatenate([q.reshape(K, G, H, *rest), k.reshape(K, 1, H, *rest),
                           v.reshape(K, 1, H, *rest)], axis=1)


def _split_qkv(w: np.ndarray, cfg: TransformerConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse of ``_fuse_qkv``."""
    N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    G, rest = N // K, w.shape[3:]
    return (w[:, :G].reshape(N * H, *rest), w[:, G].reshape(K * H, *rest),
            w[:, G + 1].reshape(K * H, *rest))


def _from_hf(cfg: TransformerConfig, t: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """HF tensors (canonical names) -> our ``params`` subtree (without the ``'params'`` level)."""
    D, N, H = cfg.d_model, cfg.n_heads, cfg.head_dim
    out: dict[str, Any] = {}
    if cfg.family == "gpt2":
        pre = "transformer."
        out["embedding"] = t[pre + "wte.weight"]
        out["pos_embedding"] = t[pre + "wpe.weight"]
        for i in range(cfg.n_layers):
            p = f"{pre}h.{i}."
            q, k, v = np.split(t[p + "attn.c_attn.weight"], 3, axis=1)  # Conv1D: [in, out]
            qb, kb, vb = np.split(t[p + "attn.c_attn.bias"], 3)
            out[f"layer_{i}"] = {
                "attn_norm": {"scale": t[p + "ln_1.weight"], "bias": t[p + "ln_1.bias"]},
                "attn": {
                    "qkv_kernel": _fuse_qkv(q.T, k.T, v.T, cfg), "qkv_bias": _fuse_qkv(qb, kb, vb, cfg),
                    "o_kernel": t[p + "attn.c_proj.weight"].T.reshape(D, N, H),
                    "o_bias": t[p + "attn.c_proj.bias"],
                },
                "mlp_norm": {"scale": t[p + "ln_2.weight"], "bias": t[p + "ln_2.bias"]},
                "mlp": {
                    "up_kernel": t[p + "mlp.c_fc.weight"].T, "up_bias": t[p + "mlp.c_fc.bias"],
                    "down_kernel": t[p + "mlp.c_proj.weight"].T, "down_bias": t[p + "mlp.c_proj.bias"],
                },
            }
        out["final_norm"] = {"scale": t[pre + "ln_f.weight"], "bias": t[pre + "ln_f.bias"]}
    else:
        out["embedding"] = t["model.embed_tokens.weight"]
        for i in range(cfg.n_layers):
            p = f"model.layers.{i}."
            attn: dict[str, np.ndarray] = {"qkv_kernel": _fuse_qkv(
                *(t[p + f"self_attn.{n}_proj.weight"] for n in "qkv"), cfg)}
            if cfg.qkv_bias:
                attn["qkv_bias"] = _fuse_qkv(*(t[p + f"self_attn.{n}_proj.bias"] for n in "qkv"), cfg)
            attn["o_kernel"] = t[p + "self_attn.o_proj.weight"].reshape(D, N, H)
            if cfg.out_bias:
                attn["o_bias"] = t[p + "self_attn.o_proj.bias"]
            mlp: dict[str, np.ndarray] = {}
            for name in ("gate", "up", "down"):
                mlp[f"{name}_kernel"] = t[p + f"mlp.{name}_proj.weight"]
                if cfg.mlp_bias:
                    mlp[f"{name}_bias"] = t[p + f"mlp.{name}_proj.bias"]
            out[f"layer_{i}"] = {
                "attn_norm": {"scale": t[p + "input_layernorm.weight"]}, "attn": attn,
                "mlp_norm": {"scale": t[p + "post_attention_layernorm.weight"]}, "mlp": mlp,
            }
        out["final_norm"] = {"scale": t["model.norm.weight"]}
    if not cfg.tie_embeddings:
        out["lm_head"] = t["lm_head.weight"]
    return out


def _to_hf(cfg: TransformerConfig, p: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our ``params`` subtree -> HF tensors in ``cfg.family``'s canonical naming."""
    D, N, H = cfg.d_model, cfg.n_heads, cfg.head_dim
    t: dict[str, np.ndarray] = {}
    if cfg.family == "gpt2":
        pre = "transformer."
        t[pre + "wte.weight"] = p["embedding"]
        t[pre + "wpe.weight"] = p["pos_embedding"]
        for i in range(cfg.n_layers):
            lp, h = p[f"layer_{i}"], f"{pre}h.{i}."
            a, m = lp["attn"], lp["mlp"]
            t[h + "ln_1.weight"], t[h + "ln_1.bias"] = lp["attn_norm"]["scale"], lp["attn_norm"]["bias"]
            t[h + "attn.c_attn.weight"] = np.concatenate([w.T for w in _split_qkv(a["qkv_kernel"], cfg)], axis=1)
            t[h + "attn.c_attn.bias"] = np.concatenate(_split_qkv(a["qkv_bias"], cfg))
            t[h + "attn.c_proj.weight"] = a["o_kernel"].reshape(D, N * H).T
            t[h + "attn.c_proj.bias"] = a["o_bias"]
            t[h + "ln_2.weight"], t[h + "ln_2.bias"] = lp["mlp_norm"]["scale"], lp["mlp_norm"]["bias"]
            t[h + "mlp.c_fc.weight"], t[h + "mlp.c_fc.bias"] = m["up_kernel"].T, m["up_bias"]
            t[h + "mlp.c_proj.weight"], t[h + "mlp.c_proj.bias"] = m["down_kernel"].T, m["down_bias"]
        t[pre + "ln_f.weight"], t[pre + "ln_f.bias"] = p["final_norm"]["scale"], p["final_norm"]["bias"]
    else:
        t["model.embed_tokens.weight"] = p["embedding"]
        for i in range(cfg.n_layers):
            lp, h = p[f"layer_{i}"], f"model.layers.{i}."
            a, m = lp["attn"], lp["mlp"]
            t[h + "input_layernorm.weight"] = lp["attn_norm"]["scale"]
            t[h + "post_attention_layernorm.weight"] = lp["mlp_norm"]["scale"]
            for name, w in zip("qkv", _split_qkv(a["qkv_kernel"], cfg)):
                t[h + f"self_attn.{name}_proj.weight"] = w
            if cfg.qkv_bias:
                for name, b in zip("qkv", _split_qkv(a["qkv_bias"], cfg)):
                    t[h + f"self_attn.{name}_proj.bias"] = b
            t[h + "self_attn.o_proj.weight"] = a["o_kernel"].reshape(D, N * H)
            if cfg.out_bias:
                t[h + "self_attn.o_proj.bias"] = a["o_bias"]
            for name in ("gate", "up", "down"):
                t[h + f"mlp.{name}_proj.weight"] = m[f"{name}_kernel"]
                if cfg.mlp_bias:
                    t[h + f"mlp.{name}_proj.bias"] = m[f"{name}_bias"]
        t["model.norm.weight"] = p["final_norm"]["scale"]
    if not cfg.tie_embeddings:
        t["lm_head.weight"] = p["lm_head"]
    return t


# ----------------------------------------------------------------------------- loading

def _listing(items) -> str:
    items = list(items)
    more = f" (and {len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(repr(x) for x in items[:_MAX_LISTED]) + more


_POSITIVE_INTS = frozenset((
    "vocab_size", "n_embd", "n_head", "n_layer", "n_positions", "n_inner", "hidden_size",
    "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "intermediate_size",
    "max_position_embeddings", "head_dim"))
_POSITIVE_FLOATS = frozenset(("layer_norm_epsilon", "rms_norm_eps", "rope_theta"))


def read_config(root: str | os.PathLike, dtype: str = "float32") -> TransformerConfig:
    """The ``TransformerConfig`` of a Hugging Face directory's ``config.json``, every field checked
    (no weights read): :class:`HFCheckpointError` names the file and field at fault."""
    return _read_config(Path(root), dtype)


def _read_config(root: Path, dtype: str) -> TransformerConfig:
    cfg_path = root / CONFIG_NAME
    if not cfg_path.is_file():
        raise HFCheckpointError(f"{cfg_path}: missing {CONFIG_NAME} (not a Hugging Face model directory?)")
    try:
        hf = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise HFCheckpointError(f"{cfg_path}: cannot read {CONFIG_NAME}: {e}") from e
    if not isinstance(hf, dict):
        raise HFCheckpointError(f"{cfg_path}: expected a JSON object, got {type(hf).__name__}")
    for key, value in hf.items():
        if value is None:
            continue
        if key in _POSITIVE_INTS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise HFCheckpointError(f"{cfg_path}: field {key!r} must be a positive integer, got {value!r}")
        if key in _POSITIVE_FLOATS and (isinstance(value, bool) or not isinstance(value, (int, float))
                                        or not math.isfinite(value) or value <= 0):
            raise HFCheckpointError(f"{cfg_path}: field {key!r} must be a positive number, got {value!r}")
    try:
        return from_hf_config(hf, dtype=dtype)
    except KeyError as e:
        raise HFCheckpointError(f"{cfg_path}: missing field {e.args[0]!r} for model_type="
                                f"{hf.get('model_type')!r}") from e
    except (TypeError, ValueError) as e:
        raise HFCheckpointError(f"{cfg_path}: {e}") from e


def _weight_files(root: Path) -> tuple[list[Path], Path, dict[str, str] | None]:
    """(files to read, the path to name in key errors, weight_map of a sharded index or None)."""
    single, index = root / WEIGHTS_NAME, root / INDEX_NAME
    if single.is_file():
        return [single], single, None
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            if not isinstance(weight_map, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()):
                raise ValueError("weight_map must map tensor names to file names")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise HFCheckpointError(f"{index}: malformed sharded-checkpoint index: {e!r}") from e
        files = []
        for name in sorted(set(weight_map.values())):
            if Path(name).name != name or name in (".", ".."):
                raise HFCheckpointError(f"{index}: shard file name {name!r} must be a plain file name")
            if not (root / name).is_file():
                raise HFCheckpointError(f"{root / name}: shard listed in {index.name} is missing")
            files.append(root / name)
        return files, index, weight_map
    found = [n for n in _PICKLE_NAMES if (root / n).exists()]
    if found:
        raise HFCheckpointError(
            f"{root}: found {', '.join(found)} but no {WEIGHTS_NAME} or {INDEX_NAME}; only safetensors "
            "checkpoints are supported (pickle files can run arbitrary code and are not read). Convert "
            "with transformers: model.save_pretrained(dir, safe_serialization=True).")
    raise HFCheckpointError(f"{single}: missing weights (neither {WEIGHTS_NAME} nor {INDEX_NAME} in {root})")


def _open(path: Path):
    try:
        return safe_open(str(path), framework="numpy")
    except (SafetensorError, OSError, ValueError) as e:
        raise HFCheckpointError(f"{path}: not a readable safetensors file ({e})") from e


def load_pretrained(path: str | os.PathLike, dtype: str = "float32") -> tuple[TransformerConfig, dict]:
    """Load a Hugging Face GPT2LMHeadModel / LlamaForCausalLM / Qwen2ForCausalLM directory.

    Args:
      path: directory with ``config.json`` and ``model.safetensors`` (or a sharded
        ``model.safetensors.index.json`` and its shard files).
      dtype: parameter (and compute) dtype of the returned config and arrays.

    Returns:
      ``(cfg, {'params': ...})`` with host numpy arrays in our layout (the layers stacked when
      ``cfg`` scans over them: ``models.layout``; a caller that changes ``scan_layers`` converts
      with ``to_layout``). Everything (files, keys,
      shapes, dtypes) is validated before any tensor data is read; every failure raises
      ``HFCheckpointError`` naming the offending file (and key).
    """
    root = Path(path)
    if not root.is_dir():
        raise HFCheckpointError(f"{root}: no such checkpoint directory")
    dtype = np.dtype(jax.numpy.dtype(dtype)).name
    cfg = _read_config(root, dtype)
    files, keys_source, weight_map = _weight_files(root)
    arch = ARCHITECTURES[cfg.family]

    # Headers only: which tensor lives where, with which shape and dtype.
    where: dict[str, tuple[Path, str]] = {}  # canonical key -> (file, key as stored)
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    ignored = _IGNORED[cfg.family]
    for f in files:
        try:
            with _open(f) as st:
                for key in st.keys():
                    if weight_map is not None and weight_map.get(key) != f.name:
                        owner = weight_map.get(key)
                        raise HFCheckpointError(
                            f"{f}: holds {key!r}, which {INDEX_NAME} "
                            + (f"assigns to {owner!r}" if owner else "does not list"))
                    if ignored.search(key):
                        continue
                    canon = _canonical_key(cfg.family, key)
                    if canon in where:
                        raise HFCheckpointError(f"{f}: duplicate tensor {key!r} (also stored as "
                                                f"{where[canon][1]!r} in {where[canon][0]})")
                    sl = st.get_slice(key)
                    where[canon] = (f, key)
                    shapes[canon] = (tuple(sl.get_shape()), sl.get_dtype())
        except SafetensorError as e:
            raise HFCheckpointError(f"{f}: not a readable safetensors file ({e})") from e
    if weight_map is not None:
        absent = [k for k, v in weight_map.items() if not ignored.search(k)
                  and (where.get(_canonical_key(cfg.family, k)) or (None, None))[1] != k]
        if absent:
            raise HFCheckpointError(f"{root / weight_map[absent[0]]}: tensors listed in {INDEX_NAME} are "
                                    f"not in their shard: {_listing(absent)}")

    expected = hf_tensor_shapes(cfg)
    if cfg.tie_embeddings and "lm_head.weight" in where:
        expected["lm_head.weight"] = (cfg.vocab_size, cfg.d_model)  # a tied copy: checked, then dropped
    missing = [k for k in expected if k not in where]
    if missing:
        raise HFCheckpointError(f"{keys_source}: missing {len(missing)} tensor(s) that {arch} with this "
                                f"{CONFIG_NAME} needs: {_listing(missing)}")
    extra = [where[k][1] for k in where if k not in expected]
    if extra:
        raise HFCheckpointError(f"{keys_source}: unexpected tensor(s) for {arch}: {_listing(extra)}")
    for k, want in expected.items():
        got, st_dtype = shapes[k]
        f, key = where[k]
        if got != want:
            raise HFCheckpointError(f"{f}: tensor {key!r} has shape {got}, but {CONFIG_NAME} implies "
                                    f"{want}")
        if st_dtype not in _FLOAT_DTYPES:
            raise HFCheckpointError(f"{f}: tensor {key!r} has non-float dtype {st_dtype}")

    tensors: dict[str, np.ndarray] = {}
    by_file: dict[Path, list[str]] = {}
    for k in expected:
        if cfg.tie_embeddings and k == "lm_head.weight":
            continue
        by_file.setdefault(where[k][0], []).append(k)
    for f, ks in by_file.items():
        try:
            with _open(f) as st:
                for k in ks:
                    tensors[k] = st.get_tensor(where[k][1])
        except (SafetensorError, OSError, ValueError, TypeError) as e:
            raise HFCheckpointError(f"{f}: failed to read tensor data ({e})") from e
    params = _from_hf(cfg, tensors)
    params = jax.tree.map(lambda a: np.ascontiguousarray(a, dtype=np.dtype(jax.numpy.dtype(dtype))),
                          params)
    return cfg, to_layout(cfg, {"params": params})


# ----------------------------------------------------------------------------- saving

def _check_exportable(cfg: TransformerConfig) -> None:
    arch = ARCHITECTURES[cfg.family]
    if cfg.family == "gpt2":
        ok = (cfg.n_kv_heads == cfg.n_heads and cfg.n_heads * cfg.head_dim == cfg.d_model
              and cfg.qkv_bias and cfg.out_bias and cfg.mlp_bias and cfg.positions == "learned"
              and cfg.activation == "gelu_tanh" and cfg.norm == "layernorm")
        why = ("needs MHA with n_heads*head_dim == d_model, all biases, learned positions, gelu_tanh "
               "and layernorm")
    else:
        ok = cfg.positions == "rope" and cfg.activation == "silu_glu" and cfg.norm == "rmsnorm"
        why = "needs rope, silu_glu and rmsnorm"
        if cfg.family == "llama":
            ok = ok and cfg.qkv_bias == cfg.out_bias  # one `attention_bias` flag for q, k, v and o
            why += ", and qkv_bias == out_bias"
        else:
            ok = ok and cfg.qkv_bias and not cfg.out_bias and not cfg.mlp_bias
            why += ", qkv_bias and no out/mlp bias"
    if not ok:
        raise HFCheckpointError(f"cannot export this config as {arch}: {arch} {why}; got {cfg}")


def save_pretrained(path: str | os.PathLike, cfg: TransformerConfig, params: Mapping[str, Any],
                    **config_extra) -> Path:
    """Write ``config.json`` and ``model.safetensors`` that ``transformers`` loads as ``cfg.family``.

    ``params`` is ``{'params': ...}`` (or the inner dict) of numpy/jax arrays, in either layout of the
    layers (``models.layout``); tensors keep their
    dtype. ``config_extra`` entries are added to ``config.json`` (e.g. ``eos_token_id``). Returns
    the directory. The weights are written to a temporary file first and renamed into place.
    """
    _check_exportable(cfg)
    inner = params.get("params", params) if isinstance(params, Mapping) else params
    host = jax.tree.map(np.asarray, jax.device_get(unstack_layers(inner)))
    try:
        tensors = _to_hf(cfg, host)
    except (KeyError, TypeError, ValueError) as e:
        raise HFCheckpointError(f"params do not match the config ({cfg.family}): {e!r}") from e
    for key, want in hf_tensor_shapes(cfg).items():
        if tuple(tensors[key].shape) != want:
            raise HFCheckpointError(f"params do not match the config: {key!r} would have shape "
                                    f"{tuple(tensors[key].shape)}, {cfg.family} config implies {want}")
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    (root / CONFIG_NAME).write_text(json.dumps(to_hf_config(cfg, **config_extra), indent=2,
                                               sort_keys=True) + "\n", encoding="utf-8")
    tmp = root / (WEIGHTS_NAME + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, root / WEIGHTS_NAME)
    return root
