"""The decoder LM: shapes, padding invariance, cached == uncached, logical axes, bfloat16.

Each preset is built once per module (params + one jitted forward); every test reuses the same
input shapes so each config compiles a handful of times in total.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from rlhf_jax.models import (forward, get_preset, init_cache, init_params, logits,
                             param_logical_axes, positions_from_mask, to_layout)
from rlhf_jax.sampling.generate import generate

CONFIGS = {
    "tiny": get_preset("tiny"),
    "tiny-llama": get_preset("tiny-llama"),         # GQA: 4 query heads, 2 kv heads
    "tiny-qwen2": get_preset("tiny-qwen2"),         # GQA + qkv bias + big rope theta
    "tiny-mqa": get_preset("tiny-llama", n_kv_heads=1),
}
B, T = 3, 10
PAD = [0, 3, 6]  # left padding per row; row 0 is unpadded
ATOL = 1e-5


def random_params(cfg, seed=0):
    """Params with init_params' tree and shapes, filled by numpy (no XLA compile of the RNG).

    Kernels ~ N(0, 0.02^2) like the init; norm scales ~ 1 + N(0, 0.1^2) and biases ~ N(0, 0.02^2)
    (non-zero, so the bias and scale code paths are exercised).
    """
    shapes = jax.eval_shape(lambda r: init_params(cfg, r), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = jax.tree_util.keystr(path)
        x = rng.normal(0.0, 0.02, s.shape)
        if "scale" in name:
            x = 1.0 + 5 * x
        return jnp.asarray(x, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@pytest.fixture(scope="module", params=list(CONFIGS))
def model(request):
    cfg = CONFIGS[request.param]
    params = random_params(cfg, seed=1)
    fwd = jax.jit(lambda p, ids, m: forward(cfg, p, ids, m))
    return cfg, params, fwd


def _batch(cfg, seed=0):
    """Row b = PAD[b] pad tokens, then the first T - PAD[b] tokens of one shared sequence ``seq``.

    By causality the real positions of row b must match ``forward(seq[None])[0, :T - PAD[b]]``, so
    one unpadded reference of shape [1, T] checks every row.
    """
    seq = np.array(jax.random.randint(jax.random.PRNGKey(seed), (T,), 1, cfg.vocab_size))
    ids = np.zeros((B, T), np.int32)
    mask = np.zeros((B, T), np.int32)
    for b, p in enumerate(PAD):
        ids[b, p:] = seq[:T - p]
        mask[b, p:] = 1
    return jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(seq[None], jnp.int32)


def test_positions_from_mask_hand_values():
    m = jnp.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    np.testing.assert_array_equal(positions_from_mask(m),
                                  [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [0, 0, 0, 0, 0]])


def test_shapes_and_dtypes(model):
    cfg, params, fwd = model
    ids, mask, _ = _batch(cfg)
    lg, hidden, cache = fwd(params, ids, mask)
    assert cache is None
    assert lg.shape == (B, T, cfg.vocab_size) and lg.dtype == jnp.float32
    assert hidden.shape == (B, T, cfg.d_model) and hidden.dtype == cfg.jnp_dtype
    assert np.isfinite(np.asarray(lg)).all()


def test_left_padding_matches_unpadded_row(model):
    cfg, params, fwd = model
    ids, mask, seq = _batch(cfg)
    lg, hidden, _ = fwd(params, ids, mask)
    # Unpadded reference through the public `logits` (no mask == all ones) and `forward`.
    ref_lg, ref_h = jax.jit(lambda p_, i: (logits(cfg, p_, i), forward(cfg, p_, i)[1]))(params, seq)
    ref_lg, ref_h = ref_lg[0], ref_h[0]
    for b, p in enumerate(PAD):
        np.testing.assert_allclose(lg[b, p:], ref_lg[:T - p], atol=ATOL, rtol=0)
        np.testing.assert_allclose(hidden[b, p:], ref_h[:T - p], atol=ATOL, rtol=0)
    # Same token at the same position but different padding: identical logits; and the logits
    # do depend on the tokens (the comparison above is not vacuous).
    assert np.abs(np.asarray(ref_lg[-1] - ref_lg[-2])).max() > 1e-3


def test_cached_prefill_then_single_tokens_equals_full_forward(model):
    cfg, params, fwd = model
    ids, mask, _ = _batch(cfg, seed=3)
    prefill = 6  # prompt = first 6 columns (left-padded; row 2 is all padding), then 4 single steps
    S = T + 3    # cache longer than the sequence: unwritten slots must stay masked
    full_lg, _, _ = fwd(params, ids, mask)

    step = jax.jit(lambda p, i, m, c: forward(cfg, p, i, m, c))
    cache = init_cache(cfg, B, S)
    lg, _, cache = step(params, ids[:, :prefill], mask[:, :prefill], cache)
    got = [lg]
    for t in range(prefill, T):
        lg, _, cache = step(params, ids[:, t:t + 1], mask[:, t:t + 1], cache)
        got.append(lg)
    got = jnp.concatenate(got, axis=1)
    assert int(cache["index"]) == T
    np.testing.assert_array_equal(cache["mask"][:, :T], mask)
    assert not np.asarray(cache["mask"][:, T:]).any()
    real = np.asarray(mask, bool)
    np.testing.assert_allclose(np.asarray(got)[real], np.asarray(full_lg)[real], atol=ATOL, rtol=0)
    # The decode step compiled once for all single-token steps (plus once for the prefill).
    assert step._cache_size() == 2


def test_param_logical_axes_cover_every_leaf(model):
    cfg, params, _ = model
    axes = param_logical_axes(cfg)
    is_spec = lambda x: isinstance(x, PartitionSpec)
    p_leaves, p_def = jax.tree_util.tree_flatten_with_path(params)
    a_leaves, a_def = jax.tree_util.tree_flatten_with_path(axes, is_leaf=is_spec)
    assert [k for k, _ in p_leaves] == [k for k, _ in a_leaves]
    for (path, leaf), (_, spec) in zip(p_leaves, a_leaves):
        assert is_spec(spec), path
        assert len(spec) == leaf.ndim, (path, spec, leaf.shape)
        assert all(a is None or isinstance(a, str) for a in spec), (path, spec)
    names = {a for _, spec in a_leaves for a in spec if a is not None}
    assert {"vocab", "embed", "heads", "head_dim", "mlp"} <= names
    if cfg.n_kv_heads != cfg.n_heads or cfg.family != "gpt2":
        assert "kv_heads" in names


def test_bfloat16_compute_runs_and_stays_close(model):
    cfg, params, fwd = model
    ids, mask, _ = _batch(cfg)
    ref, _, _ = fwd(params, ids, mask)
    bcfg = cfg.replace(dtype="bfloat16")
    lg, hidden, _ = jax.jit(lambda p, i, m: forward(bcfg, p, i, m))(params, ids, mask)
    assert lg.dtype == jnp.float32 and hidden.dtype == jnp.bfloat16
    real = np.asarray(mask, bool)
    a, r = np.asarray(lg)[real], np.asarray(ref)[real]
    assert np.isfinite(a).all()
    scale = np.abs(r).max()
    assert np.abs(a - r).max() <= 0.02 * scale + 1e-3, (np.abs(a - r).max(), scale)
    # Rank agreement of the top token on most positions.
    assert (a.argmax(-1) == r.argmax(-1)).mean() >= 0.8
    if cfg.family == "gpt2":  # bfloat16 params as well (one config is enough)
        b2 = cfg.replace(dtype="bfloat16", param_dtype="bfloat16")
        p2 = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
        lg2 = jax.jit(lambda p, i, m: logits(b2, p, i, m))(p2, ids, mask)
        assert lg2.dtype == jnp.float32
        assert np.abs(np.asarray(lg2)[real] - r).max() <= 0.03 * scale + 1e-3


@pytest.mark.parametrize("preset", ["tiny", "tiny-llama"])
def test_scanned_layers_equal_the_unrolled_loop(preset):
    """scan_layers (one compiled block over the stacked weights) is the same function as the
    unrolled loop over per-layer weights: values and gradients, uncached and cached (greedy
    decoding), with the weights converted between the layouts by ``to_layout``."""
    cfg = get_preset(preset, vocab_size=64, n_layers=4)
    unrolled = cfg.replace(scan_layers=False)
    assert cfg.scans_layers and not unrolled.scans_layers
    params = init_params(cfg, jax.random.PRNGKey(0))
    inner = params["params"]
    assert "layers" in inner and not any(k.startswith("layer_") for k in inner)
    assert inner["layers"]["attn"]["qkv_kernel"].shape[0] == 4
    spec = param_logical_axes(cfg)["params"]["layers"]["attn"]["qkv_kernel"]
    assert tuple(spec)[0] == "layers"
    flat = to_layout(unrolled, params)
    assert sorted(k for k in flat["params"] if k.startswith("layer_")) == [f"layer_{i}" for i in range(4)]
    back = to_layout(cfg, flat)
    for x, y in zip(jax.tree_util.tree_leaves(back), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="to_layout"):
        forward(cfg, flat, jnp.zeros((1, 2), jnp.int32))
    with pytest.raises(ValueError, match="to_layout"):
        forward(unrolled, params, jnp.zeros((1, 2), jnp.int32))

    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 0, 64)
    mask = jnp.ones((2, 9), jnp.int32).at[0, :3].set(0)

    def loss(c, p):
        lg, hidden, _ = forward(c, p, ids, mask)
        return (lg[:, 3:] ** 2).mean() + hidden.mean()

    a, ga = jax.value_and_grad(lambda p: loss(cfg, p))(params)
    b, gb = jax.value_and_grad(lambda p: loss(unrolled, p))(flat)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert len(jax.tree_util.tree_leaves(ga)) < len(jax.tree_util.tree_leaves(gb)) / 3
    for x, y in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(to_layout(cfg, gb))):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)

    prompt, prompt_mask = ids[:, :5], mask[:, :5]
    tokens = [generate(c, p, prompt, prompt_mask, rng=jax.random.PRNGKey(2), max_new_tokens=6,
                       temperature=0.0).tokens for c, p in ((cfg, params), (unrolled, flat))]
    np.testing.assert_array_equal(tokens[0], tokens[1])