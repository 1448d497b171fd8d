"""Iterated online RLHF (Bai et al. 2022): ``online.rounds: R`` splits step 3's iterations into R
rounds inside one resumable run. Round 1 is the classic recipe (step 2's reward model). Before
each later round r:

1. the current policy is evaluated (held-out gold reward, proxy score, KL: the end of round r − 1);
2. it samples ``reward.k`` responses to ``online.n_prompts`` fresh training prompts, which the
   built-in task's simulated labelers rank (or compare, for k = 2) as in step 2 — or, with
   ``online.preferences``, the round's comparisons are the pairs of the next file of that list;
3. the reward model continues from the last one on *all* comparisons so far (the train split of
   every round; ``online.rm_epochs`` epochs, one by default), and is re-normalised on all their samples; its
   accuracy on the held-out part of the newest comparisons is measured before and after;
4. RL continues from the current policy (and optimiser, critic, KL controller) against the new
   reward model. An algorithm that learns from comparisons directly (the DPO family: online DPO)
   takes the newest round's pairs as its data instead.

Every product of a round lives in ``run_dir/online``: ``comparisons_round{r}.npz``,
``round{r}.json`` (its numbers) and the reward model's checkpoints ``checkpoints/reward_round{r}``;
the RL stage checkpoints at every round's end. A run killed anywhere resumes from them and gives the
same bits as one that was not.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.algorithms.base import frozen_inputs
from rlhf_jax.algorithms.loop import supervised_loop
from rlhf_jax.algorithms.reward_model import (gold_order_accuracy, make_rm_loss, normalization,
                                              pairwise_accuracy, ranking_accuracy, score_in_batches,
                                              split_comparisons)
from rlhf_jax.algorithms.sections import optimizer_kwargs
from rlhf_jax.algorithms.step import DegenerateError, make_train_step
from rlhf_jax.algorithms.train_state import create_state, make_optimizer
from rlhf_jax.data.encoding import encode_prompts
from rlhf_jax.runner.evaluation import gold_of_samples, sample_many
from rlhf_jax.runner.rl_stage import _copy_tree, _eval_metrics, _log
from rlhf_jax.runner.run_dir import load_npz, read_json, save_npz, write_json

if TYPE_CHECKING:
    from rlhf_jax.runner.pipeline import Pipeline
    from rlhf_jax.runner.rl_stage import RLStage

ONLINE_DIR = "online"
ROUND_PROMPT_SEED = 1000
"""Round r's prompts: ``task.prompts('train', n, seed=rl_seed + 1000·r)`` (step 3's seed: rounds
are step 3's, and runs that differ only in it share steps 1-2)."""


def check_online(cfg, algo) -> None:
    """``online.rounds > 1``: what iterated online RLHF needs, before any compute."""
    from rlhf_jax.runner.config_loader import ConfigError
    from rlhf_jax.runner.schema import algorithm_section

    R = cfg.online.rounds
    if R == 1:
        return
    needs = set(algo.needs(algorithm_section(cfg)))
    if not needs & {"reward_model", "preferences"} or "logged responses" in needs:
        raise ConfigError(f"online.rounds {R}: iterated online RLHF needs an on-policy algorithm or "
                          f"one of the DPO family (online DPO); {cfg.algorithm!r} learns from step "
                          f"2's logged responses only")
    files = cfg.online.preferences
    if files:
        if len(files) != R - 1:
            raise ConfigError(f"online.preferences: {len(files)} file(s) for {R - 1} later round(s) "
                              f"(online.rounds {R}): give one preference file per round after the first")
        if cfg.online.n_prompts:
            raise ConfigError(f"online.n_prompts {cfg.online.n_prompts}: not used when "
                              f"online.preferences gives the rounds' comparisons; leave it 0")
        if not cfg.data.preferences and cfg.reward.k != 2:
            raise ConfigError(f"online.preferences: the files hold pairs, and step 2 ranks reward.k = "
                              f"{cfg.reward.k} responses per prompt; set reward.k=2 so that every "
                              f"round's comparisons are pairs")
    elif cfg.task.name is None or cfg.data.preferences:
        raise ConfigError(f"online.rounds {R}: each later round's comparisons are labelled by the "
                          f"built-in task's simulated labelers, and this run has none (task.name "
                          f"null or data.preferences set); name one preference file per later round "
                          f"in online.preferences instead")
    iterations = algorithm_section(cfg).iterations
    if R > iterations:
        raise ConfigError(f"online.rounds {R}: more rounds than {cfg.algorithm}.iterations "
                          f"({iterations}); every round needs at least one iteration")


def round_ends(iterations: int, rounds: int) -> list[int]:
    """The iteration count at the end of each round: ``round(r·I/R)``, r = 1..R."""
    return [int(round(r * iterations / rounds)) for r in range(1, rounds + 1)]


def label_comparisons(pipe: Pipeline, prompts: list[str], samples: dict, rng: np.random.Generator) -> dict:
    """Step 2's comparison arrays of ``samples`` (``reward.k`` per prompt, prompt-major): the
    sequences ``[n, k, L]``, their gold rewards, and the simulated labelers' ``mu`` (k = 2) or
    ``order`` (k > 2)."""
    rc = pipe.cfg.reward
    gold = gold_of_samples(pipe.src.gold, pipe.tok, prompts, rc.k, samples)
    L = pipe.P + pipe.R
    data = {"input_ids": samples["sequences"].reshape(len(prompts), rc.k, L),
            "attention_mask": samples["sequence_mask"].reshape(len(prompts), rc.k, L), "gold": gold}
    if rc.k == 2:
        data["mu"] = pipe.src.labelers.pairwise_labels(gold[:, 0], gold[:, 1], tau=rc.tau,
                                                       tie_eps=rc.tie_eps, rng=rng)
    else:
        data["order"] = pipe.src.labelers.ranking_labels(gold, tau=rc.tau, rng=rng)
    return data


def rm_accuracies(rm_cfg, params, evals: dict, tie_eps: float = 0.0) -> tuple[float, float | None]:
    """(accuracy on the labels: pairwise for ``mu``, ranking for ``order``; agreement with the gold
    order, ``gold_order_accuracy``, when the comparisons carry gold rewards, else None)."""
    k, L = evals["input_ids"].shape[1:]
    scores = score_in_batches(rm_cfg, params, evals["input_ids"].reshape(-1, L),
                              evals["attention_mask"].reshape(-1, L)).reshape(-1, k)
    labels = pairwise_accuracy(scores, evals["mu"]) if "mu" in evals else ranking_accuracy(scores, evals["order"])
    return labels, (gold_order_accuracy(scores, evals["gold"], tie_eps) if "gold" in evals else None)


def rm_accuracy(rm_cfg, params, evals: dict) -> float:
    """Pairwise (``mu``) or ranking (``order``) accuracy of a reward model on comparisons."""
    return rm_accuracies(rm_cfg, params, evals)[0]


def label_ceiling_of(evals: dict) -> float | None:
    """The accuracy of the gold reward itself on the labels (the noisy labelers' ceiling)."""
    if "gold" not in evals:
        return None
    if "mu" in evals:
        from rlhf_jax.rewards.labelers import label_ceiling

        return label_ceiling(evals["gold"][:, 0], evals["gold"][:, 1], evals["mu"])
    return ranking_accuracy(evals["gold"], evals["order"])


class OnlineRounds:
    """The rounds of one run's step 3 (module docstring). ``Pipeline.rl`` calls :meth:`enter`
    before every iteration (it acts at the first iteration of a round) and :meth:`finish` with
    the final evaluation."""

    def __init__(self, pipe: Pipeline, stage: RLStage, rm_info: dict):
        self.pipe, self.stage = pipe, stage
        cfg = pipe.cfg
        self.oc, self.rc = cfg.online, cfg.reward
        self.ends = round_ends(stage.sec.iterations, self.oc.rounds)
        self.dir = os.path.join(pipe.run_dir, ONLINE_DIR)
        os.makedirs(self.dir, exist_ok=True)
        self.entered = 1
        self.uses_rm = pipe.rm_params is not None
        self.direct = "preferences" in stage.algo.needs(stage.sec)  # online DPO
        self.rm_round = {1: pipe.rm_params}
        first = self._record(1)
        if first is None:
            n = len(pipe.comparisons["input_ids"])
            first = {"round": 1, "iterations": [0, self.ends[0]], "comparisons_new": n,
                     "comparisons_total": n}
            if self.uses_rm:
                first["rm_eval_accuracy"] = rm_info.get("rm_eval_accuracy")
                first.update(gain=pipe.rm_norm[0], bias=pipe.rm_norm[1])
            write_json(self._path(1), first)

    # ------------------------------------------------------------------ files
    def _path(self, r: int) -> str:
        return os.path.join(self.dir, f"round{r}.json")

    def _record(self, r: int) -> dict | None:
        return read_json(self._path(r), "delete it (and the round's later files) to redo the round")

    def round_of(self, it: int) -> int:
        """The round (1-based) of iteration index ``it`` (0-based)."""
        return next(r for r, end in enumerate(self.ends, 1) if it < end)

    def records(self) -> list[dict]:
        return [rec for r in range(1, len(self.ends) + 1) if (rec := self._record(r)) is not None]

    # ------------------------------------------------------------------ rounds
    def enter(self, it: int, state) -> None:
        """Before iteration ``it``: when it starts round r ≥ 2 (or a resumed run is inside one),
        make round r's comparisons and reward model and hand them to the stage."""
        r = self.round_of(it)
        if r == self.entered:
            return
        for q in range(2, r):  # a resumed run: the earlier rounds' reward models, from their files
            if q not in self.rm_round and self.uses_rm:
                self.rm_round[q] = self._reward_model(q, None)[0]
        self._end_of_round(r - 1, state)
        data = self._comparisons(r, state)
        rm = norm = None
        if self.uses_rm:
            rm, norm = self._reward_model(r, data)
            self.rm_round[r] = rm
        elif self._record(r) is None:
            write_json(self._path(r), {"round": r, "iterations": [self.ends[r - 2], self.ends[r - 1]],
                                       "comparisons_new": len(data["input_ids"])})
        self._apply(r, data, rm, norm)
        self.entered = r

    def _end_of_round(self, r: int, state) -> None:
        """The held-out evaluation of the policy that ends round ``r`` (kept in round{r}.json)."""
        rec = self._record(r)
        if rec is None or "end" in rec:
            return
        st, pipe = self.stage, self.pipe
        policy = st.policy(state)
        ev = pipe.evaluate(policy, st.ref_params, st.eval_prompts, st.e_ids, st.e_mask,
                           pipe.cfg.eval.samples_per_prompt, key=pipe.rl_key,
                           decoder=st.algo.decoder(state, st.hp))
        rec["end"] = _eval_metrics(ev)
        write_json(self._path(r), rec)
        pipe.logger.log(self.ends[r - 1], {**rec["end"], "online/round": r}, stage="eval")

    def _comparisons(self, r: int, state) -> dict:
        path = os.path.join(self.dir, f"comparisons_round{r}.npz")
        kept = load_npz(path, ("input_ids", "attention_mask"), "delete it to sample the round again")
        if kept is not None:
            return kept
        pipe, st, rc = self.pipe, self.stage, self.rc
        if self.oc.preferences:  # the round's file (read and checked before step 1)
            f = self.oc.preferences[r - 2]
            data = pipe.src.preference_arrays(pipe.tok, pipe.P, pipe.R, path=f)
            _log(f"round {r}: {len(data['input_ids'])} comparisons from {f}")
            save_npz(path, data)
            return data
        n = self.oc.n_prompts or rc.n_prompts
        prompts = pipe.src.task.prompts("train", n=n, seed=pipe.rl_seed + ROUND_PROMPT_SEED * r)
        ids, mask = encode_prompts(pipe.tok, prompts, pipe.P)
        _log(f"round {r}: sampling {rc.k} responses of the current policy to {n} prompts for new "
             f"comparisons")
        samples = sample_many(pipe.model_cfg, st.policy(state), ids, mask,
                              rng=jax.random.fold_in(pipe.rl_key, 100 + r), n=rc.k,
                              max_new_tokens=pipe.R, temperature=rc.sample_temperature,
                              eos_id=pipe.tok.eos_id, pad_id=pipe.tok.pad_id,
                              decoder=st.algo.decoder(state, st.hp))
        data = label_comparisons(pipe, prompts, samples, np.random.default_rng([pipe.rl_seed, 2, r]))
        save_npz(path, data)
        return data

    def _all_comparisons(self, r: int) -> list[dict]:
        out = [self.pipe.comparisons]
        for q in range(2, r + 1):
            out.append(load_npz(os.path.join(self.dir, f"comparisons_round{q}.npz"),
                                ("input_ids", "attention_mask"), "delete it to sample the round again"))
        return out

    def _reward_model(self, r: int, data: dict | None):
        """Round ``r``'s reward model (trained now, or restored when done) and its (gain, bias)."""
        pipe, rc = self.pipe, self.rc
        rounds = self._all_comparisons(r)
        keys = ("input_ids", "attention_mask", "mu" if "mu" in rounds[0] else "order")
        parts = [split_comparisons(d, rc.eval_fraction) for d in rounds]
        train = {k: np.concatenate([p[0][k] for p in parts]) for k in keys}
        newest = parts[-1][1]
        prev = self.rm_round[r - 1]
        epochs = self.oc.rm_epochs
        bs = min(rc.batch_size, len(train["input_ids"]))
        steps = epochs * (len(train["input_ids"]) // bs)
        tx = make_optimizer(rc.lr, total_steps=steps, **optimizer_kwargs(rc))
        rec = self._record(r)
        hp = {"margin": jnp.float32(rc.margin), "center_coef": jnp.float32(rc.center_coef)}
        if rec is None:
            before, gold_before = rm_accuracies(pipe.rm_cfg, prev, newest, rc.tie_eps)
            _log(f"round {r}: the reward model continues on {len(train['input_ids'])} comparisons "
                 f"({steps} steps); on the newest policy's held-out comparisons it scores {before:.3f}")
        t0 = time.time()
        state = supervised_loop(stage=f"reward_round{r}", state=create_state(_copy_tree(prev), tx),
                                step_fn=make_train_step(make_rm_loss(pipe.rm_cfg), tx, **pipe.sharded(pipe.rm_cfg)),
                                data=train,
                                batch_size=bs, n_steps=steps, seed=pipe.rl_seed + r, hparams=hp,
                                ckpt=pipe.ckpt, logger=pipe.logger,
                                ckpt_every=10 * pipe.cfg.run.checkpoint_every, show_progress=pipe.show)
        pipe.times[f"reward_round{r}"] = time.time() - t0
        if rec is not None and "gain" in rec:
            return state.params, (rec["gain"], rec["bias"])
        after, gold_after = rm_accuracies(pipe.rm_cfg, state.params, newest, rc.tie_eps)
        k, L = rounds[0]["input_ids"].shape[1:]
        ids = np.concatenate([d["input_ids"].reshape(-1, L) for d in rounds])
        mask = np.concatenate([d["attention_mask"].reshape(-1, L) for d in rounds])
        scores = score_in_batches(pipe.rm_cfg, state.params, ids, mask)
        if not np.isfinite(scores).all() or np.std(scores) < 1e-6:
            raise DegenerateError(f"round {r}: the reward model scores the comparison samples "
                                  f"{'non-finite' if not np.isfinite(scores).all() else 'alike'}",
                                  f"reward_round{r}", steps, "scores")
        gain, bias = normalization(scores, rc.normalize, scores.reshape(-1, k)[:, 0])
        rec = {"round": r, "iterations": [self.ends[r - 2], self.ends[r - 1]],
               "comparisons_new": len(data["input_ids"]) if data is not None else None,
               "comparisons_total": int(sum(len(d["input_ids"]) for d in rounds)),
               "rm_accuracy_newest_before": before, "rm_accuracy_newest_after": after,
               "rm_label_ceiling_newest": label_ceiling_of(newest),
               "rm_gold_accuracy_newest_before": gold_before, "rm_gold_accuracy_newest_after": gold_after,
               "gain": gain, "bias": bias}
        write_json(self._path(r), rec)
        pipe.logger.log(self.ends[r - 2], {"online/round": r, "online/rm_accuracy_newest_before": before,
                                           "online/rm_accuracy_newest_after": after,
                                           "online/comparisons": rec["comparisons_total"]}, stage="eval")
        _log(f"round {r}: reward model accuracy on the newest comparisons {before:.3f} -> {after:.3f}"
             + (f" (against the gold order {gold_before:.3f} -> {gold_after:.3f})" if gold_after is not None else ""))
        return state.params, (gain, bias)

    def _apply(self, r: int, data: dict, rm, norm) -> None:
        """Hand round ``r``'s reward model (and, for online DPO, its comparisons) to the stage."""
        pipe, st = self.pipe, self.stage
        setup = st.setup
        if rm is not None:
            pipe.rm_params, pipe.rm_norm = rm, norm
            setup = dataclasses.replace(setup, rm_params=rm, rm_norm={"gain": norm[0], "bias": norm[1]})
        if self.direct:
            train, held = split_comparisons(data, self.rc.eval_fraction)
            setup = st.algo.prepare(dataclasses.replace(setup, preferences={"train": train, "eval": held}),
                                    st.sec)
        st.setup = setup
        st.frozen = frozen_inputs(setup, st.ref_params,
                                  {"gain": norm[0], "bias": norm[1]} if norm is not None else
                                  dict(st.frozen["norm"]))

    def finish(self, final: dict) -> list[dict]:
        """Record the final evaluation as the last round's end; all rounds' records."""
        r = len(self.ends)
        rec = self._record(r) or {"round": r}
        rec["end"] = _eval_metrics(final)
        write_json(self._path(r), rec)
        return self.records()
