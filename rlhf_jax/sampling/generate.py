"""Autoregressive sampling with a preallocated KV cache inside ``lax.while_loop``.

Prefill runs the left-padded prompts once; each decode step feeds one token per row, writes its
K/V at the shared cache index, and stores the token, its mask and its logprob into fixed-size
buffers (no concatenation, so no recompiles). Rows stop at their first EOS; the loop exits early
when every row is done. The cache grows in up to ``MAX_SEGMENTS`` steps: decoding runs as that many
consecutive loops, each with a cache just long enough for its last step, so a step's attention reads
about as many slots as there are tokens so far rather than the whole final buffer (one compiled
loop body per segment, fixed by the shapes, so nothing recompiles across calls). The returned
logprob of a token is ``log_softmax(logits / T)[token]``, the temperature-scaled distribution it
was drawn from (T = 1 for greedy), exactly what PPO's ratio and KL need (RLHF_NOTES: recomputing
without the temperature inflates KL).
"""

from __future__ import annotations

import abc
import functools

import flax
import jax
import jax.numpy as jnp

from rlhf_jax.models import forward, init_cache
from rlhf_jax.models.config import TransformerConfig
from rlhf_jax.models.kv_cache import grow_cache
from rlhf_jax.models.layout import for_decoding
from rlhf_jax.sampling import strategies

MAX_SEGMENTS = 4
MIN_SEGMENT = 32  # decode steps; short generations run as one loop (less to compile)


def decode_segments(max_new_tokens: int) -> list[int]:
    """The decode steps at which each segment ends (the last is ``max_new_tokens``)."""
    n = max(1, min(MAX_SEGMENTS, max_new_tokens // MIN_SEGMENT))
    return [max_new_tokens * (i + 1) // n for i in range(n)]


@flax.struct.dataclass
class SampleOutput:
    tokens: jax.Array          # [B, N] new tokens (pad_id after a row's EOS)
    mask: jax.Array            # [B, N] 1 up to and including the first EOS
    logprobs: jax.Array        # [B, N] temperature-scaled logprob of each token (0 where masked)
    sequences: jax.Array       # [B, P + N] prompt followed by new tokens
    sequence_mask: jax.Array   # [B, P + N] prompt mask followed by ``mask``
    num_steps: jax.Array       # decode steps actually run


class LogitsProcessor(abc.ABC):
    """A hook on the sampler's next-token logits, run inside its jitted loop (e.g. NLPO's top-p
    mask from a masking policy, ILQL's β·(Q − V) shift). A processor is static (hashable: a frozen
    dataclass); its arrays come in as ``params`` (traced, so changing them never recompiles) and
    it may carry its own state through the loop (e.g. a second model's KV cache).

    ``init(params, prompt_ids, prompt_mask, cache_len) -> state`` after the prompt's prefill;
    ``grow(state, cache_len) -> state`` when the policy's cache grows; ``process(params, state,
    logits, hidden) -> logits`` for the policy's raw logits ``[B, V]`` and final hidden state
    ``[B, D]`` at the current position, before temperature and sampling; ``advance(params, state,
    tokens) -> state`` once the step's tokens ``[B]`` are drawn.
    """

    def init(self, params, prompt_ids, prompt_mask, cache_len):
        return None

    def grow(self, state, cache_len):
        return state

    @abc.abstractmethod
    def process(self, params, state, logits, hidden):
        """The step's logits ``[B, V]`` as the policy samples them."""

    def advance(self, params, state, tokens):
        return state


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "top_k", "is_greedy", "processor"))
def _generate(cfg, params, prompt_ids, prompt_mask, rng, temperature, top_p, eos_id, pad_id,
              processor_params, *, max_new_tokens, top_k, is_greedy, processor):
    B, P = prompt_ids.shape
    N = max_new_tokens
    pick = strategies.greedy if is_greedy else strategies.sample
    temperature = jnp.asarray(temperature, jnp.float32)

    ends = decode_segments(N)
    # Decode step i writes cache slot P + i, so the steps before ``end`` need P + end slots.
    cache = init_cache(cfg, B, P + ends[0])
    logits, hidden, cache = forward(cfg, params, prompt_ids, prompt_mask, cache, last_only=True)
    last, last_h = logits[:, -1], hidden[:, -1]
    pstate = None if processor is None else processor.init(processor_params, prompt_ids, prompt_mask,
                                                           P + ends[0])
    # The prefill scans the stacked layers (models.layout); the decode steps take the layers' weights
    # one array per layer, made once here: sliced from the stack inside the loop, they would be
    # copied in every step.
    params, processor_params = for_decoding(params), for_decoding(processor_params)

    def cond(state, end):
        return (state["step"] < end) & ~jnp.all(state["done"])

    def body(state):
        step, cache, last, done = state["step"], state["cache"], state["last"], state["done"]
        rng, sub = jax.random.split(state["rng"])
        if processor is not None:
            last = processor.process(processor_params, state["pstate"], last, state["last_h"])
        tok = pick(sub, last, temperature, top_k, top_p)
        # log_softmax(scaled)[tok] without writing the whole [B, V] log_softmax out (T = 1 when greedy).
        scaled = last if is_greedy else strategies.scale_temperature(last, temperature)
        lp = jnp.take_along_axis(scaled, tok[:, None], axis=-1)[:, 0] - jax.nn.logsumexp(scaled, axis=-1)
        alive = ~done
        tok = jnp.where(alive, tok, pad_id)
        new = dict(state, step=step + 1, rng=rng,
                   toks=state["toks"].at[:, step].set(tok),
                   mask=state["mask"].at[:, step].set(alive.astype(jnp.int32)),
                   lps=state["lps"].at[:, step].set(jnp.where(alive, lp, 0.0)),
                   done=done | (alive & (tok == eos_id)))
        logits, hidden, new["cache"] = forward(cfg, params, tok[:, None], jnp.ones((B, 1), jnp.int32), cache)
        new["last"], new["last_h"] = logits[:, 0], hidden[:, 0]
        if processor is not None:
            new["pstate"] = processor.advance(processor_params, state["pstate"], tok)
        return new

    state = {"step": jnp.int32(0), "cache": cache, "last": last, "last_h": last_h,
             "toks": jnp.full((B, N), pad_id, jnp.int32), "mask": jnp.zeros((B, N), jnp.int32),
             "lps": jnp.zeros((B, N), jnp.float32), "done": jnp.zeros((B,), bool), "rng": rng,
             "pstate": pstate}
    for i, end in enumerate(ends):
        if i:
            state["cache"] = grow_cache(state["cache"], P + end)
            if processor is not None:
                state["pstate"] = processor.grow(state["pstate"], P + end)
        state = jax.lax.while_loop(functools.partial(cond, end=end), body, state)
    toks, mask = state["toks"], state["mask"]
    return SampleOutput(
        tokens=toks, mask=mask, logprobs=state["lps"],
        sequences=jnp.concatenate([prompt_ids.astype(jnp.int32), toks], axis=1),
        sequence_mask=jnp.concatenate([prompt_mask.astype(jnp.int32), mask], axis=1),
        num_steps=state["step"])


def generate(cfg: TransformerConfig, params, prompt_ids, prompt_mask, *, rng, max_new_tokens: int,
             temperature=1.0, top_k: int = 0, top_p=1.0, eos_id=None, pad_id: int = 0,
             processor: LogitsProcessor | None = None, processor_params=None) -> SampleOutput:
    """Sample ``max_new_tokens`` continuations of left-padded prompts.

    ``temperature=0`` (a Python number) is greedy decoding; otherwise ``temperature`` and ``top_p``
    may be arrays (no recompiles when they change). ``top_k`` (0 = off) and ``max_new_tokens`` are
    static. ``eos_id=None`` never stops early. Every prompt row must hold at least one token.
    ``processor`` (a :class:`LogitsProcessor`, with its ``processor_params``) rewrites each step's
    logits before sampling; the logprobs returned are those of the processed distribution.
    """
    is_greedy = isinstance(temperature, (int, float)) and temperature == 0
    eos = -1 if eos_id is None else eos_id
    return _generate(cfg, params, jnp.asarray(prompt_ids, jnp.int32), jnp.asarray(prompt_mask, jnp.int32),
                     rng, jnp.asarray(1.0 if is_greedy else temperature, jnp.float32),
                     jnp.asarray(top_p, jnp.float32), jnp.int32(eos), jnp.int32(pad_id), processor_params,
                     max_new_tokens=int(max_new_tokens), top_k=int(top_k), is_greedy=is_greedy,
                     processor=processor)
