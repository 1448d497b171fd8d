"""Hugging Face import/export: logits parity with transformers (PyTorch CPU, eager attention, fp32)
on tiny random GPT-2 / Llama (GQA, tied and untied) / Qwen2 (GQA + qkv bias) checkpoints, sharded
and prefix-less checkpoints, round trips in both directions, and every refusal path."""

from __future__ import annotations

import builtins
import io
import json
import pickle
import shutil
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import save_file
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parent))  # the helper module, under any pytest import mode
from hf_fixtures import (ARCHS, batch, build_hf_model, edit_config, read_tensors,  # noqa: E402
                         rewrite_tensors, torch_logits)

from rlhf_jax.hf import HFCheckpointError, load_pretrained, save_pretrained  # noqa: E402
from rlhf_jax.models import get_preset, init_params, logits  # noqa: E402

ATOL = 1e-4


class _Built:
    """Each architecture is built, saved and loaded once per module, on first use."""

    def __init__(self, root):
        self.root, self.cache = root, {}

    def __call__(self, name):
        if name not in self.cache:
            model = build_hf_model(name)
            path = self.root / name
            model.save_pretrained(path, safe_serialization=True)
            cfg, params = load_pretrained(path)
            self.cache[name] = (model, path, cfg, params)
        return self.cache[name]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return _Built(tmp_path_factory.mktemp("hf"))


def _assert_params_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape, path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def _assert_logits_close(cfg, params, ref, ids, mask):
    ours = np.asarray(logits(cfg, params, ids, mask))
    valid = mask.astype(bool)
    assert np.abs(ours[valid] - ref[valid]).max() < ATOL


def _copy(built, name, tmp_path):
    dst = tmp_path / name
    shutil.copytree(built(name)[1], dst)
    return dst


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left_padded"])
@pytest.mark.parametrize("name", list(ARCHS))
def test_logits_match_transformers(built, name, padded):
    model, _, cfg, params = built(name)
    ids, mask = batch(seed=1, padded=padded)
    _assert_logits_close(cfg, params, torch_logits(model, ids, mask), ids, mask)


@pytest.mark.parametrize("name", list(ARCHS))
def test_loaded_tree_is_exactly_the_model_tree(built, name):
    _, _, cfg, params = built(name)
    want = jax.eval_shape(lambda r: init_params(cfg, r), jax.random.PRNGKey(0))
    assert jax.tree.structure(params) == jax.tree.structure(want)
    for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(want)):
        assert (x.shape, x.dtype) == (y.shape, y.dtype)
    hf = ARCHS[name][2]
    assert cfg.n_kv_heads == hf.get("num_key_value_heads", hf.get("n_head"))
    assert cfg.tie_embeddings == hf.get("tie_word_embeddings", True)
    assert ("lm_head" in params["params"]) == (not cfg.tie_embeddings)


def test_a_deep_model_loads_stacked_and_converts(built, tmp_path):
    """4 layers scan by default: the loaded layers are stacked (models.layout); per layer (for
    scan_layers=False) they give the same logits; either layout exports the same file."""
    from rlhf_jax.models import to_layout

    model, _, cfg, params = built("llama_deep")
    assert cfg.scans_layers and params["params"]["layers"]["attn"]["qkv_kernel"].shape[0] == 4
    flat_cfg = cfg.replace(scan_layers=False)
    flat = to_layout(flat_cfg, params)
    assert "layers" not in flat["params"] and "layer_3" in flat["params"]
    ids, mask = batch(seed=4, padded=True)
    _assert_logits_close(flat_cfg, flat, torch_logits(model, ids, mask), ids, mask)
    save_pretrained(tmp_path / "stacked", cfg, params)
    save_pretrained(tmp_path / "flat", flat_cfg, flat)
    assert (tmp_path / "stacked" / "model.safetensors").read_bytes() == \
        (tmp_path / "flat" / "model.safetensors").read_bytes()


def test_sharded_checkpoint_loads_identically(built, tmp_path):
    model, _, cfg, params = built("llama_untied")
    model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(shards) > 1
    assert not (tmp_path / "model.safetensors").exists()
    cfg2, params2 = load_pretrained(tmp_path)
    assert cfg2 == cfg
    _assert_params_equal(params2, params)

    (tmp_path / shards[1]).unlink()
    with pytest.raises(HFCheckpointError, match=shards[1]):
        load_pretrained(tmp_path)


def test_gpt2_without_prefix_and_with_buffers(built, tmp_path):
    _, _, cfg, params = built("gpt2")
    path = _copy(built, "gpt2", tmp_path)

    def strip(t):
        out = {k.removeprefix("transformer."): v for k, v in t.items()}
        out["lm_head.weight"] = t["transformer.wte.weight"]  # tied copy, as older exports write
        out["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))  # buffers, not params
        out["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
        return out

    rewrite_tensors(path / "model.safetensors", strip)
    assert not any(k.startswith("transformer.") for k in read_tensors(path / "model.safetensors")[0])
    cfg2, params2 = load_pretrained(path)
    assert cfg2 == cfg
    _assert_params_equal(params2, params)


def test_llama_rotary_buffers_are_ignored(built, tmp_path):
    _, _, _, params = built("llama_tied")
    path = _copy(built, "llama_tied", tmp_path)
    rewrite_tensors(path / "model.safetensors", lambda t: {
        **t, "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)})
    _assert_params_equal(load_pretrained(path)[1], params)


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", list(ARCHS))
def test_export_loads_in_transformers_and_round_trips(built, name, tmp_path):
    model, _, cfg, params = built(name)
    save_pretrained(tmp_path, cfg, params)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    assert type(hf) is type(model)
    ids, mask = batch(seed=2, padded=True)
    ref, got = torch_logits(model, ids, mask), torch_logits(hf, ids, mask)
    assert np.abs(ref - got)[mask.astype(bool)].max() < ATOL
    cfg2, params2 = load_pretrained(tmp_path)
    assert cfg2 == cfg
    _assert_params_equal(params2, params)


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama", "tiny-qwen2"])
def test_own_preset_round_trip(preset, tmp_path):
    cfg = get_preset(preset)
    # The model's own tree (shapes from init_params), every leaf random (norm scales and biases
    # too, which init_params sets to constants) so that nothing maps correctly by luck.
    shapes = jax.eval_shape(lambda r: init_params(cfg, r), jax.random.PRNGKey(0))
    rng = np.random.default_rng(3)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.1, s.shape).astype(s.dtype), shapes)
    save_pretrained(tmp_path / "a", cfg, params)
    cfg2, params2 = load_pretrained(tmp_path / "a")
    assert cfg2 == cfg
    _assert_params_equal(params2, params)
    save_pretrained(tmp_path / "b", cfg2, params2)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == \
        (tmp_path / "b" / "model.safetensors").read_bytes()

    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "a", attn_implementation="eager").eval()
    assert hf.config.model_type == cfg.family
    ids, mask = batch(seed=5, padded=True)
    _assert_logits_close(cfg, params, torch_logits(hf, ids, mask), ids, mask)


def test_bfloat16(built, tmp_path):
    _, path, cfg, params = built("qwen2")
    cfg16, p16 = load_pretrained(path, dtype="bfloat16")
    assert cfg16 == cfg.replace(param_dtype="bfloat16", dtype="bfloat16")
    want = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16), params)
    _assert_params_equal(p16, want)
    # bf16 tensors on disk: written as BF16, read back bit for bit, upcast exactly to float32.
    save_pretrained(tmp_path, cfg16, p16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    assert read_tensors(tmp_path / "model.safetensors")[0]["model.norm.weight"].dtype == \
        jax.numpy.bfloat16
    _assert_params_equal(load_pretrained(tmp_path, dtype="bfloat16")[1], p16)
    _assert_params_equal(load_pretrained(tmp_path)[1],
                         jax.tree.map(lambda x: np.asarray(x, np.float32), p16))


# ----------------------------------------------------------------------------- refusals


def test_missing_directory_config_and_weights(built, tmp_path):
    with pytest.raises(HFCheckpointError, match="nowhere"):
        load_pretrained(tmp_path / "nowhere")
    path = _copy(built, "llama_tied", tmp_path)
    (path / "model.safetensors").unlink()
    with pytest.raises(HFCheckpointError, match="model.safetensors"):
        load_pretrained(path)
    (path / "config.json").unlink()
    with pytest.raises(HFCheckpointError, match="config.json"):
        load_pretrained(path)


def test_bad_config(built, tmp_path):
    path = _copy(built, "llama_tied", tmp_path)
    edit_config(path, model_type="bert", architectures=["BertForMaskedLM"])
    with pytest.raises(HFCheckpointError, match=r"config\.json.*'bert'.*BertForMaskedLM"):
        load_pretrained(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(HFCheckpointError, match=r"config\.json"):
        load_pretrained(path)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 99}))
    with pytest.raises(HFCheckpointError, match=r"config\.json.*hidden_size"):
        load_pretrained(path)


class _Detonator:
    """Unpickling this creates ``marker``: proof that a loader ran code from a pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os
        return os.mkdir, (self.marker,)


def test_pickle_only_checkpoint_is_refused_unread(built, tmp_path, monkeypatch):
    path = _copy(built, "gpt2", tmp_path)
    (path / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    (path / "pytorch_model.bin").write_bytes(pickle.dumps(_Detonator(marker)))

    opened = []
    real_open = io.open

    def spy_open(file, *a, **kw):
        opened.append(str(file))
        return real_open(file, *a, **kw)

    def forbidden(*a, **kw):
        raise AssertionError("the loader must not unpickle")

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_open)
    for mod, name in ((pickle, "load"), (pickle, "loads"), (torch, "load")):
        monkeypatch.setattr(mod, name, forbidden)
    with pytest.raises(HFCheckpointError, match=r"pytorch_model\.bin.*only safetensors"):
        load_pretrained(path)
    assert not marker.exists()
    assert not [f for f in opened if f.endswith(".bin")]


@pytest.mark.parametrize("corruption", ["truncated", "garbage", "empty"])
def test_corrupt_safetensors_names_the_file(built, tmp_path, corruption):
    path = _copy(built, "qwen2", tmp_path)
    f = path / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x13\x37 not a tensor file " * 50,
                   "empty": b""}[corruption])
    with pytest.raises(HFCheckpointError, match=r"model\.safetensors"):
        load_pretrained(path)


def test_missing_and_unexpected_keys_are_named(built, tmp_path):
    path = _copy(built, "llama_untied", tmp_path)
    f = path / "model.safetensors"
    original, _ = read_tensors(f)
    rewrite_tensors(f, lambda t: {k: v for k, v in t.items()
                                  if k not in ("model.layers.1.mlp.up_proj.weight", "lm_head.weight")})
    with pytest.raises(HFCheckpointError, match=r"model\.safetensors.*missing 2 .*"
                       r"'model\.layers\.1\.mlp\.up_proj\.weight'.*'lm_head\.weight'"):
        load_pretrained(path)

    save_file({**original, "model.layers.0.self_attn.extra.weight": np.zeros(3, np.float32)}, str(f))
    with pytest.raises(HFCheckpointError, match=r"model\.safetensors.*unexpected.*"
                       r"'model\.layers\.0\.self_attn\.extra\.weight'"):
        load_pretrained(path)

    save_file({**original, "model.norm.weight": np.zeros(64, np.int32)}, str(f))
    with pytest.raises(HFCheckpointError, match=r"model\.safetensors.*'model\.norm\.weight'.*I32"):
        load_pretrained(path)


def test_shape_disagreeing_with_config_is_named(built, tmp_path):
    path = _copy(built, "llama_untied", tmp_path)
    edit_config(path, intermediate_size=128)
    with pytest.raises(HFCheckpointError) as e:
        load_pretrained(path)
    msg = str(e.value)
    assert "model.safetensors" in msg and "model.layers.0.mlp.gate_proj.weight" in msg
    assert "(96, 64)" in msg and "(128, 64)" in msg


def test_save_refuses_params_that_do_not_match_cfg(built, tmp_path):
    _, _, cfg, params = built("qwen2")
    with pytest.raises(HFCheckpointError, match="layer_2"):
        save_pretrained(tmp_path, cfg.replace(n_layers=3), params)
    with pytest.raises(HFCheckpointError, match="embed_tokens"):
        save_pretrained(tmp_path, cfg.replace(vocab_size=100), params)
    with pytest.raises(HFCheckpointError, match="cannot export"):
        save_pretrained(tmp_path, cfg.replace(out_bias=True), params)
    assert not (tmp_path / "model.safetensors").exists()
