"""LoRA as a pytree transform (models/lora.py): the delta by hand, the adapted model starts as the
base, only adapters are trained and held by the optimizer, and the merged export loads in
transformers with our adapted model's logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.sft import make_lm_loss
from rlhf_jax.algorithms.step import make_train_step
from rlhf_jax.algorithms.train_state import create_state, make_optimizer
from rlhf_jax.models import forward, get_preset, init_params, to_layout
from rlhf_jax.models.lora import TARGETS, apply_lora, count, init_lora, lora_loss

CFG = get_preset("tiny", vocab_size=64, max_len=16)
RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def base():
    return init_params(CFG, jax.random.PRNGKey(0))


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 64, (4, 12)).astype(np.int32)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}


def test_delta_by_hand_and_start_as_the_base(base):
    ad = init_lora(base, jax.random.PRNGKey(1), rank=RANK)
    assert len(ad) == CFG.n_layers * 4  # qkv, o, up, down per block (no gate in GPT-2)
    same = apply_lora(base, ad, ALPHA / RANK)
    for x, y in zip(jax.tree_util.tree_leaves(same), jax.tree_util.tree_leaves(base)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    key = "['params']['layer_0']['attn']['qkv_kernel']"
    rng = np.random.default_rng(2)
    b = rng.standard_normal(ad[key]["b"].shape).astype(np.float32)
    ad = dict(ad, **{key: {"a": ad[key]["a"], "b": jnp.asarray(b)}})
    w = np.asarray(base["params"]["layer_0"]["attn"]["qkv_kernel"])  # [K, G+2, H, D]
    got = np.asarray(apply_lora(base, ad, 0.5)["params"]["layer_0"]["attn"]["qkv_kernel"])
    k, g, h, d = 1, 2, 3, 5  # one element: W + 0.5 · Σ_r B[row, r] A[r, d], row = (k, g, h) flattened
    row = (k * w.shape[1] + g) * w.shape[2] + h
    want = w[k, g, h, d] + 0.5 * float(b[row] @ np.asarray(ad[key]["a"])[:, d])
    assert got[k, g, h, d] == pytest.approx(want, rel=1e-6)
    others = "['params']['layer_0']['mlp']['up_kernel']"
    assert np.array_equal(np.asarray(apply_lora(base, ad, 0.5)["params"]["layer_0"]["mlp"]["up_kernel"]),
                          np.asarray(base["params"]["layer_0"]["mlp"]["up_kernel"])) and others in ad


def test_only_adapters_are_trained_and_held(base):
    ad = init_lora(base, jax.random.PRNGKey(1), rank=RANK)
    tx = make_optimizer(1e-2)
    step = make_train_step(lora_loss(make_lm_loss(CFG), base, ALPHA / RANK), tx)
    state = create_state(ad, tx)
    n_base = sum(x.size for x in jax.tree_util.tree_leaves(base))
    held = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state) if hasattr(x, "size") and x.ndim)
    assert held == 2 * count(ad) < 0.5 * n_base  # Adam's two moments of the adapters, nothing of the base
    before = np.asarray(base["params"]["layer_0"]["attn"]["qkv_kernel"]).copy()
    losses = []
    for _ in range(15):
        state, m = step(state, _batch(), None)
        losses.append(float(m["optim/loss"]))
    assert losses[-1] < losses[0] - 0.2, losses
    np.testing.assert_array_equal(np.asarray(base["params"]["layer_0"]["attn"]["qkv_kernel"]), before)
    assert all(float(jnp.abs(v["b"]).max()) > 0 for v in state.params.values())


def test_merged_export_loads_in_transformers_with_the_adapted_logits(base, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf_jax.hf import save_pretrained

    ad = init_lora(base, jax.random.PRNGKey(1), rank=RANK)
    rng = np.random.default_rng(5)
    ad = {k: {"a": v["a"], "b": jnp.asarray(rng.standard_normal(v["b"].shape).astype(np.float32) * 0.05)}
          for k, v in ad.items()}
    merged = apply_lora(base, ad, ALPHA / RANK)
    save_pretrained(tmp_path, CFG, merged)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = _batch()["input_ids"]
    with torch.no_grad():
        theirs = hf(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    ours = np.asarray(forward(CFG, merged, jnp.asarray(ids))[0])
    np.testing.assert_allclose(theirs, ours, atol=2e-4)
    assert np.abs(ours - np.asarray(forward(CFG, base, jnp.asarray(ids))[0])).max() > 1e-2  # adapters matter


def test_targets_and_rank_are_checked(base):
    with pytest.raises(ValueError, match="rank"):
        init_lora(base, jax.random.PRNGKey(0), rank=0)
    with pytest.raises(ValueError, match="LoRA target"):
        init_lora(base, jax.random.PRNGKey(0), rank=2, targets=("nothing",))
    assert set(TARGETS) >= {"qkv_kernel", "o_kernel"}


def _rich(ad):
    """Adapters with B ≠ 0 (a trained-looking delta)."""
    keys = iter(jax.random.split(jax.random.PRNGKey(5), 2 * len(ad)))
    return {k: {"a": v["a"], "b": 0.05 * jax.random.normal(next(keys), v["b"].shape)} for k, v in ad.items()}


@pytest.mark.parametrize("scan", [False, True])
def test_unmerged_form_without_dropout_is_the_merged_model(base, scan):
    """``lora_variables`` at rate 0 (the adapters beside the kernels) gives the merged weights' logits,
    with and without scan over layers; a rate above 0 changes them, by its key."""
    from rlhf_jax.models.lora import lora_variables

    cfg = CFG.replace(scan_layers=scan)
    base = to_layout(cfg, base)  # scanned: the layers stacked, and so are their adapters
    ad = _rich(init_lora(base, jax.random.PRNGKey(1), rank=RANK))
    ids = jnp.asarray(_batch()["input_ids"])
    if scan:
        assert set(ad) == {f"['params']['layers']['{m}']['{k}']" for m, k in
                           [("attn", "qkv_kernel"), ("attn", "o_kernel"), ("mlp", "up_kernel"), ("mlp", "down_kernel")]}
        assert ad["['params']['layers']['mlp']['up_kernel']"]["a"].shape == (CFG.n_layers, RANK, CFG.d_model)
        # the stacked adapters merge into the stacked kernels as the per-layer ones do into theirs
        per_layer = {k.replace("['layers']", f"['layer_{i}']"): jax.tree.map(lambda w, i=i: w[i], v)
                     for k, v in ad.items() for i in range(CFG.n_layers)}
        np.testing.assert_allclose(
            forward(CFG, apply_lora(to_layout(CFG, base), per_layer, ALPHA / RANK), ids)[0],
            forward(cfg, apply_lora(base, ad, ALPHA / RANK), ids)[0], atol=1e-5)
    merged = np.asarray(forward(cfg, apply_lora(base, ad, ALPHA / RANK), ids)[0])
    apart = np.asarray(forward(cfg, lora_variables(base, ad, ALPHA / RANK, 0.0, jax.random.PRNGKey(3)), ids)[0])
    np.testing.assert_allclose(apart, merged, atol=1e-5)
    k1, k2 = (np.asarray(forward(cfg, lora_variables(base, ad, ALPHA / RANK, 0.3, jax.random.PRNGKey(k)), ids)[0])
              for k in (3, 4))
    again = np.asarray(forward(cfg, lora_variables(base, ad, ALPHA / RANK, 0.3, jax.random.PRNGKey(3)), ids)[0])
    np.testing.assert_array_equal(k1, again)
    assert np.abs(k1 - merged).max() > 1e-2 and np.abs(k1 - k2).max() > 1e-2


def test_dropout_on_the_adapter_input_by_hand(base):
    """One MLP with an adapter on ``down_kernel``: y = down(h) + scale·B·A·(m ⊙ h / keep), m the
    Bernoulli(keep) mask of the adapter's key; averaged over keys it is the merged MLP's output."""
    from rlhf_jax.models.transformer import MLP

    cfg = CFG
    p = base["params"]["layer_0"]["mlp"]
    rng = np.random.default_rng(3)
    a = rng.standard_normal((RANK, cfg.d_ff)).astype(np.float32) / np.sqrt(cfg.d_ff)
    b = rng.standard_normal((cfg.d_model, RANK)).astype(np.float32) * 0.1
    x = rng.standard_normal((2, 3, cfg.d_model)).astype(np.float32)
    rate, scale = 0.25, 2.0

    def mlp(key):
        lora = {"down_kernel": {"a": a, "b": b, "scale": jnp.float32(scale), "rate": jnp.float32(rate),
                                "key": key}}
        return np.asarray(MLP(cfg).apply({"params": p, "lora": lora}, jnp.asarray(x)))

    h = np.asarray(jax.nn.gelu(jnp.asarray(x @ np.asarray(p["up_kernel"]).T + np.asarray(p["up_bias"])),
                               approximate=True))
    plain = h @ np.asarray(p["down_kernel"]).T + np.asarray(p["down_bias"])
    key = jax.random.PRNGKey(9)
    m = np.asarray(jax.random.bernoulli(key, 1 - rate, h.shape))
    want = plain + scale * ((m * h / (1 - rate)) @ a.T) @ b.T
    np.testing.assert_allclose(mlp(key), want, rtol=2e-5, atol=2e-5)
    assert 0.6 < m.mean() < 0.9  # about keep = 0.75 of the inputs kept
    merged = plain + scale * (h @ a.T) @ b.T
    mean = np.mean([mlp(k) for k in jax.random.split(jax.random.PRNGKey(10), 400)], axis=0)
    delta = np.abs(merged - plain).max()
    assert np.abs(mean - merged).max() < 0.1 * delta, (np.abs(mean - merged).max(), delta)


def test_adapter_delta_gradients_equal_autodiff():
    """``adapter_delta``'s hand-written backward (contractions through the rank-r factors) gives
    autodiff's gradients of ``scale·(x·Aᵀ)·Bᵀ`` for x, A and B, on a batch of sequences."""
    from rlhf_jax.models.lora import adapter_delta

    rng = np.random.default_rng(4)
    x, a, b, w = (jnp.asarray(rng.standard_normal(s).astype(np.float32))
                  for s in ((2, 5, 12), (3, 12), (7, 3), (2, 5, 7)))
    scale = jnp.float32(1.5)
    ours = jax.grad(lambda x, a, b: (adapter_delta(x, a, b, scale) * w).sum(), argnums=(0, 1, 2))(x, a, b)
    plain = jax.grad(lambda x, a, b: ((((x @ a.T) @ b.T) * scale) * w).sum(), argnums=(0, 1, 2))(x, a, b)
    for g, h in zip(ours, plain):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(adapter_delta(x, a, b, scale)), np.asarray(((x @ a.T) @ b.T) * scale),
                               rtol=1e-6, atol=1e-6)
