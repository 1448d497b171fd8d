"""``generate``: cached decoding vs a full forward, logprobs, EOS masking, early exit, recompiles,
determinism, and greedy parity with ``transformers``' ``generate(do_sample=False)``.

Every test reconstructs what the sampler must have seen from its returned ``sequences``: one full
(uncached) forward over prompt + new tokens gives, at position ``P - 1 + j``, the logits the cached
decode loop used for new token ``j``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import forward, get_preset, init_params
from rlhf_jax.sampling import generate, strategies
from rlhf_jax.sampling.generate import _generate, decode_segments

P, N = 7, 8
PAD = [0, 2, 6]  # left padding per row; the last row holds a single real token
ATOL = 1e-5


def random_params(cfg, seed=0):
    """init_params' tree filled by numpy (kernels ~ N(0, .02^2), scales ~ 1 + N(0, .1^2), biases
    non-zero); avoids compiling the init RNG."""
    shapes = jax.eval_shape(lambda r: init_params(cfg, r), jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        x = rng.normal(0.0, 0.02, s.shape)
        return jnp.asarray(1.0 + 5 * x if "scale" in jax.tree_util.keystr(path) else x, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def prompts(vocab, seed=0, pad=PAD, length=P):
    ids = np.array(jax.random.randint(jax.random.PRNGKey(seed), (len(pad), length), 1, vocab))
    mask = np.ones_like(ids)
    for b, p in enumerate(pad):
        ids[b, :p], mask[b, :p] = 0, 0
    return jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)


@functools.cache
def _model(name):
    cfg = get_preset(name)
    params = random_params(cfg, seed=3)
    full = jax.jit(lambda p, ids, m: forward(cfg, p, ids, m)[0])
    return cfg, params, full


@pytest.fixture(scope="module", params=["tiny", "tiny-llama"])
def model(request):
    return _model(request.param)


@pytest.fixture(scope="module")
def llama():
    """tiny-llama only (GQA, RoPE): the family-independent sampler checks run once."""
    return _model("tiny-llama")


def _reference(full, params, out):
    """Full-forward logits [B, N, V] at the positions that predicted each new token."""
    lg = full(params, out.sequences, out.sequence_mask)
    return np.asarray(lg[:, P - 1:P - 1 + N])


def _gather(logp, tokens):
    return np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]


def test_greedy_equals_argmax_of_full_forward_and_logprobs_use_t1(model):
    cfg, params, full = model
    ids, mask = prompts(cfg.vocab_size)
    out = generate(cfg, params, ids, mask, rng=jax.random.PRNGKey(0), max_new_tokens=N,
                   temperature=0)
    assert out.tokens.shape == (3, N) and out.tokens.dtype == jnp.int32
    assert out.logprobs.dtype == jnp.float32 and out.mask.shape == (3, N)
    np.testing.assert_array_equal(out.sequences[:, :P], ids)
    np.testing.assert_array_equal(out.sequences[:, P:], out.tokens)
    np.testing.assert_array_equal(out.sequence_mask, np.concatenate([mask, out.mask], 1))
    np.testing.assert_array_equal(out.mask, 1)  # no eos: every token is real
    assert int(out.num_steps) == N

    ref = _reference(full, params, out)
    np.testing.assert_array_equal(out.tokens, ref.argmax(-1))
    logp = np.asarray(jax.nn.log_softmax(ref, -1))
    np.testing.assert_allclose(out.logprobs, _gather(logp, out.tokens), atol=ATOL, rtol=0)
    # Not vacuous: the rows decode different continuations.
    assert len({tuple(r) for r in np.asarray(out.tokens)}) > 1


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.3])
def test_sampled_logprobs_equal_temperature_scaled_full_forward(llama, temperature):
    cfg, params, full = llama
    ids, mask = prompts(cfg.vocab_size, seed=1)
    out = generate(cfg, params, ids, mask, rng=jax.random.PRNGKey(7), max_new_tokens=N,
                   temperature=temperature)
    ref = _reference(full, params, out)
    logp = np.asarray(jax.nn.log_softmax(ref / temperature, -1))
    np.testing.assert_allclose(out.logprobs, _gather(logp, out.tokens), atol=ATOL, rtol=0)
    if temperature != 1.0:  # the temperature really matters at this tolerance
        untempered = _gather(np.asarray(jax.nn.log_softmax(ref, -1)), out.tokens)
        assert np.abs(np.asarray(out.logprobs) - untempered).max() > 1e-3


def test_top_k_top_p_draw_from_filtered_but_report_unfiltered_logprobs(llama):
    cfg, params, full = llama
    k, p, t = 5, 0.6, 1.3
    ids, mask = prompts(cfg.vocab_size, seed=2)
    out = generate(cfg, params, ids, mask, rng=jax.random.PRNGKey(3), max_new_tokens=N,
                   temperature=t, top_k=k, top_p=p)
    ref = _reference(full, params, out) / t
    tokens = np.asarray(out.tokens)
    # Inside the k largest logits.
    kth = np.sort(ref, -1)[..., -k][..., None]
    assert (_gather(ref, tokens) >= _gather(kth, np.zeros_like(tokens))).all()
    # Inside the top-p nucleus of the top-k-renormalised distribution: the mass strictly above the
    # chosen token is < p.
    filt = np.where(ref >= kth, ref, -np.inf)
    q = np.asarray(jax.nn.softmax(filt, -1))
    above = np.where(q > _gather(q, tokens)[..., None], q, 0.0).sum(-1)
    assert (above < p + 1e-5).all()
    # The logprob is the unfiltered temperature-scaled one (what PPO recomputes).
    logp = np.asarray(jax.nn.log_softmax(ref, -1))
    np.testing.assert_allclose(out.logprobs, _gather(logp, tokens), atol=ATOL, rtol=0)


def test_decode_segments():
    assert decode_segments(1) == [1] and decode_segments(63) == [63]
    assert decode_segments(64) == [32, 64]
    assert decode_segments(120) == [40, 80, 120]
    assert decode_segments(1000) == [250, 500, 750, 1000]


LONG_N = 120  # nearly the whole position range of the tiny presets; three cache sizes


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_long_decode_equals_full_forward(llama, temperature):
    """Over a long generation (the cache grown twice, finally to 127 of 128 slots) tokens and
    logprobs still match a full forward over the returned sequences."""
    assert len(decode_segments(LONG_N)) == 3
    cfg, params, full = llama
    ids, mask = prompts(cfg.vocab_size, seed=8)
    out = generate(cfg, params, ids, mask, rng=jax.random.PRNGKey(11), max_new_tokens=LONG_N,
                   temperature=temperature)
    assert int(out.num_steps) == LONG_N
    ref = np.asarray(full(params, out.sequences, out.sequence_mask)[:, P - 1:P - 1 + LONG_N])
    logp = np.asarray(jax.nn.log_softmax(ref, -1))
    if temperature == 0:
        np.testing.assert_array_equal(out.tokens, ref.argmax(-1))
    np.testing.assert_allclose(out.logprobs, _gather(logp, out.tokens), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------- EOS and early exit

EOS_CFG = get_preset("tiny-llama", vocab_size=6)  # a tiny vocabulary so EOS comes up quickly
EOS_ID, PAD_ID, EOS_N = 3, 5, 16


@pytest.fixture(scope="module")
def eos_model():
    return EOS_CFG, random_params(EOS_CFG, seed=4)


def _first_eos(tokens):
    hit = np.asarray(tokens) == EOS_ID
    return np.where(hit.any(1), hit.argmax(1), -1)


def test_eos_mask_pad_and_early_exit(eos_model):
    cfg, params = eos_model
    ids, mask = prompts(cfg.vocab_size, seed=5, pad=[0, 3, 1, 6])
    kw = dict(max_new_tokens=EOS_N, temperature=1.0, pad_id=PAD_ID)
    # The same rng with and without EOS: rows draw the same tokens up to their first EOS.
    rng = next(jax.random.PRNGKey(s) for s in range(50) if (_first_eos(generate(
        cfg, params, ids, mask, rng=jax.random.PRNGKey(s), **kw).tokens) >= 0).all())
    free = generate(cfg, params, ids, mask, rng=rng, **kw)
    out = generate(cfg, params, ids, mask, rng=rng, eos_id=EOS_ID, **kw)
    first = _first_eos(free.tokens)
    assert (first >= 0).all() and len(set(first)) > 1, first  # every row stops, not all at once
    toks, m, lps = np.asarray(out.tokens), np.asarray(out.mask), np.asarray(out.logprobs)
    for b, f in enumerate(first):
        np.testing.assert_array_equal(toks[b, :f + 1], np.asarray(free.tokens)[b, :f + 1])
        assert toks[b, f] == EOS_ID
        np.testing.assert_array_equal(m[b, :f + 1], 1)  # up to and including the first EOS
        np.testing.assert_array_equal(m[b, f + 1:], 0)
        np.testing.assert_array_equal(toks[b, f + 1:], PAD_ID)
        np.testing.assert_array_equal(lps[b, f + 1:], 0.0)
        np.testing.assert_allclose(lps[b, :f + 1], np.asarray(free.logprobs)[b, :f + 1], atol=ATOL)
    # Early exit: the loop stops once every row is done.
    assert int(out.num_steps) == first.max() + 1 < EOS_N
    assert int(free.num_steps) == EOS_N
    np.testing.assert_array_equal(out.sequence_mask[:, P:], m)


def test_early_exit_skips_later_segments(eos_model):
    cfg, params = eos_model
    ids, mask = prompts(cfg.vocab_size, seed=5, pad=[0, 3, 1, 6])
    n = 96  # segments end at 32, 64, 96; every row meets EOS within the first
    assert decode_segments(n) == [32, 64, 96]
    out = generate(cfg, params, ids, mask, rng=jax.random.PRNGKey(1), max_new_tokens=n,
                   temperature=1.0, pad_id=PAD_ID, eos_id=EOS_ID)
    first = _first_eos(out.tokens)
    assert (first >= 0).all() and first.max() < 32, first
    assert int(out.num_steps) == first.max() + 1
    np.testing.assert_array_equal(np.asarray(out.tokens)[:, first.max() + 1:], PAD_ID)
    np.testing.assert_array_equal(np.asarray(out.mask).sum(1), first + 1)


def test_rows_without_eos_keep_full_mask(eos_model):
    cfg, params = eos_model
    ids, mask = prompts(cfg.vocab_size, seed=6, pad=[0, 3, 1, 6])
    out = generate(cfg, params, ids, mask, rng=jax.random.PRNGKey(0), max_new_tokens=EOS_N,
                   temperature=1.0, pad_id=PAD_ID, eos_id=cfg.vocab_size + 10)  # never sampled
    np.testing.assert_array_equal(out.mask, 1)
    assert int(out.num_steps) == EOS_N


def test_no_recompile_across_rngs_temperatures_top_p_and_determinism(eos_model, monkeypatch):
    cfg, params = eos_model
    ids, mask = prompts(cfg.vocab_size, seed=7, pad=[0, 3, 1, 6])
    traces = []
    sample = strategies.sample
    monkeypatch.setattr(strategies, "sample", lambda *a, **k: traces.append(1) or sample(*a, **k))

    def run(seed, **kw):
        return generate(cfg, params, ids, mask, rng=jax.random.PRNGKey(seed), max_new_tokens=EOS_N,
                        pad_id=PAD_ID, **kw)

    first = run(0, temperature=1.0, top_p=1.0)
    size = _generate._cache_size()
    outs = [run(0, temperature=1.0, top_p=1.0), run(1, temperature=0.7, top_p=0.9),
            run(2, temperature=jnp.float32(1.3), top_p=jnp.float32(0.5)), run(3, temperature=2.0),
            run(4, temperature=1.0, eos_id=EOS_ID), run(5, temperature=1.0, eos_id=2)]
    assert _generate._cache_size() == size, "generate recompiled for new rng/temperature/top_p/eos"
    assert len(traces) <= 1  # traced at most once (zero if an earlier test compiled it)
    # Determinism: the same rng gives the same tokens and logprobs; a different one does not.
    np.testing.assert_array_equal(outs[0].tokens, first.tokens)
    np.testing.assert_array_equal(outs[0].logprobs, first.logprobs)
    assert not np.array_equal(outs[1].tokens, first.tokens)
    # New-style typed keys work as well.
    a = generate(cfg, params, ids, mask, rng=jax.random.key(9), max_new_tokens=EOS_N, pad_id=PAD_ID)
    b = generate(cfg, params, ids, mask, rng=jax.random.key(9), max_new_tokens=EOS_N, pad_id=PAD_ID)
    np.testing.assert_array_equal(a.tokens, b.tokens)


# ----------------------------------------------------------------------------- transformers parity

HF_VOCAB, HF_N = 97, 10


def _hf_model(kind, path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if kind == "gpt2":
        conf = transformers.GPT2Config(vocab_size=HF_VOCAB, n_embd=64, n_head=4, n_layer=2,
                                       n_positions=32, attn_implementation="eager")
        model = transformers.GPT2LMHeadModel(conf)
    else:
        conf = transformers.LlamaConfig(
            vocab_size=HF_VOCAB, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=2, intermediate_size=96, max_position_embeddings=32,
            attn_implementation="eager")
        model = transformers.LlamaForCausalLM(conf)
    model.eval()
    with torch.no_grad():  # perturb every tensor (norms, biases) so nothing sits at its init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)  # safetensors (the only format transformers v5 writes)
    assert (path / "model.safetensors").exists()
    return model


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_greedy_matches_transformers_generate(kind, tmp_path):
    torch = pytest.importorskip("torch")
    from rlhf_jax.hf import load_pretrained

    hf = _hf_model(kind, tmp_path)
    cfg, params = load_pretrained(tmp_path)
    ids, mask = prompts(HF_VOCAB, seed=8)
    with torch.no_grad():
        ref = hf.generate(input_ids=torch.tensor(np.asarray(ids), dtype=torch.long),
                          attention_mask=torch.tensor(np.asarray(mask), dtype=torch.long),
                          max_new_tokens=HF_N, min_new_tokens=HF_N, do_sample=False,
                          eos_token_id=None, pad_token_id=0)
    ref = ref.numpy()[:, P:]
    assert ref.shape == (3, HF_N)
    out = generate(cfg, params, ids, mask, rng=jax.random.PRNGKey(0), max_new_tokens=HF_N,
                   temperature=0)
    np.testing.assert_array_equal(out.tokens, ref)
