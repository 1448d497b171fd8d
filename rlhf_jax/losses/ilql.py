"""ILQL, implicit language Q-learning (Snell et al. 2022): offline RL on logged responses.

Token-level heads on the LM's hidden state h_t of state s_t (the prefix before response token
a_t): twin Q heads Q_1, Q_2 (one value per vocabulary token), a V head, and target Q heads Q̂_i
(Polyak averages of the Q heads). A response of T tokens with reward R has r_t = R at its last
token and 0 before, and ends there (terminal):

    target        y_t = r_t + γ·V(s_{t+1})·(1 − done_t)                      (V detached)
    Q loss        L_Q = Σ_i mean_t (Q_i(s_t, a_t) − y_t)²
    V loss        L_V = mean_t |τ − 1[u_t < 0]|·u_t²,  u_t = min_i Q̂_i(s_t, a_t) − V(s_t)
                  (expectile regression: τ > ½ pushes V toward the upper expectile of Q̂)
    CQL term      L_CQL = Σ_i mean_t [logsumexp_a Q_i(s_t, a) − Q_i(s_t, a_t)]
                  (pushes Q down on every token that was not taken)
    AWAC / BC     L_LM = mean_t −log π(a_t | s_t)  (keeps the LM head on the data)

    L = L_Q + L_V + cql_coef·L_CQL + awac_coef·L_LM

At generation the policy's logits become log π(·|s) + β·(min_i Q̂_i(s, ·) − V(s)).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rlhf_jax.losses.common import masked_mean

Array = jax.Array


def expectile_loss(diff: Array, mask: Array, tau) -> Array:
    """mean over valid t of |τ − 1[diff < 0]|·diff²."""
    w = jnp.where(diff < 0, 1.0 - tau, tau)
    return masked_mean(w * jnp.square(diff), mask)


def cql_loss(q_all: Array, actions: Array, mask: Array) -> Array:
    """mean over valid t of logsumexp_a Q(s_t, a) − Q(s_t, a_t) (cross-entropy of softmax(Q))."""
    taken = jnp.take_along_axis(q_all, actions[..., None].astype(jnp.int32), -1)[..., 0]
    return masked_mean(jax.nn.logsumexp(q_all, -1) - taken, mask)


def terminal_rewards(rewards: Array, mask: Array) -> Array:
    """``[B, T]``: each row's reward at its last valid token, 0 elsewhere."""
    m = mask.astype(jnp.float32)
    last = m * (1.0 - jnp.concatenate([m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1))
    return last * rewards[:, None]


def ilql_loss(q_all: tuple[Array, Array], target_q_all: tuple[Array, Array], v: Array,
              lm_logprobs: Array, actions: Array, mask: Array, rewards: Array, hp: dict):
    """The ILQL objective of one batch of logged responses. Returns ``(loss, metrics)``.

    ``q_all``: the twin Q heads' ``[B, T, V]`` values; ``target_q_all`` the target heads' (treated
    as constants); ``v`` ``[B, T]``; ``lm_logprobs`` ``[B, T]`` the LM's log π(a_t|s_t);
    ``actions``/``mask`` ``[B, T]``; ``rewards`` ``[B]``. ``hp``: gamma, tau, cql_coef, awac_coef.
    """
    m = mask.astype(jnp.float32)
    r = terminal_rewards(rewards, m)
    v_next = jnp.concatenate([v[:, 1:], jnp.zeros_like(v[:, :1])], axis=1) * jnp.concatenate(
        [m[:, 1:], jnp.zeros_like(m[:, :1])], axis=1)  # 0 after the last token (terminal)
    y = jax.lax.stop_gradient(r + hp["gamma"] * v_next)
    take = lambda q: jnp.take_along_axis(q, actions[..., None].astype(jnp.int32), -1)[..., 0]  # noqa: E731
    qs = [take(q) for q in q_all]
    tq = jax.lax.stop_gradient(jnp.minimum(*[take(q) for q in target_q_all]))
    loss_q = sum(masked_mean(jnp.square(q - y), m) for q in qs)
    loss_v = expectile_loss(tq - v, m, hp["tau"])
    loss_cql = sum(cql_loss(q, actions, m) for q in q_all)
    loss_lm = -masked_mean(lm_logprobs, m)
    loss = loss_q + loss_v + hp["cql_coef"] * loss_cql + hp["awac_coef"] * loss_lm
    metrics = {"loss/ilql": loss, "loss/q": loss_q, "loss/v": loss_v, "loss/cql": loss_cql,
               "loss/awac": loss_lm, "ilql/q_mean": masked_mean(qs[0], m), "ilql/v_mean": masked_mean(v, m),
               "ilql/target_q_mean": masked_mean(tq, m), "ilql/advantage_mean": masked_mean(tq - v, m),
               "ilql/reward_mean": jnp.mean(rewards)}
    return loss, jax.lax.stop_gradient(metrics)


def shifted_logits(logits: Array, target_q_all: tuple[Array, Array], v: Array, beta) -> Array:
    """log π(·|s) + β·(min_i Q̂_i(s, ·) − V(s)): ``logits`` ``[..., V]``, ``v`` ``[...]``."""
    adv = jnp.minimum(*target_q_all) - v[..., None]
    return jax.nn.log_softmax(logits.astype(jnp.float32), -1) + beta * adv
