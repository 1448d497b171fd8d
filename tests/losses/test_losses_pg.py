"""The composable policy-gradient objective (ratio × clip × aggregation) against NumPy references.

Every expectation below is computed in float64 NumPy / plain Python from the textbook formulas,
never by calling the library.
"""
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.losses import AGGREGATIONS, CLIPS, RATIOS, kl_loss_term, policy_gradient_loss

NAN, INF = float("nan"), float("inf")
TOL = dict(rtol=1e-5, atol=1e-6)
AGG_MODES = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]

# A ragged batch: rows of length 5, 2, 0 (all masked) and 3; T = 5.
RAG_MASK = np.array([[1, 1, 1, 1, 1],
                     [1, 1, 0, 0, 0],
                     [0, 0, 0, 0, 0],
                     [1, 1, 1, 0, 0]], dtype=np.float64)
RAG_OLD = np.array([[-1.0, -2.0, -0.5, -1.5, -3.0],
                    [-0.7, -1.2, 0.0, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 0.0, 0.0],
                    [-2.5, -0.3, -1.1, 0.0, 0.0]])
RAG_DELTA = np.array([[0.10, -0.20, 0.05, 0.30, -0.15],
                      [0.40, -0.10, 0.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0],
                      [-0.25, 0.20, 0.10, 0.0, 0.0]])
RAG_LOGP = RAG_OLD + RAG_DELTA
RAG_ADV = np.array([[1.0, 0.5, -0.5, 2.0, -1.0],
                    [-1.5, 0.8, 0.0, 0.0, 0.0],
                    [0.0, 0.0, 0.0, 0.0, 0.0],
                    [0.3, -2.0, 1.2, 0.0, 0.0]])


def with_garbage(x, mask, values=(NAN, INF, -INF)):
    """x with every masked entry overwritten by NaN / ±inf (cycled)."""
    x = np.array(x, dtype=np.float64)
    cycle = itertools.cycle(values)
    for idx in zip(*np.nonzero(mask == 0)):
        x[idx] = next(cycle)
    return x


def f32(x):
    return jnp.asarray(np.asarray(x), jnp.float32)


def ref_aggregate(l, m, mode):
    """Plain-loop reference of the four aggregations (rows with no valid token are skipped)."""
    rows = []  # (row sum, row count) of the non-empty rows
    for i in range(l.shape[0]):
        s, n = 0.0, 0
        for t in range(l.shape[1]):
            if m[i, t]:
                s += float(l[i, t])
                n += 1
        if n:
            rows.append((s, n))
    if not rows:
        return 0.0
    if mode == "token_mean":
        return sum(s for s, _ in rows) / sum(n for _, n in rows)
    if mode == "seq_mean_token_mean":
        return sum(s / n for s, n in rows) / len(rows)
    if mode == "seq_mean_token_sum":
        return sum(s for s, _ in rows) / len(rows)
    if mode == "seq_mean_token_sum_norm":
        return sum(s for s, _ in rows) / (len(rows) * l.shape[1])
    raise ValueError(mode)


def ref_agg_weights(m, mode):
    """W with AGG(l) = Σ W·l, i.e. d AGG / d l_{it}, from the definitions (0 on masked entries)."""
    m = np.asarray(m, dtype=np.float64)
    n_rows = m.sum(1)
    nonempty = int((n_rows > 0).sum())
    w = np.zeros_like(m)
    for i in range(m.shape[0]):
        for t in range(m.shape[1]):
            if not m[i, t]:
                continue
            if mode == "token_mean":
                w[i, t] = 1.0 / m.sum()
            elif mode == "seq_mean_token_mean":
                w[i, t] = 1.0 / (nonempty * n_rows[i])
            elif mode == "seq_mean_token_sum":
                w[i, t] = 1.0 / nonempty
            elif mode == "seq_mean_token_sum_norm":
                w[i, t] = 1.0 / (nonempty * m.shape[1])
    return w


@functools.lru_cache(maxsize=None)
def _compiled(ratio="token", clip="ppo", aggregation="token_mean"):
    """One jitted (loss, metrics) and one jitted gradient per configuration (faster than eager)."""
    def f(lp, old, adv, mask, hp):
        return policy_gradient_loss(lp, old, adv, mask, hp, ratio=ratio, clip=clip,
                                    aggregation=aggregation)
    return jax.jit(f), jax.jit(jax.grad(lambda *a: f(*a)[0]))


def _hp(hp):
    return {k: jnp.float32(v) for k, v in hp.items()}


def pg(logp, old, adv, mask, hp, **kw):
    return _compiled(**kw)[0](f32(logp), f32(old), f32(adv), f32(mask), _hp(hp))


def pg_grad(logp, old, adv, mask, hp, **kw):
    return np.asarray(_compiled(**kw)[1](f32(logp), f32(old), f32(adv), f32(mask), _hp(hp)))


def test_registries_hold_the_documented_names():
    for name in ["token", "sequence", "none"]:
        assert callable(RATIOS.get(name))
    for name in ["ppo", "dual", "cispo", "none"]:
        assert callable(CLIPS.get(name))
    for name in AGG_MODES:
        assert callable(AGGREGATIONS.get(name))


# --- aggregations -------------------------------------------------------------------------------


# per-token losses on the ragged mask (the empty row and the padding hold garbage)
AGG_X = with_garbage(np.array([[0.5, -1.0, 2.0, 0.25, 3.0],
                               [-2.0, 4.0, 0.0, 0.0, 0.0],
                               [0.0, 0.0, 0.0, 0.0, 0.0],
                               [1.5, 0.5, -0.75, 0.0, 0.0]]), RAG_MASK)


def test_aggregation_hand_values_ragged_with_empty_row():
    # row sums 4.75, 2.0, -, 1.25 over 5, 2, -, 3 tokens; 3 non-empty rows, T = 5
    hand = {
        "token_mean": (4.75 + 2.0 + 1.25) / 10,
        "seq_mean_token_mean": (4.75 / 5 + 2.0 / 2 + 1.25 / 3) / 3,
        "seq_mean_token_sum": (4.75 + 2.0 + 1.25) / 3,
        "seq_mean_token_sum_norm": (4.75 + 2.0 + 1.25) / (3 * 5),
    }
    for mode in AGG_MODES:
        got = AGGREGATIONS.get(mode)(f32(AGG_X), f32(RAG_MASK))
        np.testing.assert_allclose(got, hand[mode], **TOL, err_msg=mode)
        np.testing.assert_allclose(got, ref_aggregate(AGG_X, RAG_MASK, mode), **TOL, err_msg=mode)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_gradient_is_finite_and_matches_weights(mode):
    g = np.asarray(jax.grad(lambda x: AGGREGATIONS.get(mode)(x, f32(RAG_MASK)))(f32(AGG_X)))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, ref_agg_weights(RAG_MASK, mode), **TOL)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_int_and_bool_masks_agree(mode):
    want = ref_aggregate(AGG_X, RAG_MASK, mode)
    for m in (jnp.asarray(RAG_MASK, jnp.int32), jnp.asarray(RAG_MASK != 0)):
        np.testing.assert_allclose(AGGREGATIONS.get(mode)(f32(AGG_X), m), want, **TOL)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_all_masked_is_zero_with_zero_grad(mode):
    x = f32(with_garbage(np.zeros((2, 3)), np.zeros((2, 3))))
    m = jnp.zeros((2, 3))
    assert float(AGGREGATIONS.get(mode)(x, m)) == 0.0
    g = jax.grad(lambda x: AGGREGATIONS.get(mode)(x, m))(x)
    np.testing.assert_array_equal(g, np.zeros((2, 3)))


@pytest.mark.parametrize("mode", AGG_MODES)
def test_policy_loss_aggregation_through_objective_with_garbage(mode):
    """ratio 'none' gives l = −A·logp; the objective aggregates it like the reference."""
    logp = with_garbage(RAG_LOGP, RAG_MASK)
    old = with_garbage(RAG_OLD, RAG_MASK, values=(INF, NAN))
    adv = with_garbage(RAG_ADV, RAG_MASK, values=(-INF, NAN, INF))
    hp = {"clip_eps": 0.2}
    loss, metrics = pg(logp, old, adv, RAG_MASK, hp, ratio="none", aggregation=mode)
    want = ref_aggregate(-RAG_ADV * RAG_LOGP, RAG_MASK, mode)
    np.testing.assert_allclose(loss, want, **TOL)
    np.testing.assert_allclose(metrics["policy/loss"], want, **TOL)
    g = pg_grad(logp, old, adv, RAG_MASK, hp, ratio="none", aggregation=mode)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, -RAG_ADV * ref_agg_weights(RAG_MASK, mode), **TOL)
    for key, val in metrics.items():
        assert np.isfinite(float(val)), key


# --- ratio 'none': plain score-function loss ------------------------------------------------------


@pytest.mark.parametrize("clip", ["ppo", "dual", "cispo", "none"])
def test_no_ratio_is_score_function_loss_and_ignores_clip(clip):
    hp = {"clip_eps": 0.2, "clip_eps_high": 0.28, "dual_clip_c": 3.0}
    # the old policy is far away: a ratio would be huge, but 'none' does not use one
    old = RAG_OLD - 5.0
    loss, m = pg(RAG_LOGP, old, RAG_ADV, RAG_MASK, hp, ratio="none", clip=clip,
                 aggregation="seq_mean_token_sum")
    # −A·logp summed per row: rows 0, 1, 3, mean over the 3 non-empty rows
    per_row = [-(RAG_ADV[i] * RAG_LOGP[i] * RAG_MASK[i]).sum() for i in (0, 1, 3)]
    np.testing.assert_allclose(loss, sum(per_row) / 3, **TOL)
    g = pg_grad(RAG_LOGP, old, RAG_ADV, RAG_MASK, hp, ratio="none", clip=clip,
                aggregation="seq_mean_token_sum")
    np.testing.assert_allclose(g, -RAG_ADV * RAG_MASK / 3, **TOL)
    assert float(m["policy/clipfrac"]) == 0.0
    np.testing.assert_allclose(m["policy/ratio_mean"], 1.0, **TOL)


# --- GSPO sequence ratio --------------------------------------------------------------------------


def ref_seq_ratio(delta, mask):
    """s_i = exp(mean over the valid tokens of row i of Δ); None for an empty row."""
    out = []
    for i in range(delta.shape[0]):
        ds = [delta[i, t] for t in range(delta.shape[1]) if mask[i, t]]
        out.append(math.exp(sum(ds) / len(ds)) if ds else None)
    return out


def test_sequence_ratio_values_broadcast_over_row():
    logp = with_garbage(RAG_LOGP, RAG_MASK)
    old = with_garbage(RAG_OLD, RAG_MASK, values=(INF,))
    rho = np.asarray(RATIOS.get("sequence")(f32(logp), f32(old), f32(RAG_MASK)))
    assert rho.shape == RAG_MASK.shape
    s = ref_seq_ratio(RAG_DELTA, RAG_MASK)
    # hand: row 0 mean Δ = 0.1/5 = 0.02; row 1: 0.15; row 3: 0.05/3
    np.testing.assert_allclose([s[0], s[1], s[3]],
                               [math.exp(0.02), math.exp(0.15), math.exp(0.05 / 3)], rtol=1e-12)
    for i in (0, 1, 3):
        np.testing.assert_allclose(rho[i], np.full(5, s[i]), **TOL)
    assert np.all(np.isfinite(rho))
    # the ratio is not token-level: it differs from exp(Δ_t)
    assert not np.allclose(rho[0], np.exp(RAG_DELTA[0]))


def test_sequence_ratio_metric_ratio_mean_is_token_weighted():
    _, m = pg(RAG_LOGP, RAG_OLD, RAG_ADV, RAG_MASK, {"clip_eps": 0.2}, ratio="sequence",
              clip="none")
    s = ref_seq_ratio(RAG_DELTA, RAG_MASK)
    want = (5 * s[0] + 2 * s[1] + 3 * s[3]) / 10
    np.testing.assert_allclose(m["policy/ratio_mean"], want, **TOL)
    want_kl = 0.5 * (RAG_DELTA ** 2 * RAG_MASK).sum() / RAG_MASK.sum()
    np.testing.assert_allclose(m["policy/approxkl"], want_kl, **TOL)


@pytest.mark.parametrize("mode", ["seq_mean_token_mean", "token_mean"])
def test_sequence_ratio_gradient_unclipped(mode):
    """l_it = −A_it·s_i with clip 'none'. d s_i / d logp_it = s_i/|y_i| on valid tokens, so
    d loss / d logp_it = (d loss / d s_i)·s_i/|y_i| with d loss / d s_i = −Σ_t W_it·A_it."""
    logp = with_garbage(RAG_LOGP, RAG_MASK)
    old = with_garbage(RAG_OLD, RAG_MASK, values=(-INF, NAN))
    adv = with_garbage(RAG_ADV, RAG_MASK)
    hp = {"clip_eps": 0.2}
    s = ref_seq_ratio(RAG_DELTA, RAG_MASK)
    loss, _ = pg(logp, old, adv, RAG_MASK, hp, ratio="sequence", clip="none", aggregation=mode)
    lt = np.zeros_like(RAG_ADV)
    for i in (0, 1, 3):
        lt[i] = -RAG_ADV[i] * s[i]
    np.testing.assert_allclose(loss, ref_aggregate(lt, RAG_MASK, mode), **TOL)

    g = pg_grad(logp, old, adv, RAG_MASK, hp, ratio="sequence", clip="none", aggregation=mode)
    assert np.all(np.isfinite(g))
    want = np.zeros_like(RAG_ADV)
    n_nonempty = 3
    for i in (0, 1, 3):
        n_i = int(RAG_MASK[i].sum())
        valid_adv = [RAG_ADV[i, t] for t in range(5) if RAG_MASK[i, t]]
        if mode == "seq_mean_token_mean":   # loss = (1/R)·Σ_i −s_i·mean_t A_it
            dl_ds = -(sum(valid_adv) / n_i) / n_nonempty
        else:                               # loss = (1/N)·Σ_i −s_i·Σ_t A_it
            dl_ds = -sum(valid_adv) / 10
        for t in range(n_i):
            want[i, t] = dl_ds * s[i] / n_i
    np.testing.assert_allclose(g, want, **TOL)


def test_sequence_ratio_ppo_clips_the_whole_response():
    """GSPO clips per sequence: a response with s outside [1 − ε, 1 + ε] (A of the clipping sign)
    gets loss −clip(s)·A on every token and no gradient at all."""
    mask = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=np.float64)
    old = np.array([[-1.0, -2.0, -3.0, 0.0], [-1.0, -1.5, 0.0, 0.0]])
    delta = np.array([[0.3, 0.6, 0.3, 0.0], [0.05, -0.05, 0.0, 0.0]])  # s0 = e^0.4, s1 = 1
    adv = np.array([[1.0, 1.0, 1.0, 0.0], [-2.0, -2.0, 0.0, 0.0]])
    logp = with_garbage(old + delta, mask)
    hp = {"clip_eps": 0.2}
    loss, m = pg(logp, with_garbage(old, mask), with_garbage(adv, mask), mask, hp,
                 ratio="sequence", clip="ppo", aggregation="token_mean")
    # row 0: s = e^0.4 ≈ 1.49 > 1.2 with A > 0 -> −1.2 per token; row 1: s = 1 -> +2 per token
    np.testing.assert_allclose(loss, (3 * -1.2 + 2 * 2.0) / 5, **TOL)
    np.testing.assert_allclose(m["policy/clipfrac"], 3 / 5, **TOL)
    g = pg_grad(logp, with_garbage(old, mask), with_garbage(adv, mask), mask, hp,
                ratio="sequence", clip="ppo", aggregation="token_mean")
    # row 1 unclipped: loss ∋ (1/N)·Σ_t −A·s_1, d loss / d s_1 = 2·2/5 = 0.8, d s_1 / d logp_t =
    # s_1/|y_1| = 1/2 -> 0.4 on each of its tokens
    np.testing.assert_allclose(g, [[0, 0, 0, 0], [0.4, 0.4, 0, 0]], **TOL)


# --- PPO clip: symmetric and clip-higher -----------------------------------------------------------

# row 0 has A > 0, row 1 A < 0; ratios in every region of ε_low = 0.2, ε_high ∈ {0.2, 0.28}:
#   0.5 (< 1 − ε), 0.9 (inside), 1.25 (between 1 + 0.2 and 1 + 0.28), 1.5 (> 1 + 0.28); then padding
PPO_RATIOS = [0.5, 0.9, 1.25, 1.5]
PPO_MASK = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]], dtype=np.float64)
PPO_OLD = np.array([[-1.0, -2.0, -0.5, -1.5, 0.0], [-0.8, -1.3, -2.2, -0.4, 0.0]])
PPO_LOGP = PPO_OLD + np.array([[math.log(r) for r in PPO_RATIOS] + [0.0]] * 2)
PPO_ADV = np.array([[1.5, 1.5, 1.5, 1.5, 0.0], [-2.0, -2.0, -2.0, -2.0, 0.0]])


def ref_ppo_token(rho, a, lo, hi):
    """(loss, d loss / d rho, clipped?) of max(−ρA, −clip(ρ, 1−lo, 1+hi)·A) for one token."""
    unclipped = -rho * a
    clipped = -min(max(rho, 1 - lo), 1 + hi) * a
    if clipped > unclipped:
        return clipped, 0.0, True
    return unclipped, -a, False


def ppo_inputs():
    return (with_garbage(PPO_LOGP, PPO_MASK), with_garbage(PPO_OLD, PPO_MASK, values=(-INF, INF)),
            with_garbage(PPO_ADV, PPO_MASK, values=(NAN, INF)))


@pytest.mark.parametrize("hi", [0.2, 0.28])
def test_ppo_clip_values_grads_and_clipfrac(hi):
    hp = {"clip_eps": 0.2, "clip_eps_high": hi}
    logp, old, adv = ppo_inputs()
    loss, m = pg(logp, old, adv, PPO_MASK, hp, ratio="token", clip="ppo")
    g = pg_grad(logp, old, adv, PPO_MASK, hp, ratio="token", clip="ppo")
    losses, grads, clipped = [], np.zeros_like(PPO_ADV), 0
    for i in range(2):
        for t, rho in enumerate(PPO_RATIOS):
            l, dl_drho, c = ref_ppo_token(rho, PPO_ADV[i, t], 0.2, hi)
            losses.append(l)
            grads[i, t] = dl_drho * rho / 8  # d rho / d logp = rho; token_mean over 8 tokens
            clipped += c
    np.testing.assert_allclose(loss, sum(losses) / 8, **TOL)
    np.testing.assert_allclose(g, grads, **TOL)
    np.testing.assert_allclose(m["policy/clipfrac"], clipped / 8, **TOL)


def test_ppo_clip_symmetric_hand_table():
    hp = {"clip_eps": 0.2}  # ε_high defaults to ε_low
    logp, old, adv = ppo_inputs()
    loss, m = pg(logp, old, adv, PPO_MASK, hp, clip="ppo")
    # A = +1.5: ρ 0.5 -> −0.75; 0.9 -> −1.35; 1.25 -> −1.8 (clip 1.2); 1.5 -> −1.8 (clip)
    # A = −2:   ρ 0.5 -> 1.6 (clip 0.8); 0.9 -> 1.8; 1.25 -> 2.5; 1.5 -> 3.0
    per = [-0.75, -1.35, -1.8, -1.8, 1.6, 1.8, 2.5, 3.0]
    np.testing.assert_allclose(loss, sum(per) / 8, **TOL)
    np.testing.assert_allclose(m["policy/clipfrac"], 3 / 8, **TOL)
    g = pg_grad(logp, old, adv, PPO_MASK, hp, clip="ppo")
    # unclipped: −A·ρ/8
    np.testing.assert_allclose(g, [[-0.75 / 8, -1.35 / 8, 0, 0, 0],
                                   [0, 1.8 / 8, 2.5 / 8, 3.0 / 8, 0]], **TOL)


def test_ppo_clip_higher_hand_table():
    hp = {"clip_eps": 0.2, "clip_eps_high": 0.28}
    logp, old, adv = ppo_inputs()
    loss, m = pg(logp, old, adv, PPO_MASK, hp, clip="ppo")
    # A = +1.5: ρ 1.25 is now inside (−1.875, gradient kept); 1.5 -> −1.92 (clip 1.28)
    # A = −2:   unchanged (the lower bound is still 0.8)
    per = [-0.75, -1.35, -1.875, -1.92, 1.6, 1.8, 2.5, 3.0]
    np.testing.assert_allclose(loss, sum(per) / 8, **TOL)
    np.testing.assert_allclose(m["policy/clipfrac"], 2 / 8, **TOL)
    g = pg_grad(logp, old, adv, PPO_MASK, hp, clip="ppo")
    np.testing.assert_allclose(g, [[-0.75 / 8, -1.35 / 8, -1.875 / 8, 0, 0],
                                   [0, 1.8 / 8, 2.5 / 8, 3.0 / 8, 0]], **TOL)


def test_ppo_clip_hyperparameters_can_be_traced():
    logp, old, adv = ppo_inputs()

    def f(hi):
        return pg(logp, old, adv, PPO_MASK, {"clip_eps": jnp.float32(0.2), "clip_eps_high": hi},
                  clip="ppo")[1]["policy/clipfrac"]

    out = jax.jit(jax.vmap(f))(jnp.array([0.2, 0.28, 1.0]))
    np.testing.assert_allclose(out, [3 / 8, 2 / 8, 1 / 8], **TOL)


# --- dual clip ---------------------------------------------------------------------------------------


def test_dual_clip_caps_negative_advantage_loss():
    c = 3.0
    hp = {"clip_eps": 0.2, "dual_clip_c": c}
    ratios = [4.0, 2.0, 0.5, 4.0, 0.9]
    a = np.array([[-1.5, -1.5, -1.5, 2.0, 2.0, 0.0]])
    mask = np.array([[1, 1, 1, 1, 1, 0]], dtype=np.float64)
    old = np.array([[-1.0, -0.5, -2.0, -3.0, -1.2, 0.0]])
    logp = with_garbage(old + np.array([[math.log(r) for r in ratios] + [0.0]]), mask)
    old_g, a_g = with_garbage(old, mask), with_garbage(a, mask)
    loss, m = pg(logp, old_g, a_g, mask, hp, clip="dual")
    #  ρ=4,  A=−1.5: ppo 6.0, capped at −c·A = 4.5 (no gradient)
    #  ρ=2,  A=−1.5: 3.0 < 4.5, same as ppo (gradient −A·ρ = 3.0)
    #  ρ=0.5,A=−1.5: ppo clip: max(0.75, 1.2) = 1.2 (no gradient)
    #  ρ=4,  A=+2:   ppo clip: −2.4 (A > 0 unaffected by the dual clip)
    #  ρ=0.9,A=+2:   −1.8 (gradient −1.8)
    per = [4.5, 3.0, 1.2, -2.4, -1.8]
    np.testing.assert_allclose(loss, sum(per) / 5, **TOL)
    np.testing.assert_allclose(m["policy/clipfrac"], 3 / 5, **TOL)
    g = pg_grad(logp, old_g, a_g, mask, hp, clip="dual")
    np.testing.assert_allclose(g, [[0.0, 3.0 / 5, 0.0, 0.0, -1.8 / 5, 0.0]], **TOL)
    # plain ppo differs only on the first token (6.0 instead of 4.5, gradient 6.0/5)
    loss_ppo, m_ppo = pg(logp, old_g, a_g, mask, hp, clip="ppo")
    np.testing.assert_allclose(loss_ppo, (6.0 + 3.0 + 1.2 - 2.4 - 1.8) / 5, **TOL)
    np.testing.assert_allclose(m_ppo["policy/clipfrac"], 2 / 5, **TOL)
    g_ppo = pg_grad(logp, old_g, a_g, mask, hp, clip="ppo")
    np.testing.assert_allclose(g_ppo, [[6.0 / 5, 3.0 / 5, 0.0, 0.0, -1.8 / 5, 0.0]], **TOL)


# --- CISPO -------------------------------------------------------------------------------------------


def test_cispo_keeps_gradient_of_every_token():
    hp = {"clip_eps": 0.2, "clip_eps_high": 0.28}
    ratios = [0.5, 1.0, 1.25, 1.5, 2.0, 1.5]
    a = np.array([[1.0, -0.5, 2.0, 1.5, -1.0, -2.0, 0.0]])
    mask = np.array([[1, 1, 1, 1, 1, 1, 0]], dtype=np.float64)
    old = np.array([[-1.0, -0.5, -2.0, -3.0, -1.2, -0.7, 0.0]])
    delta = np.array([[math.log(r) for r in ratios] + [0.0]])
    logp = old + delta
    logp_g, old_g, a_g = with_garbage(logp, mask), with_garbage(old, mask), with_garbage(a, mask)
    loss, m = pg(logp_g, old_g, a_g, mask, hp, clip="cispo")
    w = [min(r, 1.28) for r in ratios]
    per = [-w[t] * a[0, t] * logp[0, t] for t in range(6)]
    np.testing.assert_allclose(loss, sum(per) / 6, **TOL)
    np.testing.assert_allclose(m["policy/clipfrac"], 3 / 6, **TOL)  # ρ = 1.5, 2.0, 1.5 capped
    g = pg_grad(logp_g, old_g, a_g, mask, hp, clip="cispo")
    want = [[-w[t] * a[0, t] / 6 for t in range(6)] + [0.0]]
    np.testing.assert_allclose(g, want, **TOL)
    assert np.all(g[0, :6] != 0)
    # PPO (clip-higher) has no gradient on the token with ρ = 1.5 > 1.28 and A > 0 (index 3),
    # CISPO does
    g_ppo = pg_grad(logp_g, old_g, a_g, mask, hp, clip="ppo")
    assert g_ppo[0, 3] == 0.0
    np.testing.assert_allclose(g[0, 3], -1.28 * 1.5 / 6, **TOL)


# --- unclipped importance-weighted loss ----------------------------------------------------------------


def test_token_ratio_no_clip_values_and_grads():
    hp = {"clip_eps": 0.2}
    logp = with_garbage(RAG_LOGP, RAG_MASK)
    old = with_garbage(RAG_OLD, RAG_MASK, values=(INF,))
    adv = with_garbage(RAG_ADV, RAG_MASK)
    rho = np.exp(RAG_DELTA)
    loss, m = pg(logp, old, adv, RAG_MASK, hp, ratio="token", clip="none",
                 aggregation="seq_mean_token_mean")
    np.testing.assert_allclose(loss, ref_aggregate(-RAG_ADV * rho, RAG_MASK,
                                                   "seq_mean_token_mean"), **TOL)
    g = pg_grad(logp, old, adv, RAG_MASK, hp, ratio="token", clip="none",
                aggregation="seq_mean_token_mean")
    np.testing.assert_allclose(g, -RAG_ADV * rho * ref_agg_weights(RAG_MASK,
                                                                  "seq_mean_token_mean"), **TOL)
    assert float(m["policy/clipfrac"]) == 0.0
    np.testing.assert_allclose(m["policy/ratio_mean"], (rho * RAG_MASK).sum() / 10, **TOL)
    np.testing.assert_allclose(m["policy/adv_mean"], (RAG_ADV * RAG_MASK).sum() / 10, **TOL)


# --- at ratio one --------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio,clip", list(itertools.product(["token", "sequence", "none"],
                                                              ["ppo", "dual", "cispo", "none"])))
def test_on_policy_metrics_for_every_combination(ratio, clip):
    hp = {"clip_eps": 0.2, "clip_eps_high": 0.28, "dual_clip_c": 3.0}
    logp = with_garbage(RAG_OLD, RAG_MASK)
    old = with_garbage(RAG_OLD, RAG_MASK, values=(INF, NAN))
    adv = with_garbage(RAG_ADV, RAG_MASK)
    loss, m = pg(logp, old, adv, RAG_MASK, hp, ratio=ratio, clip=clip)
    np.testing.assert_allclose(m["policy/ratio_mean"], 1.0, **TOL)
    assert float(m["policy/approxkl"]) == 0.0
    assert float(m["policy/clipfrac"]) == 0.0
    # at ρ = 1 every clip mode reduces to −A (times logp for cispo and for the score function)
    if ratio == "none" or clip == "cispo":
        per = -RAG_ADV * RAG_OLD
    else:
        per = -RAG_ADV
    np.testing.assert_allclose(loss, ref_aggregate(per, RAG_MASK, "token_mean"), **TOL)
    g = pg_grad(logp, old, adv, RAG_MASK, hp, ratio=ratio, clip=clip)
    assert np.all(np.isfinite(g))


# --- KL loss term --------------------------------------------------------------------------------------


def ref_kl(delta, est):
    """(k, d k / d logp) per token with Δ = logp − ref."""
    if est == "k1":
        return delta, np.ones_like(delta)
    if est == "k2":
        return 0.5 * delta ** 2, delta
    if est == "k3":
        return np.exp(-delta) - 1.0 + delta, 1.0 - np.exp(-delta)
    raise ValueError(est)


@pytest.mark.parametrize("est", ["k1", "k2", "k3"])
@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_kl_loss_term_values_and_gradients(est, mode):
    ref = RAG_OLD
    delta = np.array([[0.5, -0.3, 0.05, 1.2, -0.8],
                      [-1.0, 0.25, 0.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0, 0.0],
                      [0.7, -0.45, 0.1, 0.0, 0.0]])
    logp = with_garbage(ref + delta, RAG_MASK)
    ref_g = with_garbage(ref, RAG_MASK, values=(-INF, NAN))
    k, dk = ref_kl(delta, est)
    got = kl_loss_term(f32(logp), f32(ref_g), f32(RAG_MASK), est, mode)
    np.testing.assert_allclose(got, ref_aggregate(k, RAG_MASK, mode), **TOL)
    g = np.asarray(jax.grad(lambda lp: kl_loss_term(lp, f32(ref_g), f32(RAG_MASK), est, mode))(
        f32(logp)))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, dk * ref_agg_weights(RAG_MASK, mode), **TOL)


def test_kl_loss_term_hand_values_and_default_is_k3():
    logp = jnp.array([[0.0, math.log(2.0), NAN]])
    ref = jnp.array([[0.0, 0.0, 5.0]])
    mask = jnp.array([[1, 1, 0]])
    # Δ = [0, ln 2]: k3 = e^{−Δ} − 1 + Δ = [0, ln 2 − 0.5]; mean over 2 tokens
    np.testing.assert_allclose(kl_loss_term(logp, ref, mask), (math.log(2) - 0.5) / 2, **TOL)
    np.testing.assert_allclose(kl_loss_term(logp, ref, mask, "k1"), math.log(2) / 2, **TOL)
    np.testing.assert_allclose(kl_loss_term(logp, ref, mask, "k2"), 0.25 * math.log(2) ** 2,
                               **TOL)
    g = jax.grad(lambda lp: kl_loss_term(lp, ref, mask))(logp)
    np.testing.assert_allclose(g, [[0.0, 0.25, 0.0]], **TOL)  # (1 − 1/2)/2 on token 2
    # ref_logp is a constant
    g_ref = jax.grad(lambda r: kl_loss_term(logp, r, mask))(ref)
    np.testing.assert_array_equal(g_ref, np.zeros((1, 3)))
