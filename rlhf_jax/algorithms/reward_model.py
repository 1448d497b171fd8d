"""Reward model: the LM backbone plus a last-token scalar head, trained with Bradley–Terry.

Parameters: ``{'backbone': {'params': ...}, 'head': {'kernel', 'bias'}}``. A batch holds ``K``
responses per prompt, one forward each: ``input_ids [B, K, L]``; pairs (K=2) carry soft targets
``mu`` (½ = tie, Christiano et al. 2017), rankings (K>2) an ``order`` best→worst expanded to all
K(K−1)/2 pairs weighted 1/C(K,2) (InstructGPT).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.losses.reward import bradley_terry_loss, fit_normalization, kway_bradley_terry_loss
from rlhf_jax.models import forward, init_reward_head, last_token_scalar
from rlhf_jax.models.config import TransformerConfig


def init_reward_model(cfg: TransformerConfig, backbone_params, rng) -> dict:
    return {"backbone": backbone_params, "head": init_reward_head(rng, cfg.d_model)}


def rm_scores(cfg: TransformerConfig, rm_params, input_ids, attention_mask):
    """Raw reward ``[B]`` read at the last non-pad token."""
    _, hidden, _ = forward(cfg, rm_params["backbone"], input_ids, attention_mask)
    return last_token_scalar(rm_params["head"], hidden, attention_mask)


def make_rm_loss(cfg: TransformerConfig):
    """``loss_fn(params, batch, hparams)``; hparams: ``margin``, ``center_coef`` (arrays)."""

    def loss_fn(params, batch, hparams):
        ids, mask = batch["input_ids"], batch["attention_mask"]
        B, K, L = ids.shape
        r = rm_scores(cfg, params, ids.reshape(B * K, L), mask.reshape(B * K, L)).reshape(B, K)
        if K == 2:
            return bradley_terry_loss(r[:, 0], r[:, 1], batch["mu"], margin=hparams["margin"],
                                      center_coef=hparams["center_coef"])
        return kway_bradley_terry_loss(r, batch["order"], margin=hparams["margin"],
                                       center_coef=hparams["center_coef"])

    return loss_fn


@functools.partial(jax.jit, static_argnames=("cfg",))
def _scores_jit(cfg, params, ids, mask):
    return rm_scores(cfg, params, ids, mask)


def per_sequence_in_chunks(fn, ids: np.ndarray, mask: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``fn(ids, mask) -> [chunk]`` over many sequences ``[n, L]`` as a host loop over fixed-size
    chunks (the last padded with copies of its final row), so a jitted ``fn`` compiles once."""
    n = len(ids)
    out = np.zeros((n,), np.float32)
    for s in range(0, n, chunk):
        chunk_ids, chunk_mask = ids[s:s + chunk], mask[s:s + chunk]
        pad = chunk - len(chunk_ids)
        if pad:
            chunk_ids = np.concatenate([chunk_ids, np.repeat(chunk_ids[-1:], pad, 0)])
            chunk_mask = np.concatenate([chunk_mask, np.repeat(chunk_mask[-1:], pad, 0)])
        out[s:s + chunk] = np.asarray(fn(chunk_ids, chunk_mask))[: chunk - pad]
    return out


def score_in_batches(cfg, params, ids: np.ndarray, mask: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Raw RM scores of many sequences (fixed-size padded chunks: one compile)."""
    return per_sequence_in_chunks(lambda i, m: _scores_jit(cfg, params, i, m), ids, mask, batch_size)


def pairwise_accuracy(scores: np.ndarray, mu: np.ndarray) -> float:
    """Held-out accuracy over [N, 2] scores with targets mu, ties (mu = ½) excluded."""
    keep = mu != 0.5
    if not keep.any():
        return float("nan")
    pred = scores[keep, 0] > scores[keep, 1]
    return float(np.mean(pred == (mu[keep] == 1.0)))


def ranking_accuracy(scores: np.ndarray, order: np.ndarray) -> float:
    """Fraction of all ranked pairs (best→worst order) that the scores put the right way round."""
    correct, total = 0, 0
    k = order.shape[1]
    for i in range(k):
        for j in range(i + 1, k):
            a = np.take_along_axis(scores, order[:, i:i + 1], 1)[:, 0]
            b = np.take_along_axis(scores, order[:, j:j + 1], 1)[:, 0]
            correct += int(np.sum(a > b))
            total += len(a)
    return correct / max(total, 1)


def gold_order_accuracy(scores: np.ndarray, gold: np.ndarray, tie_eps: float = 0.0) -> float:
    """Fraction of the response pairs of each prompt (``[N, k]`` scores and gold rewards) that the
    scores order as the gold reward does, pairs whose gold rewards differ by at most ``tie_eps``
    left out: agreement with the noise-free preference, whose ceiling is 1 (the noisy labels'
    ceiling is the labelers' own accuracy)."""
    correct, total = 0, 0
    k = scores.shape[1]
    for i in range(k):
        for j in range(i + 1, k):
            dg = gold[:, i] - gold[:, j]
            keep = np.abs(dg) > tie_eps
            correct += int(np.sum((scores[keep, i] > scores[keep, j]) == (dg[keep] > 0)))
            total += int(np.sum(keep))
    return correct / total if total else float("nan")


def normalization(scores: np.ndarray, mode: str, reference_scores: np.ndarray | None = None):
    """(gain, bias) so that ``gain·r + bias`` is normalised (Ziegler 2019 / Stiennon 2020)."""
    if mode == "none":
        return 1.0, 0.0
    gain, bias = fit_normalization(jnp.asarray(scores), mode,
                                   None if reference_scores is None else jnp.asarray(reference_scores))
    return float(gain), float(bias)


def split_comparisons(data: dict, eval_fraction: float) -> tuple[dict, dict]:
    """Step 2's comparisons as (train, held out): the last ``eval_fraction`` of the prompts are held
    out (at least one); the reward model and the offline algorithms use the same split."""
    n = len(data["input_ids"])
    n_eval = max(1, int(round(eval_fraction * n)))
    return ({k: v[: n - n_eval] for k, v in data.items() if k != "gold"},
            {k: v[n - n_eval:] for k, v in data.items()})
