"""One run's step 3 around its algorithm's jitted iteration (:class:`RLStage`), the evaluation
metrics it logs, and ``samples.json`` (held-out responses of the reference and the final policy).
``Pipeline.rl`` drives one stage; a vectorised sweep (``runner/vectorized.py``) drives several."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms.base import RL_GUARDED, RLSetup, frozen_inputs
from rlhf_jax.algorithms.reward_model import split_comparisons
from rlhf_jax.algorithms.step import GUARD_KEY, NonFiniteError, nonfinite_metric
from rlhf_jax.data.encoding import encode_prompts
from rlhf_jax.metrics.logger import progress
from rlhf_jax.runner.evaluation import decode_responses
from rlhf_jax.runner.schema import algorithm_section
from rlhf_jax.sharding.distributed import is_primary
from rlhf_jax.sharding.memory import add, estimate, mesh_shape

if TYPE_CHECKING:
    from rlhf_jax.runner.pipeline import Pipeline


def _log(msg: str) -> None:
    if is_primary():  # one voice for a multi-host run
        print(f"[rlhf_jax] {msg}", file=sys.stderr, flush=True)


def _copy_tree(tree):
    """Fresh buffers (the PPO step donates its state; the reference must not alias it)."""
    return jax.tree_util.tree_map(jnp.copy, tree)


SAMPLES_FILE, SAMPLES_SHOWN = "samples.json", 6


def _pick(ev: dict, n: int, k: int) -> dict:
    """The first of ``n`` samples of each of the first ``k`` prompts, host arrays."""
    return {key: v[: n * k: n] for key, v in ev["samples"].items()}


def _samples_record(pipe, ref_params, final, prompts, ids, mask) -> dict:
    n = pipe.cfg.eval.samples_per_prompt
    k = min(SAMPLES_SHOWN, len(prompts))
    # The reference's samples as the initial evaluation drew them (same key and shapes).
    ref = pipe.evaluate(ref_params, ref_params, prompts, ids, mask, n)
    out = {"prompts": list(prompts[:k]),
           "reference": decode_responses(pipe.tok, _pick(ref, n, k)),
           "policy": decode_responses(pipe.tok, _pick(final, n, k))}
    if "gold" in final:
        out["gold_reference"] = [float(g) for g in ref["gold"][:k, 0]]
        out["gold_policy"] = [float(g) for g in final["gold"][:k, 0]]
    return out


class RLStage:
    """One run's step 3 around the algorithm's jitted iteration: its inputs (setup, frozen params,
    hyperparameters, the state, restored when resuming) and what follows each iteration (the
    non-finite guard, metrics, the progress bar, held-out evaluation, checkpoints). ``Pipeline.rl``
    drives one; a vectorised sweep drives several with one vmapped iteration."""

    def __init__(self, pipe: Pipeline, sft_params, rm_params, rm_info):
        cfg = pipe.cfg
        self.pipe, self.algo = pipe, pipe.algo
        self.sec = sec = algorithm_section(cfg)
        ids, mask = encode_prompts(pipe.tok, pipe.rl_prompts, pipe.P)
        prefs = None
        if {"preferences", "logged responses"} & set(self.algo.needs(sec)):
            # step 2's comparisons, split as the reward model's
            train, held_out = split_comparisons(pipe.comparisons, cfg.reward.eval_fraction)
            if "gold" in pipe.comparisons:
                train["gold"] = pipe.comparisons["gold"][: len(train["input_ids"])]
            prefs = {"train": train, "eval": held_out}
        ptx = getattr(sec, "ptx_coef", 0.0) > 0
        setup = RLSetup(model_cfg=pipe.model_cfg, rm_cfg=pipe.rm_cfg, policy_params=sft_params,
                        rm_params=rm_params, prompt_ids=ids, prompt_mask=mask,
                        response_len=pipe.R, eos_id=pipe.tok.eos_id, pad_id=pipe.tok.pad_id,
                        seed=pipe.rl_seed, ptx=pipe.pretrain_data if ptx else None, preferences=prefs,
                        rm_norm={k: rm_info[k] for k in ("gain", "bias")} if "gain" in rm_info else None,
                        mesh=pipe.mesh, lora=cfg.lora)
        self.setup = self.algo.prepare(setup, sec)
        self.ref_params = _copy_tree(sft_params)
        self.frozen = frozen_inputs(self.setup, self.ref_params,
                                    {k: rm_info[k] for k in ("gain", "bias") if k in rm_info})
        self.state = self.algo.init(self.setup, sec, jax.random.fold_in(pipe.rl_key, 7))
        self.start = 0
        if pipe.ckpt.latest_step("rl") is not None:
            restored, meta = pipe.ckpt.restore("rl", {"rl": self.state})
            self.state, self.start = restored["rl"], int(meta["step"])
        pipe.logger.truncate_after("rl", self.start)  # lines an interrupted attempt logged after it
        pipe.logger.truncate_after("eval", self.start)
        self.hp = self.algo.hparams(sec)
        # run.checkpoint_every counts on-policy iterations; an offline algorithm's steps are cheap
        # (no sampling), so it saves every 10x that many, as the supervised stages do
        self.checkpoint_every = cfg.run.checkpoint_every * self.algo.steps_per_iteration
        self.eval_prompts = pipe.src.eval_prompts()
        self.e_ids, self.e_mask = encode_prompts(pipe.tok, self.eval_prompts, pipe.P)
        self.iter_times: list[float] = []
        self.save_at: set[int] = set()  # iterations that always checkpoint (online rounds' ends)
        self.good = self.start or None
        self.responses_per_iteration = n_resp = self.algo.responses_per_iteration(sec, len(ids))
        _log(f"step 3: {cfg.algorithm} for {sec.iterations} iterations of {n_resp} responses"
             + (f" ({pipe.run_dir})" if pipe.show is False else ""))
        L, shape = pipe.P + pipe.R, mesh_shape(pipe.mesh)
        policy = dict(batch=n_resp // getattr(sec, "minibatches", 1), seq_len=L, mesh_shape=shape,
                      kv_batch=n_resp, kv_len=L)
        if self.setup.uses_lora:  # the base is the reference; adapters (and a critic) are trained
            trained = sum(x.size for x in jax.tree_util.tree_leaves(self.state.train.params))
            held = [estimate(pipe.model_cfg, **policy, trained_params=trained)]
            what = "base = reference, adapters, reward model"
        else:
            held = [estimate(pipe.model_cfg, **policy),
                    estimate(pipe.model_cfg, batch=0, seq_len=L, mesh_shape=shape, trained=False)]
            what = "policy, reference and reward model"
        mem = add(*held, *([estimate(pipe.rm_cfg, batch=0, seq_len=L, mesh_shape=shape, trained=False)]
                           if pipe.rm_cfg is not None else []))
        _log(f"rl: memory per device (estimate; {what}): {mem.line()}")
        self.bar = progress(sec.iterations, cfg.algorithm, initial=self.start, force=pipe.show)

    def batch(self, it: int) -> dict:
        return self.algo.batch(self.setup, self.sec, it)

    def after_iteration(self, it: int, state, metrics: dict, seconds: float) -> None:
        """Iteration ``it`` produced ``state`` and (host) ``metrics``: guard, log, evaluate, save.
        ``state`` may be a zero-argument function giving it (only called when it is needed)."""
        pipe, sec = self.pipe, self.sec
        get_state = state if callable(state) else (lambda: state)
        bad = nonfinite_metric(metrics.pop(GUARD_KEY), metrics, RL_GUARDED)
        if bad is not None:
            raise NonFiniteError("rl", it + 1, bad, self.good)
        self.iter_times.append(seconds)
        pipe.logger.log(it + 1, metrics, stage="rl")
        self.bar.update(1)
        self.bar.set_metrics({label: metrics[k] for label, k in self.algo.progress_metrics if k in metrics})
        if (it + 1) % sec.eval_every == 0 and it + 1 < sec.iterations:
            state = get_state()
            policy = self.policy(state)
            ev = pipe.evaluate(policy, self.ref_params, self.eval_prompts, self.e_ids,
                               self.e_mask, 1, key=pipe.rl_key, decoder=self.algo.decoder(state, self.hp))
            pipe.logger.log(it + 1, {**_eval_metrics(ev), **self.own_eval(policy)}, stage="eval")
        if (it + 1) % self.checkpoint_every == 0 or it + 1 == sec.iterations or it + 1 in self.save_at:
            pipe.ckpt.save("rl", it + 1, {"rl": get_state()}, {"done": it + 1 == sec.iterations})
            self.good = it + 1

    def policy(self, state):
        """The policy's parameters in ``state`` (with LoRA, merged into the reference)."""
        return self.setup.full_policy(self.algo.policy(state), self.ref_params)

    def own_eval(self, policy) -> dict:
        """The algorithm's own held-out metrics of ``policy`` (e.g. DPO's implicit accuracy)."""
        return self.algo.evaluate(self.setup, self.sec, policy, self.hp)

    def close(self) -> None:
        self.bar.close()
        t = self.iter_times
        self.pipe.times["rl"] = sum(t)
        self.pipe.times["rl_iteration_s"] = float(np.median(t[1:])) if len(t) > 1 else (
            t[0] if t else float("nan"))


def _eval_metrics(ev) -> dict:
    out = {"eval/kl": float(ev["kl"].mean())}
    if "gold" in ev:
        out["eval/gold_reward"] = float(ev["gold"].mean())
    if "proxy" in ev:
        out["eval/proxy_score"] = float(ev["proxy"].mean())
    return out
