"""Next-token strategies: property tests (hypothesis) for top-k / top-p / greedy, and the sampling
distribution checked against softmax(logits / T).

Draws are vmapped over many keys inside one jitted function per k, and every example has the same
shape [3, 8], so each hypothesis example costs one small dispatch, not a compile.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhf_jax.sampling import greedy, sample, top_k_filter, top_p_filter
from rlhf_jax.sampling.strategies import scale_temperature

DRAWS = 512
B, V = 3, 8
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)


@st.composite
def logits_rows(draw):
    # Coarse values so ties (the tie rules below) actually occur.
    vals = draw(st.lists(st.integers(-12, 12), min_size=B * V, max_size=B * V))
    return np.asarray(vals, np.float32).reshape(B, V) / 4.0


@functools.cache
def _drawer(k):
    @jax.jit
    def draws(seed, logits, temperature, p):
        keys = jax.random.split(jax.random.PRNGKey(seed), DRAWS)
        return jax.vmap(lambda r: sample(r, logits, temperature, k, p))(keys)  # [DRAWS, B]
    return draws


def _nucleus(logits, p):
    """Reference top-p set (float64): the smallest set of top tokens whose probability reaches p,
    tie-inclusive at the boundary, with 1e-5 slack on p for float32 cumulative sums."""
    x = np.asarray(logits, np.float64)
    probs = np.exp(x - x.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    allowed = np.zeros(x.shape, bool)
    for b in range(x.shape[0]):
        order = np.argsort(-probs[b], kind="stable")
        csum = np.cumsum(probs[b, order])
        n = int(np.searchsorted(csum, min(p + 1e-5, 1.0) - 1e-12)) + 1  # first index reaching p
        n = min(n, x.shape[1])
        allowed[b] = probs[b] >= probs[b, order[n - 1]] - 1e-12
    return allowed


@SETTINGS
@given(logits=logits_rows(), k=st.sampled_from([1, 3, V]), seed=st.integers(0, 2**16))
def test_top_k_never_emits_outside_k_largest(logits, k, seed):
    toks = np.asarray(_drawer(k)(seed, jnp.asarray(logits), 1.0, 1.0))
    kth = np.sort(logits, -1)[:, -k]  # tie-inclusive: every token >= the k-th largest value
    chosen = np.take_along_axis(logits, toks.T, 1)
    assert (chosen >= kth[:, None]).all()
    # The filter itself: -inf exactly below the k-th largest, untouched elsewhere.
    f = np.asarray(top_k_filter(jnp.asarray(logits), k))
    keep = logits >= kth[:, None]
    np.testing.assert_array_equal(f[keep], logits[keep])
    assert np.isneginf(f[~keep]).all()
    if k == 1 and (np.sort(logits, -1)[:, -1] > np.sort(logits, -1)[:, -2]).all():
        np.testing.assert_array_equal(toks, np.broadcast_to(logits.argmax(-1), toks.shape))


@SETTINGS
@given(logits=logits_rows(), p=st.floats(0.01, 1.0), temperature=st.sampled_from([0.5, 1.0, 2.0]),
       seed=st.integers(0, 2**16))
def test_top_p_never_emits_outside_nucleus(logits, p, temperature, seed):
    toks = np.asarray(_drawer(0)(seed, jnp.asarray(logits), temperature, p))
    allowed = _nucleus(logits / temperature, p)  # the nucleus of the temperature-scaled dist
    assert np.take_along_axis(allowed, toks.T, 1).all()
    # The filter keeps exactly a nucleus: the kept set (minus any boundary ties) reaches p.
    f = np.asarray(top_p_filter(jnp.asarray(logits), p))
    kept = np.isfinite(f)
    assert (kept <= _nucleus(logits, p)).all()
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits, jnp.float32), -1))
    assert ((probs * kept).sum(-1) >= p - 1e-5).all()
    assert kept[np.arange(len(logits)), logits.argmax(-1)].all()  # the top token always survives


@SETTINGS
@given(logits=logits_rows())
def test_greedy_is_argmax(logits):
    out = greedy(jax.random.PRNGKey(0), jnp.asarray(logits), 0.3, 2, 0.5)  # ignores the rest
    assert out.dtype == jnp.int32
    np.testing.assert_array_equal(out, logits.argmax(-1))  # first index on ties, like numpy


def test_top_p_hand_values():
    # probs .5, .3, .15, .05 (in shuffled order)
    logits = jnp.log(jnp.array([[0.15, 0.5, 0.05, 0.3]]))
    keep = lambda p: np.isfinite(np.asarray(top_p_filter(logits, p)))[0].tolist()
    assert keep(0.4) == [False, True, False, False]
    assert keep(0.5) == [False, True, False, False]   # .5 reaches .5
    assert keep(0.6) == [False, True, False, True]
    assert keep(0.9) == [True, True, False, True]
    assert keep(1.0) == [True, True, True, True]
    # p is traced: no recompile across values.
    f = jax.jit(top_p_filter)
    f(logits, 0.3), f(logits, 0.7)
    assert f._cache_size() == 1


def test_sample_frequencies_match_tempered_softmax():
    logits = jnp.array([[2.0, 1.0, 0.0, -1.0, 0.5]])
    for t in (0.5, 1.0, 2.0):
        toks = np.asarray(jax.jit(lambda r: jax.vmap(lambda k: sample(k, logits, t))(
            jax.random.split(r, 20000)))(jax.random.PRNGKey(0)))[:, 0]
        freq = np.bincount(toks, minlength=5) / len(toks)
        expected = np.asarray(jax.nn.softmax(logits[0] / t))
        # 20k draws: s.e. <= sqrt(.25 / 20000) = .0035; allow ~4 s.e.
        np.testing.assert_allclose(freq, expected, atol=0.015)
    np.testing.assert_allclose(scale_temperature(logits, 2.0), logits / 2.0)


def test_sort_keys_order_like_floats():
    from rlhf_jax.sampling.strategies import _sort_keys
    vals = np.array([-np.inf, -3e38, -2.0, -1.0, -1e-30, -0.0, 0.0, 1e-30, 1.0, 2.0, 3e38, np.inf],
                    np.float32)
    keys = np.asarray(_sort_keys(jnp.asarray(vals)))
    assert (np.diff(keys) >= 0).all() and (np.diff(keys)[vals[1:] != vals[:-1]] > 0).all()


def test_filters_on_a_gpt2_sized_vocab():
    """The bisection filters against sorting references at V = 50257, with duplicated values,
    -inf entries (an earlier filter's output) and both signs."""
    rng = np.random.default_rng(0)
    logits = (rng.normal(size=(4, 50257)) * 3).astype(np.float32)
    logits[0, :100] = logits[0, 100]          # a tie block
    logits[1, rng.integers(0, 50257, 20000)] = -np.inf
    logits[2] = np.round(logits[2])           # heavy ties everywhere
    x = jnp.asarray(logits)
    f_k = jax.jit(top_k_filter, static_argnums=1)
    for k in (1, 40, 1000, 30000):
        kth = np.sort(logits, -1)[:, -k]
        np.testing.assert_array_equal(np.isfinite(np.asarray(f_k(x, k))), logits >= kth[:, None])
    probs = np.asarray(jax.nn.softmax(x, -1))
    f_p = jax.jit(lambda lg, p: top_p_filter(lg, p))  # its own compile cache
    for p in (0.05, 0.5, 0.9, 0.999):
        kept = np.isfinite(np.asarray(f_p(x, p)))
        assert (kept <= _nucleus(logits, p)).all()
        assert ((probs * kept).sum(-1) >= p - 1e-5).all()
        # Minimal: dropping the least likely kept value (with its ties) falls short of p.
        low = np.where(kept, probs, np.inf).min(-1, keepdims=True)
        assert ((probs * (kept & (probs > low))).sum(-1) < p + 1e-5).all()
    assert f_p._cache_size() == 1
