"""What every RL algorithm of the registry is made of, written once.

* :class:`RLSetup` — what steps 1–2 built (policy/RM configs and params, the encoded training
  prompts, pretraining texts for PPO-ptx), host side.
* :class:`RLState` — the pytree an algorithm carries between iterations (params + optimizer state,
  KL coefficient, RNG, a running baseline), checkpointed whole by Orbax.
* :class:`Algorithm` — a registry entry: its config section (the preset's defaults), its family
  (actor-critic or critic-free) and its paper.
* :func:`make_onpolicy_iteration` — sample → score → family's targets (GAE, group baselines, ...)
  → ``epochs × minibatches`` gradient steps → KL-controller update, as one jitted function
  ``iteration(state, frozen, batch, hparams) -> (state, metrics)`` that donates ``state``.
  ``frozen`` = ``{'ref', 'rm', 'norm'}`` (reference and reward-model params, RM normalisation) is
  passed in, never closed over, so it is not baked into the compiled program.
* :func:`make_policy_loss` — the house ``loss_fn(params, batch, hparams)``: the composable
  policy-gradient objective (``losses/pg.py``), entropy bonus, the KL loss term, an optional critic
  term and PPO-ptx.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms.kl_controller import KL_CONTROLLERS, KLState, init_kl_state
from rlhf_jax.algorithms.rollout import make_sampler, response_logits
from rlhf_jax.sampling.strategies import apply_action_mask
from rlhf_jax.algorithms.step import GUARD_KEY, nonfinite_code, run_epochs
from rlhf_jax.algorithms.train_state import TrainState, create_state
from rlhf_jax.data.encoding import batch_indices
from rlhf_jax.losses.common import entropy_from_logits, masked_mean, token_logprobs
from rlhf_jax.losses.pg import kl_loss_term, policy_gradient_loss
from rlhf_jax.losses.registry import Registry
from rlhf_jax.losses.sft import next_token_loss
from rlhf_jax.models import logits as lm_logits
from rlhf_jax.models.lora import apply_lora, init_lora, lora_variables
from rlhf_jax.sharding.jit import jit_step
from rlhf_jax.sharding.mesh import logical_table


@dataclasses.dataclass
class RLSetup:
    """Inputs of step 3, built by the pipeline (or by hand in tests and notebooks)."""
    model_cfg: Any                 # the policy's TransformerConfig
    rm_cfg: Any                    # the reward model's TransformerConfig
    policy_params: Any             # initial policy = reference params
    rm_params: Any                 # {'backbone', 'head'}
    prompt_ids: np.ndarray         # [n, P] left-padded training prompts
    prompt_mask: np.ndarray
    response_len: int              # N new tokens per response
    eos_id: int
    pad_id: int
    seed: int = 0
    ptx: dict | None = None        # pretraining arrays {'input_ids', 'attention_mask'} for PPO-ptx
    preferences: dict | None = None  # {'train', 'eval'}: step 2's comparisons, {'input_ids',
    #   'attention_mask'} [n, K, L], 'mu' [n] (K = 2) or 'order' [n, K], 'gold' [n, K] when the
    #   task has a gold reward (offline algorithms)
    rm_norm: dict | None = None    # the reward model's normalisation {'gain', 'bias'}
    mesh: Any = None               # a (data, fsdp, tensor) jax Mesh: every iteration runs sharded
    lora: Any = None               # LoRA (rank, alpha, dropout, targets; rank > 0): the state's policy is
    #   adapters on ``policy_params``, which stay the reference (one copy, passed as frozen['ref'])

    @property
    def prompt_len(self) -> int:
        return int(self.prompt_ids.shape[1])

    @property
    def uses_lora(self) -> bool:
        return self.lora is not None and self.lora.rank > 0

    def full_policy(self, policy, base):
        """The policy's parameters from what the state holds: with LoRA, ``base`` (the reference)
        with the adapters ``policy`` merged in (``W + alpha/rank · B·A``); else ``policy`` itself."""
        if not self.uses_lora:
            return policy
        return apply_lora(jax.lax.stop_gradient(base), policy, self.lora.alpha / self.lora.rank)

    def policy_of(self, params, hp, train: bool = False):
        """``full_policy`` of ``params['policy']`` inside an iteration (the base is ``hp['lora_base']``,
        which the iteration adds from ``frozen['ref']``). ``train``: the loss's forward, where LoRA's
        adapters run unmerged beside the base (no weight gradients of the base) and ``lora.dropout``
        applies, each step's masks from ``hp['dropout_rng']``."""
        if train and self.uses_lora:
            rate = self.lora.dropout
            return lora_variables(jax.lax.stop_gradient(hp["lora_base"]), params["policy"],
                                  self.lora.alpha / self.lora.rank, rate, hp["dropout_rng"] if rate else None)
        return self.full_policy(params["policy"], hp.get("lora_base"))

    def initial_policy(self, rng):
        """What the RL state starts from: fresh buffers of ``policy_params`` (the state is donated;
        the reference must not alias it), or with LoRA the adapters (B = 0: the base's outputs)."""
        if not self.uses_lora:
            return jax.tree_util.tree_map(jnp.copy, self.policy_params)
        return init_lora(self.policy_params, jax.random.fold_in(rng, 23), rank=self.lora.rank,
                         targets=tuple(self.lora.targets))

    def jit_iteration(self, iteration: Callable):
        """``iteration(state, frozen, batch, hp)`` jitted with the state donated; on ``mesh``, with
        explicit shardings (parameters by the rules, the batch over data × fsdp)."""
        table = None if self.mesh is None else logical_table(self.model_cfg, self.rm_cfg)
        return jit_step(iteration, self.mesh, table, batch_argnums=(2,))


@flax.struct.dataclass
class RLState:
    train: TrainState              # params {'policy', 'critic'?} + optimizer state
    kl: KLState                    # KL coefficient β (array)
    rng: jax.Array
    iteration: jax.Array
    baseline: jax.Array            # running mean return (REINFORCE moving-average baseline)
    baseline_count: jax.Array
    aux: Any = None                # an algorithm's own extra state (NLPO: the masking policy)


def init_rl_state(params, tx, kl_beta, rng) -> RLState:
    return RLState(train=create_state(params, tx), kl=init_kl_state(kl_beta), rng=rng,
                   iteration=jnp.zeros((), jnp.int32), baseline=jnp.zeros((), jnp.float32),
                   baseline_count=jnp.zeros((), jnp.float32))


def rl_hparams(sec) -> dict:
    """The sweepable hyperparameters every on-policy algorithm reads, as float32 arrays."""
    f = lambda x: jnp.asarray(x, jnp.float32)  # noqa: E731
    return {
        "clip_eps": f(sec.clip_eps),
        "clip_eps_high": f(sec.clip_eps if sec.clip_eps_high is None else sec.clip_eps_high),
        "dual_clip_c": f(sec.dual_clip_c),
        "ent_coef": f(sec.ent_coef),
        "temperature": f(sec.temperature),
        "reward_clip": f(sec.reward_clip),
        "no_eos_penalty": f(0.0 if sec.no_eos_penalty is None else sec.no_eos_penalty),
        "use_eos_penalty": jnp.asarray(sec.no_eos_penalty is not None),
        "ptx_coef": f(sec.ptx_coef),
        "kl_target": f(sec.kl.target),
        "kl_horizon": f(sec.kl.horizon),
    }


VECTOR_KEYS = ("lr", "clip_eps", "clip_eps_high", "dual_clip_c", "ent_coef", "temperature",
               "reward_clip", "no_eos_penalty", "ptx_coef", "kl.beta", "kl.target", "kl.horizon")
"""Section keys every on-policy algorithm reads only as arrays (its hyperparameters, the learning
rate in the optimizer state, β in the KL state): runs that differ only in these (and in
``run.rl_seed``) can be one vmapped program. ``ptx_coef`` only while it stays on (> 0) or off."""


def prompt_batch(setup: RLSetup, sec, it: int, group_size: int = 1) -> dict:
    """Iteration ``it``'s batch, a pure function of (seed, it): ``batch_size // k`` prompts drawn
    without replacement epoch by epoch, each repeated ``k`` times in a consecutive block (a group),
    plus ``batch_size`` pretraining rows when PPO-ptx is on."""
    n = len(setup.prompt_ids)
    per = min(sec.batch_size // group_size, n)
    epoch, j = divmod(it, n // per)
    idx = batch_indices(n, per, setup.seed, epoch)[j]
    out = {"prompt_ids": np.repeat(setup.prompt_ids[idx], group_size, 0),
           "prompt_mask": np.repeat(setup.prompt_mask[idx], group_size, 0)}
    if getattr(sec, "ptx_coef", 0.0) > 0:
        rows = np.random.default_rng([setup.seed, 99, it]).integers(0, len(setup.ptx["input_ids"]),
                                                                    per * group_size)
        out["ptx_ids"] = setup.ptx["input_ids"][rows]
        out["ptx_mask"] = setup.ptx["attention_mask"][rows]
    return out


def responses_per_iteration(sec, n_prompts: int, group_size: int = 1) -> int:
    return min(sec.batch_size // group_size, n_prompts) * group_size


def check_minibatches(name: str, sec, n_prompts: int, group_size: int = 1) -> None:
    """``minibatches`` must divide an iteration's responses (``batch_size``, capped by the prompts)."""
    B = responses_per_iteration(sec, n_prompts, group_size)
    if B % sec.minibatches:
        raise ValueError(f"{name}.minibatches ({sec.minibatches}) must divide the {B} responses of "
                         f"an iteration ({name}.batch_size, capped by the {n_prompts} training prompts)")


def check_common(name: str, sec, *, n_prompts: int, has_pretrain_texts: bool, group_size: int = 1) -> None:
    """Checks every on-policy algorithm shares; raises ValueError naming the section's keys."""
    if sec.batch_size < group_size:
        raise ValueError(f"{name}.batch_size ({sec.batch_size}) is smaller than one group of "
                         f"{name}.group_size ({group_size}) responses")
    check_minibatches(name, sec, n_prompts, group_size)
    if sec.ptx_coef > 0 and not has_pretrain_texts:
        raise ValueError(f"{name}.ptx_coef > 0 needs pretraining texts (the task corpus or "
                         f"data.pretrain_text)")
    if sec.ratio == "none" and sec.clip != "none":
        raise ValueError(f"{name}.ratio = 'none' (the plain −A·log π loss) has nothing to clip: "
                         f"set {name}.clip to 'none' or choose a ratio")
    if sec.ratio == "none" and sec.epochs * sec.minibatches > 1:
        raise ValueError(f"{name}.ratio = 'none' is on-policy only (one gradient step per rollout), "
                         f"but {name}.epochs × {name}.minibatches = {sec.epochs * sec.minibatches}: "
                         f"use ratio 'token' for several steps")


def make_policy_loss(setup: RLSetup, sec, critic_loss: Callable | None = None):
    """``loss_fn(params, mb, hp) -> (loss, metrics)`` over a minibatch of rollout arrays.

    L = AGG(l_t) − ent_coef·H + [β·AGG(k(π, π_ref)) if kl.placement == 'loss']
        + [vf_coef·L_V if critic] + [ptx_coef·L_LM if PPO-ptx].
    ``mb`` holds sequences, sequence_mask, tokens, logprobs, ref_logprobs, advantages and
    ``loss_mask`` (the response mask, minus DAPO's masked groups); ``hp['kl_coef']`` is β.
    ``critic_loss(params, mb, hidden, hp) -> (loss, metrics)`` adds the value loss.
    """
    cfg, P = setup.model_cfg, setup.prompt_len
    kl_in_loss = sec.kl.placement == "loss"
    use_ptx = sec.ptx_coef > 0

    def loss_fn(params, mb, hp):
        mask = mb["loss_mask"]
        policy = setup.policy_of(params, hp, train=True)
        logits, hidden = response_logits(cfg, policy, mb["sequences"], mb["sequence_mask"], P)
        if "action_mask" in mb:  # NLPO: the policy restricted to the masking policy's top-p set
            logits = apply_action_mask(logits, mb["action_mask"])
        logp = token_logprobs(logits, mb["tokens"], hp["temperature"])
        pg, metrics = policy_gradient_loss(logp, mb["logprobs"], mb["advantages"], mask, hp,
                                           ratio=sec.ratio, clip=sec.clip, aggregation=sec.aggregation)
        entropy = masked_mean(entropy_from_logits(logits, hp["temperature"]), mask)
        loss = pg - hp["ent_coef"] * entropy
        metrics = dict(metrics, **{"loss/policy": pg, "policy/entropy": entropy})
        if kl_in_loss:
            kl = kl_loss_term(logp, mb["ref_logprobs"], mask, sec.kl.estimator, sec.aggregation)
            loss = loss + hp["kl_coef"] * kl
            metrics["loss/kl"] = kl
        if critic_loss is not None:
            vf_loss, vm = critic_loss(params, mb, hidden, hp)
            loss = loss + hp["vf_coef"] * vf_loss
            metrics.update(vm, **{"loss/value": vf_loss})
        if use_ptx:
            ptx_logits = lm_logits(cfg, policy, mb["ptx_ids"], mb["ptx_mask"])
            ptx_loss, _ = next_token_loss(ptx_logits, mb["ptx_ids"], mb["ptx_mask"])
            loss = loss + hp["ptx_coef"] * ptx_loss
            metrics["loss/ptx"] = ptx_loss
        return loss, jax.lax.stop_gradient(metrics)

    return loss_fn


RL_GUARDED = ("optim/", "loss/", "objective/scores", "objective/kl", "objective/kl_coef")
"""Metrics of an RL iteration the non-finite guard checks (names, or prefixes ending in '/')."""


def make_onpolicy_iteration(setup: RLSetup, sec, *, tx, targets: Callable, loss_fn: Callable,
                            processor=None, processor_params: Callable | None = None,
                            begin: Callable | None = None, update: Callable | None = None):
    """The jitted ``iteration(state, frozen, batch, hp) -> (state, metrics)`` (state donated).

    ``targets(state, samples, frozen, batch, hp, rng) -> (data, metrics, state)`` is the family's
    part: it turns the scored samples into the per-row training arrays (advantages, loss mask, ...)
    and may update state fields such as the running baseline. Optional hooks: ``begin(state, hp)
    -> state`` first (NLPO re-syncs its masking policy), a sampler ``processor`` with
    ``processor_params(state, hp)``, and ``update(train, data, hp, rng) -> (train, metrics)``
    instead of the ``epochs × minibatches`` gradient steps on ``loss_fn`` (TRPO's natural step).
    """
    sample = make_sampler(cfg=setup.model_cfg, rm_cfg=setup.rm_cfg, max_new_tokens=setup.response_len,
                          eos_id=setup.eos_id, pad_id=setup.pad_id,
                          recompute_logprobs=sec.recompute_logprobs, processor=processor)
    # With the KL placed nowhere β is never used: it stays put (and is reported as 0).
    kl_used = sec.kl.placement != "none"
    kl_update = KL_CONTROLLERS.get(sec.kl.controller if kl_used else "fixed")

    def iteration(state: RLState, frozen, batch, hp):
        if setup.uses_lora:
            hp = dict(hp, lora_base=frozen["ref"])
        if begin is not None:
            state = begin(state, hp)
        rng, gen_rng, perm_rng, aux_rng = jax.random.split(state.rng, 4)
        pp = None if processor_params is None else processor_params(state, hp)
        s, metrics = sample(setup.policy_of(state.train.params, hp), frozen, batch["prompt_ids"],
                            batch["prompt_mask"], gen_rng, hp, pp)
        hp = dict(hp, kl_coef=state.kl.beta)
        data, target_metrics, state = targets(state, s, frozen, batch, hp, aux_rng)
        data.update(sequences=s.sequences, sequence_mask=s.sequence_mask, tokens=s.tokens,
                    logprobs=s.logprobs, ref_logprobs=s.ref_logprobs)
        if "ptx_ids" in batch:
            data["ptx_ids"], data["ptx_mask"] = batch["ptx_ids"], batch["ptx_mask"]
        if update is None:
            train, upd = run_epochs(loss_fn, tx, state.train, data, hp, perm_rng, epochs=sec.epochs,
                                    minibatches=sec.minibatches)
        else:
            train, upd = update(state.train, data, hp, perm_rng)
        B = s.tokens.shape[0]
        kl_state = kl_update(state.kl, metrics["objective/kl"], B, hp["kl_target"], hp["kl_horizon"])
        metrics = {**metrics, **target_metrics, **upd,
                   "objective/kl_coef": state.kl.beta if kl_used else jnp.float32(0.0)}
        metrics[GUARD_KEY] = nonfinite_code(metrics, RL_GUARDED)
        new = state.replace(train=train, kl=kl_state, rng=rng, iteration=state.iteration + 1)
        return new, metrics

    return setup.jit_iteration(iteration)


@dataclasses.dataclass(frozen=True)
class Algorithm:
    """A registry entry. ``family`` does the work; ``section`` carries the preset's defaults."""
    name: str
    section: type
    family: Any
    summary: str
    paper: str

    def needs(self, sec) -> tuple[str, ...]:
        return self.family.needs(sec)

    def check(self, sec, *, n_prompts: int, has_pretrain_texts: bool) -> None:
        self.family.check(self.name, sec, n_prompts=n_prompts, has_pretrain_texts=has_pretrain_texts)

    def init(self, setup: RLSetup, sec, rng) -> RLState:
        return self.family.init(setup, sec, rng)

    def make_iteration(self, setup: RLSetup, sec):
        return self.family.make_iteration(setup, sec)

    def hparams(self, sec) -> dict:
        return self.family.hparams(sec)

    def batch(self, setup: RLSetup, sec, it: int) -> dict:
        own = getattr(self.family, "batch", None)
        if own is not None:
            return own(setup, sec, it)
        return prompt_batch(setup, sec, it, self.family.group_size(sec))

    def vector_keys(self) -> tuple[str, ...]:
        """Section keys that only enter as arrays (see :data:`VECTOR_KEYS`)."""
        return VECTOR_KEYS + tuple(getattr(self.family, "vector_keys", ()))

    def responses_per_iteration(self, sec, n_prompts: int) -> int:
        own = getattr(self.family, "responses_per_iteration", None)
        if own is not None:
            return own(sec, n_prompts)
        return responses_per_iteration(sec, n_prompts, self.family.group_size(sec))

    def prepare(self, setup: RLSetup, sec) -> RLSetup:
        """What the algorithm computes once before its first iteration (e.g. DPO's reference
        logprobs), as a new setup; most have nothing to add."""
        own = getattr(self.family, "prepare", None)
        return setup if own is None else own(setup, sec)

    def evaluate(self, setup: RLSetup, sec, params, hp) -> dict:
        """The algorithm's own held-out metrics (``eval/...``) of policy ``params``, logged with
        every evaluation; most have none beyond the pipeline's gold reward and KL."""
        own = getattr(self.family, "evaluate", None)
        return {} if own is None else own(setup, sec, params, hp)

    def decoder(self, state, hp):
        """``(processor, processor_params)`` the sampler needs to draw from the policy ``state``
        holds (ILQL: the LM's logits shifted by its heads), or None for the plain LM."""
        own = getattr(self.family, "decoder", None)
        return None if own is None else own(state, hp)

    @property
    def steps_per_iteration(self) -> int:
        """How many of its steps count as one on-policy iteration for ``run.checkpoint_every``
        (10 for the offline algorithms, whose steps sample nothing, as for the supervised stages)."""
        return getattr(self.family, "steps_per_iteration", 1)

    @property
    def progress_metrics(self) -> tuple[tuple[str, str], ...]:
        """(label, metric) pairs the progress bar shows."""
        return getattr(self.family, "progress_metrics",
                       (("score", "objective/scores"), ("kl", "objective/kl")))

    @staticmethod
    def policy(state: RLState):
        """What the state holds of the policy (with LoRA its adapters: ``RLSetup.full_policy``)."""
        return state.train.params["policy"]

    @property
    def trains_adapters(self) -> bool:
        """Whether the family can train LoRA adapters instead of the whole policy."""
        return getattr(self.family, "lora", False)


ALGORITHMS: Registry = Registry("algorithm")
"""Name -> :class:`Algorithm`. ``rlhf_jax.algorithms.registry`` registers the built-in ones."""


def frozen_inputs(setup: RLSetup, ref_params, norm: dict) -> dict:
    return {"ref": ref_params, "rm": setup.rm_params,
            "norm": {k: jnp.float32(v) for k, v in norm.items()}}
