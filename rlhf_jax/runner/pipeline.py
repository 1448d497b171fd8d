"""The main job: the three steps of the classic RLHF recipe, resumable, from one config.

1. pretrain the LM on the corpus (and optional SFT on demonstrations) — or start from a Hugging
   Face checkpoint;
2. sample responses from it, label them with simulated humans (or read a preference file), train
   the reward model, normalise it;
3. RL against the reward model with a KL penalty to the SFT reference, by the algorithm the config
   names (``algorithm: ppo`` by default; ``algorithms/registry.py`` lists them).

Each stage checkpoints with Orbax into ``run_dir/checkpoints/<stage>``; rerunning the same command
skips finished stages and resumes the running one from its newest checkpoint. The run directory
gets the resolved ``config.yaml``, ``metrics.jsonl``, ``summary.json`` and ``report.md``.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax import interrupts
from rlhf_jax.algorithms.loop import supervised_loop
from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.algorithms.reward_model import (init_reward_model, make_rm_loss, normalization,
                                              score_in_batches, split_comparisons)
from rlhf_jax.algorithms.sft import lm_target_count, make_lm_loss
from rlhf_jax.algorithms.step import DegenerateError, TrainingError, make_train_step
from rlhf_jax.sharding.jit import sharded_init
from rlhf_jax.sharding.distributed import is_primary
from rlhf_jax.sharding.memory import estimate, mesh_shape
from rlhf_jax.sharding.mesh import device_mesh, logical_table, place, tree_shardings
from rlhf_jax.algorithms.sections import optimizer_kwargs
from rlhf_jax.algorithms.train_state import create_state, make_optimizer
from rlhf_jax.checkpoint.orbax import RunCheckpoints
from rlhf_jax.data.encoding import encode_prompt_response, encode_prompts
from rlhf_jax.metrics.aggregate import to_python
from rlhf_jax.metrics.backends import check_backends
from rlhf_jax.metrics.logger import PIPELINE_STAGES, MetricsLogger
from rlhf_jax.models import get_preset, init_params
from rlhf_jax.runner import sources
from rlhf_jax.runner.config_loader import ConfigError
from rlhf_jax.runner.evaluation import gold_of_samples, kl_of_samples, sample_many
from rlhf_jax.runner.online import (OnlineRounds, check_online, label_ceiling_of, label_comparisons,
                                    rm_accuracy, round_ends)
from rlhf_jax.runner.report import write_report
from rlhf_jax.runner.rl_stage import (SAMPLES_FILE, RLStage, _copy_tree, _eval_metrics, _log,
                                      _samples_record)
from rlhf_jax.runner.run_reuse import (_MAY_DIFFER, _check_reusable, _diff_keys, _may_change,
                                       _reuse_stages)
from rlhf_jax.runner.checks import check_run
from rlhf_jax.runner.run_dir import (STOPPED_FILE, check_out_dir, load_npz, read_json, read_yaml,
                                     save_npz, write_json, write_yaml)
from rlhf_jax.runner.schema import (ALGORITHM_SECTIONS, ExperimentConfig, algorithm_section,
                                    resolved_config)


class Pipeline:
    def __init__(self, cfg: ExperimentConfig):
        self.cfg = cfg
        self.run_dir = cfg.run.out_dir
        self.key = jax.random.PRNGKey(cfg.run.seed)
        self.rl_seed = cfg.run.seed if cfg.run.rl_seed is None else cfg.run.rl_seed
        self.rl_key = self.key if cfg.run.rl_seed is None else jax.random.PRNGKey(cfg.run.rl_seed)
        self.show = None if cfg.run.progress and is_primary() else False
        self.times: dict[str, float] = {}
        self.mesh = None  # set by validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict | None:
        """Every check a run can make before compute, reading only (nothing is written): the run
        directory, the data files, the algorithm's needs, the tokenizer against the model, and
        the files an earlier attempt kept. Returns the stored summary when the run has finished."""
        cfg = self.cfg
        check_out_dir(self.run_dir)
        check_backends(cfg.logging)
        self.resolved = resolved_config(cfg)
        self.algo = ALGORITHMS.get(cfg.algorithm)
        check_run(cfg, self.algo)
        self.src = sources.Sources(cfg, self.run_dir)
        self.src.check_data(_log)
        self.rl_prompts = self.src.rl_prompts()
        try:  # everything the chosen algorithm needs
            self.algo.check(algorithm_section(cfg), n_prompts=len(self.rl_prompts),
                            has_pretrain_texts=self.src.has_pretrain_texts())
        except ValueError as e:
            raise ConfigError(f"algorithm {cfg.algorithm!r}: {e}") from None
        check_online(cfg, self.algo)
        unused = [n for n in ALGORITHM_SECTIONS if n != cfg.algorithm
                  and getattr(cfg, n) != ALGORITHMS.get(n).section()]
        if unused:
            _log(f"algorithm {cfg.algorithm!r}: the settings in section(s) {', '.join(unused)} are "
                 f"not used by this run")
        try:  # one device: no mesh
            self.mesh = device_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.P, self.R = cfg.data.max_prompt_len, cfg.data.max_response_len
        tok = self.src.existing_tokenizer()
        model_cfg = self.src.model_config(tok.vocab_size if tok is not None else cfg.model.vocab_size)
        if self.P + self.R > model_cfg.max_len:
            raise ConfigError(f"data.max_prompt_len + data.max_response_len = {self.P + self.R} exceeds "
                              f"the model's max_len {model_cfg.max_len}")
        if tok is not None:
            where = cfg.model.tokenizer or cfg.model.pretrained or os.path.join(self.run_dir, "tokenizer")
            if tok.vocab_size > model_cfg.vocab_size:
                raise ConfigError(f"{where}: the tokenizer has {tok.vocab_size} tokens but the model's "
                                  f"vocabulary has {model_cfg.vocab_size}: they do not belong together")
            for name, i in (("eos", tok.eos_id), ("pad", tok.pad_id)):
                if not 0 <= i < model_cfg.vocab_size:
                    raise ConfigError(f"{where}: the tokenizer's {name} id {i} is outside the model's "
                                      f"vocabulary of {model_cfg.vocab_size}")
        return self._check_run_dir()

    def _check_run_dir(self) -> dict | None:
        cfg, d = self.cfg, self.run_dir
        cfg_path = os.path.join(d, "config.yaml")
        old = read_yaml(cfg_path, f"restore it, or delete {d} to start the run again")
        self.adopt_config = False
        # Changed logging or plot settings are recorded (a moved directory or progress bars not)
        self.rewrite_config = old is not None and bool(
            _diff_keys(old, self.resolved, ignore={"run.out_dir", "run.progress"}))
        if old is not None:
            diff = _diff_keys(old, self.resolved, ignore=_MAY_DIFFER)
            stopped = read_json(os.path.join(d, STOPPED_FILE), "delete it")
            if diff and stopped and _may_change(stopped["stage"], diff, cfg.algorithm):
                _log(f"{d} stopped at a non-finite {stopped['stage']} step {stopped['step']}; "
                     f"resuming it with the changed {', '.join(diff[:5])}")
                self.adopt_config = True
            elif diff:
                raise ConfigError(f"{d} holds a run with a different config (differs at "
                                  f"{', '.join(diff[:5])}); use another run.out_dir or delete it")
        elif cfg.run.reuse_from:
            self.reused = _check_reusable(cfg.run.reuse_from, self.resolved)
        self._read_kept()
        summary = read_json(os.path.join(d, "summary.json"), "delete it to redo the final evaluation")
        return None if self.adopt_config else summary

    def _read_kept(self) -> None:
        """The files an earlier attempt (or the run reused) kept between stages, verified."""
        d, again = self.run_dir, "delete it to recompute it"
        self.kept = {
            "reward_data": load_npz(os.path.join(d, "reward_data.npz"), ("input_ids", "attention_mask"),
                                    again),
            "reward_model": read_json(os.path.join(d, "reward_model.json"), again),
            "eval_initial": read_json(os.path.join(d, "eval_initial.json"), again),
        }

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        """Write the run directory (after :meth:`validate`): config, reused stages, tokenizer."""
        cfg = self.cfg
        os.makedirs(self.run_dir, exist_ok=True)
        cfg_path = os.path.join(self.run_dir, "config.yaml")
        if cfg.run.reuse_from and not os.path.exists(cfg_path):
            if "reward_model.json" not in self.reused:
                _log(f"run.reuse_from: reusing step 1 of {cfg.run.reuse_from}; step 2 is made again "
                     f"(its reward.* settings differ)")
            _reuse_stages(cfg.run.reuse_from, self.run_dir, self.reused)
            self._read_kept()  # the copied files, verified
        if self.adopt_config or self.rewrite_config or not os.path.exists(cfg_path):
            write_yaml(cfg_path, self.resolved)
        if os.path.exists(os.path.join(self.run_dir, STOPPED_FILE)) and is_primary():
            os.remove(os.path.join(self.run_dir, STOPPED_FILE))
        self.ckpt = RunCheckpoints(self.run_dir)
        resume = any(self.ckpt.latest_step(s) is not None for s in PIPELINE_STAGES)
        if resume:
            _log(f"resuming the run in {self.run_dir}")
        self.logger = (MetricsLogger.from_config(self.run_dir, cfg.logging, resume=resume, config=self.resolved)
                       if is_primary() else MetricsLogger(self.run_dir, backends=(), resume=resume))
        self.tok = self.src.tokenizer()
        init = None if self.mesh is None else (  # created sharded; a checkpoint is placed shard by shard
            lambda c, r: sharded_init(lambda k: init_params(c, k), self.mesh, logical_table(c), r))
        self.model_cfg, lm = self.src.model(self.tok, jax.random.fold_in(self.key, 0), init=init)
        self.init_lm = self.on_mesh(lm, self.model_cfg)

    def sharded(self, *model_cfgs) -> dict:
        """``make_train_step``'s keywords for this run's mesh (none on one device)."""
        return {} if self.mesh is None else {"mesh": self.mesh, "table": logical_table(*model_cfgs)}

    def new_state(self, params, tx, *model_cfgs):
        """A train state of ``params``; on a mesh, created sharded (``sharded_init``)."""
        return create_state(params, tx) if self.mesh is None else sharded_init(
            lambda p: create_state(p, tx), self.mesh, logical_table(*model_cfgs), self.on_mesh(params, *model_cfgs))

    def on_mesh(self, params, *model_cfgs):
        """``params`` placed on this run's mesh by the parameter rules (as they are on one device):
        a restored checkpoint and a sharded step's output then meet on the same devices."""
        if self.mesh is None or params is None:
            return params
        return place(params, tree_shardings(params, self.mesh, logical_table(*model_cfgs)))

    # ------------------------------------------------------------------ step 1: LM
    def _finished(self, stage: str) -> bool:
        """Whether ``stage``'s newest checkpoint is its last step (False when unreadable: the
        stage's own restore then deals with it)."""
        try:
            return bool((self.ckpt.restore_meta(stage) or {}).get("done", False))
        except Exception:  # noqa: BLE001 -- a damaged step is handled by RunCheckpoints.restore
            return False

    def _lm_stage(self, stage, params, data, sc) -> dict:
        tx = make_optimizer(sc.lr, total_steps=sc.steps, **optimizer_kwargs(sc))
        n = sc.batch_size if data is None else min(sc.batch_size, len(data["input_ids"]))
        step_fn = make_train_step(make_lm_loss(self.model_cfg), tx, micro_batches=math.gcd(sc.micro_batches, n),
                                  weight=lm_target_count, **self.sharded(self.model_cfg))
        mem = estimate(self.model_cfg, batch=sc.batch_size, seq_len=self.model_cfg.max_len,
                       mesh_shape=mesh_shape(self.mesh))
        _log(f"{stage}: memory per device (estimate): {mem.line()}")
        state = self.new_state(_copy_tree(params), tx, self.model_cfg)
        t0 = time.time()
        state = supervised_loop(stage=stage, state=state, step_fn=step_fn, data=data,
                                batch_size=sc.batch_size, n_steps=sc.steps, seed=self.cfg.run.seed,
                                hparams=None, ckpt=self.ckpt, logger=self.logger,
                                ckpt_every=10 * self.cfg.run.checkpoint_every, show_progress=self.show)
        self.times[stage] = time.time() - t0
        return state.params

    def language_model(self) -> dict:
        cfg = self.cfg
        params = self.init_lm
        self.pretrain_data = None
        # The texts are encoded when pretraining has steps left or PPO-ptx mixes them in (a run
        # that reuses or resumes a finished step 1 skips generating and encoding the corpus).
        done = cfg.pretrain.steps > 0 and self._finished("pretrain")
        need = (cfg.pretrain.steps > 0 and not done) or getattr(algorithm_section(cfg), "ptx_coef", 0.0) > 0
        texts = self.src.pretrain_texts() if need else []
        if done and not need:
            _log(f"step 1: pretraining finished earlier ({cfg.pretrain.steps} steps)")
            params = self._lm_stage("pretrain", params, None, cfg.pretrain)
        if texts:
            ids, mask = self.tok.encode(texts, self.model_cfg.max_len if cfg.model.pretrained is None
                                        else self.P + self.R, side="right", add_eos=True)
            self.pretrain_data = {"input_ids": ids, "attention_mask": mask, "loss_mask": mask}
        if cfg.pretrain.steps > 0 and self.pretrain_data is not None:
            _log(f"step 1: pretraining on {len(texts)} texts for {cfg.pretrain.steps} steps")
            params = self._lm_stage("pretrain", params, self.pretrain_data, cfg.pretrain)
        demos = self.src.demonstrations() if cfg.sft.steps > 0 else None
        if demos:
            enc = encode_prompt_response(self.tok, [p for p, _ in demos], [c for _, c in demos],
                                         self.P, self.R)
            data = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                    "loss_mask": enc["response_mask"]}
            _log(f"step 1b: SFT on {len(demos)} demonstrations for {cfg.sft.steps} steps")
            params = self._lm_stage("sft", params, data, cfg.sft)
        return params

    # ------------------------------------------------------------------ step 2: reward model
    def reward_data(self, sft_params) -> dict:
        path = os.path.join(self.run_dir, "reward_data.npz")
        if self.kept["reward_data"] is not None:
            self.comparisons = self.kept["reward_data"]
            return self.comparisons
        rc = self.cfg.reward
        if self.cfg.data.preferences:
            data = self.src.preference_arrays(self.tok, self.P, self.R)
        else:
            prompts = self.src.task.prompts("train", n=rc.n_prompts, seed=self.cfg.run.seed)
            ids, mask = encode_prompts(self.tok, prompts, self.P)
            _log(f"step 2: sampling {rc.k} responses to {len(prompts)} prompts for comparisons")
            samples = sample_many(self.model_cfg, sft_params, ids, mask,
                                  rng=jax.random.fold_in(self.key, 2), n=rc.k, max_new_tokens=self.R,
                                  temperature=rc.sample_temperature, eos_id=self.tok.eos_id,
                                  pad_id=self.tok.pad_id)
            data = label_comparisons(self, prompts, samples, np.random.default_rng([self.cfg.run.seed, 2]))
        save_npz(path, data)
        self.comparisons = data
        return data

    def reward_model(self, sft_params):
        cfg, rc = self.cfg, self.cfg.reward
        data = self.reward_data(sft_params)
        if not rc.train:
            _log(f"step 2: {len(data['input_ids'])} comparisons made; no reward model is trained "
                 f"(reward.train is false)")
            self.rm_cfg, self.rm_params = None, None
            return None, {}
        train, evals = split_comparisons(data, rc.eval_fraction)
        n_eval = len(evals["input_ids"])
        rm_cfg = self.model_cfg
        if rc.init == "scratch":
            rm_cfg = get_preset(rc.preset or cfg.model.preset, vocab_size=self.model_cfg.vocab_size,
                                max_len=self.model_cfg.max_len)
            backbone = init_params(rm_cfg, jax.random.fold_in(self.key, 3))
        else:
            backbone = sft_params
        self.rm_cfg = rm_cfg
        params = self.on_mesh(init_reward_model(rm_cfg, _copy_tree(backbone), jax.random.fold_in(self.key, 4)),
                              rm_cfg)
        hp = {"margin": jnp.float32(rc.margin), "center_coef": jnp.float32(rc.center_coef)}
        bs = min(rc.batch_size, len(train["input_ids"]))
        steps = rc.epochs * (len(train["input_ids"]) // bs)
        tx = make_optimizer(rc.lr, total_steps=steps, **optimizer_kwargs(rc))
        step_fn = make_train_step(make_rm_loss(rm_cfg), tx, micro_batches=math.gcd(rc.micro_batches, bs),
                                  **self.sharded(rm_cfg))
        done = self.ckpt.latest_step("reward") is not None and self.ckpt.restore_meta("reward").get("done")
        _log("step 2: the reward model is trained already (restored from its checkpoint)" if done else
             f"step 2: training the reward model on {len(train['input_ids'])} comparisons ({steps} steps), "
             f"{n_eval} held out")
        t0 = time.time()
        state = supervised_loop(stage="reward", state=self.new_state(params, tx, rm_cfg), step_fn=step_fn,
                                data=train, batch_size=bs, n_steps=steps, seed=cfg.run.seed,
                                hparams=hp, ckpt=self.ckpt, logger=self.logger,
                                ckpt_every=10 * cfg.run.checkpoint_every, show_progress=self.show)
        self.times["reward"] = time.time() - t0
        rm_params = self.rm_params = state.params

        info_path = os.path.join(self.run_dir, "reward_model.json")
        info = self.kept["reward_model"]
        if info is None:
            k, L = data["input_ids"].shape[1:]
            flat = lambda d, key: d[key].reshape(-1, L)  # noqa: E731
            info = {"rm_eval_accuracy": rm_accuracy(rm_cfg, rm_params, evals)}
            ceiling = label_ceiling_of(evals)
            if ceiling is not None:
                info["rm_label_ceiling"] = ceiling
            # Normalise on samples of the initial policy (Ziegler 2019) / reference responses
            # (Stiennon 2020): the comparison data are exactly such samples (chosen ones first).
            all_scores = score_in_batches(rm_cfg, rm_params, flat(data, "input_ids"),
                                          flat(data, "attention_mask")).reshape(-1, k)
            spread = float(np.std(all_scores))
            if not np.isfinite(all_scores).all() or spread < 1e-6:
                raise DegenerateError(
                    f"reward: the trained reward model scores all {all_scores.size} comparison samples "
                    f"{'non-finite' if not np.isfinite(spread) else f'alike (std {spread:.2g})'}, so "
                    f"it cannot rank responses; fix the preference data or reward.lr, delete "
                    f"{os.path.join(self.run_dir, 'checkpoints', 'reward')} and rerun",
                    "reward", steps, "scores")
            gain, bias = normalization(all_scores.reshape(-1), rc.normalize, all_scores[:, 0])
            info.update(gain=gain, bias=bias)
            write_json(info_path, info)
            self.logger.log(steps, {"eval/rm_accuracy": info["rm_eval_accuracy"]}, stage="reward")
        _log(f"reward model held-out accuracy {info['rm_eval_accuracy']:.3f}"
             + (f" (label ceiling {info['rm_label_ceiling']:.3f})" if "rm_label_ceiling" in info else ""))
        self.rm_norm = (info["gain"], info["bias"])
        return rm_params, info

    # ------------------------------------------------------------------ step 3: RL
    def evaluate(self, params, ref_params, prompts, ids, mask, n, key=None, decoder=None) -> dict:
        """Held-out samples of ``params`` (n per prompt), their gold reward and KL to ``ref_params``;
        ``key``: step 1-2's key (the initial policy) unless given (step 3's); ``decoder``: the
        sampler hook of a policy that is more than its LM (``Algorithm.decoder``)."""
        ec = self.cfg.eval
        interrupts.check()
        key = self.key if key is None else key
        samples = sample_many(self.model_cfg, params, ids, mask, rng=jax.random.fold_in(key, 5),
                              n=n, max_new_tokens=self.R, temperature=ec.temperature,
                              eos_id=self.tok.eos_id, pad_id=self.tok.pad_id, decoder=decoder)
        out = {"samples": samples}
        if self.src.gold is not None:
            out["gold"] = gold_of_samples(self.src.gold, self.tok, prompts, n, samples)
        out["kl"] = kl_of_samples(self.model_cfg, params, ref_params, samples, ec.temperature, self.P,
                                  decoder=decoder)
        if getattr(self, "rm_params", None) is not None:  # the proxy: the normalised RM score
            raw = score_in_batches(self.rm_cfg, self.rm_params, samples["sequences"], samples["sequence_mask"])
            out["proxy"] = (self.rm_norm[0] * raw + self.rm_norm[1]).reshape(len(ids), n)
        interrupts.check()
        return out

    def rl_stage(self, sft_params, rm_params, rm_info) -> RLStage:
        """Step 3's inputs and per-iteration bookkeeping for this run (state restored if resumed)."""
        self.stage = RLStage(self, sft_params, rm_params, rm_info)
        return self.stage

    def rl(self, sft_params, rm_params, rm_info):
        """Step 3 for the chosen algorithm: resume, iterate, evaluate, checkpoint."""
        stage = self.rl_stage(sft_params, rm_params, rm_info)
        iteration = stage.algo.make_iteration(stage.setup, stage.sec)
        state = stage.state
        self.online = None
        if self.cfg.online.rounds > 1:
            self.online = OnlineRounds(self, stage, rm_info)
            stage.save_at = set(round_ends(stage.sec.iterations, self.cfg.online.rounds))
        for it in range(stage.start, stage.sec.iterations):
            interrupts.check()
            if self.online is not None:
                self.online.enter(it, state)  # a new round: new comparisons and reward model
            t0 = time.time()
            state, metrics = iteration(state, stage.frozen, stage.batch(it), stage.hp)
            metrics = to_python(metrics)
            stage.after_iteration(it, state, metrics, time.time() - t0)
        stage.close()
        return state, stage.ref_params

    # ------------------------------------------------------------------ all
    def run(self, stop_after: str | None = None) -> dict | None:
        """The whole run (or, with ``stop_after='reward'``, steps 1-2 and the initial evaluation,
        which is what ``run.reuse_from`` needs); returns the summary (None when stopped early)."""
        t_start = time.time()
        finished = self.validate()
        if finished is not None:
            _log(f"{self.run_dir} holds a finished run: nothing to do (its summary follows)")
            if not os.path.exists(os.path.join(self.run_dir, "report.md")):
                write_report(self.run_dir, plots=self.cfg.run.plots)
            return finished
        self.setup()
        try:
            return self._stages(t_start, stop_after)
        except TrainingError as e:
            write_json(os.path.join(self.run_dir, STOPPED_FILE),
                       {"stage": e.stage, "step": e.step, "metric": e.metric})
            raise
        finally:
            self.logger.close()
            self.ckpt.close()

    def _stages(self, t_start: float, stop_after: str | None = None) -> dict | None:
        sft_params, rm_params, rm_info, initial = self.prepare()
        if stop_after == "reward":
            _log(f"stopping after step 2 as asked: {self.run_dir} can now be a run.reuse_from")
            return None
        state, ref_params = self.rl(sft_params, rm_params, rm_info)
        return self.finish(state, ref_params, rm_info, initial, t_start)

    def prepare(self):
        """Steps 1-2 and the initial policy's evaluation (each skipped when already done)."""
        sft_params = self.on_mesh(self.language_model(), self.model_cfg)
        rm_params, rm_info = self.reward_model(sft_params)
        rm_params = self.on_mesh(rm_params, self.rm_cfg)
        return sft_params, rm_params, rm_info, self.initial_evaluation(sft_params)

    def initial_evaluation(self, sft_params) -> dict:
        """The initial (step-1) policy on the held-out prompts: its gold reward and best-of-n
        (``eval_initial.json``, kept; logged as the eval stage's step 0)."""
        ec = self.cfg.eval
        eval_prompts = self.src.eval_prompts()
        e_ids, e_mask = encode_prompts(self.tok, eval_prompts, self.P)
        init_path = os.path.join(self.run_dir, "eval_initial.json")
        initial = self.kept["eval_initial"]
        if initial is None:
            _log(f"evaluating the initial policy on {len(eval_prompts)} held-out prompts")
            ev = self.evaluate(sft_params, sft_params, eval_prompts, e_ids, e_mask, ec.samples_per_prompt)
            initial = {}
            if "gold" in ev:
                initial["gold_reward_initial"] = float(ev["gold"].mean())
                bo = self.evaluate(sft_params, sft_params, eval_prompts, e_ids, e_mask, ec.best_of_n)
                initial[f"gold_reward_best_of_{ec.best_of_n}"] = float(bo["gold"].max(axis=1).mean())
            write_json(init_path, initial)
            self.logger.log(0, _eval_metrics(ev), stage="eval")
            self.kept["eval_initial"] = initial
        return initial

    def _write_samples(self, ref_params, final, prompts, ids, mask) -> None:
        """``samples.json``: a few held-out prompts with the reference (SFT) policy's and the final
        policy's responses (and gold rewards), which the report shows side by side."""
        write_json(os.path.join(self.run_dir, SAMPLES_FILE),
                   _samples_record(self, ref_params, final, prompts, ids, mask))

    def finish(self, state, ref_params, rm_info, initial, t_start) -> dict:
        """The final policy's evaluation, summary.json and report.md: from here on the run is done."""
        cfg, ec = self.cfg, self.cfg.eval
        eval_prompts = self.src.eval_prompts()
        e_ids, e_mask = encode_prompts(self.tok, eval_prompts, self.P)
        policy = self.stage.policy(state)
        final = self.evaluate(policy, ref_params, eval_prompts, e_ids, e_mask, ec.samples_per_prompt,
                              key=self.rl_key, decoder=self.algo.decoder(state, self.stage.hp))
        own = self.stage.own_eval(policy)
        self.logger.log(algorithm_section(cfg).iterations, {**_eval_metrics(final), **own}, stage="eval")
        self._write_samples(ref_params, final, eval_prompts, e_ids, e_mask)
        summary = dict(initial)
        summary["algorithm"] = cfg.algorithm
        summary.update({k: v for k, v in rm_info.items() if k.startswith("rm_")})
        if "gain" in rm_info:
            summary["rm_gain"], summary["rm_bias"] = rm_info["gain"], rm_info["bias"]
        if "gold" in final:
            summary["gold_reward_final"] = float(final["gold"].mean())
        if "proxy" in final:
            summary["proxy_score_final"] = float(final["proxy"].mean())
        summary.update({f"{k.split('/', 1)[1]}_final": v for k, v in own.items()})
        summary["kl_to_reference_final"] = float(final["kl"].mean())
        summary["kl_coef_final"] = float(state.kl.beta)
        # responses an iteration learns from (sampled, for an on-policy algorithm; from step 2's
        # data, for an offline one), and all of step 3's
        summary["responses_per_iteration"] = self.stage.responses_per_iteration
        summary["samples"] = self.stage.responses_per_iteration * algorithm_section(cfg).iterations
        summary["response_length_final"] = float(final["samples"]["mask"].sum(1).mean())
        summary["eos_rate_final"] = float(np.mean(np.any(
            (final["samples"]["tokens"] == self.tok.eos_id) & (final["samples"]["mask"] > 0), axis=1)))
        summary["rl_iteration_time_s"] = self.times.get("rl_iteration_s", float("nan"))
        summary["stage_time_s"] = {k: v for k, v in self.times.items() if k != "rl_iteration_s"}
        if getattr(self, "online", None) is not None:
            summary["rounds"] = self.online.finish(final)
        summary["wall_time_s"] = time.time() - t_start
        self.logger.close()
        self.ckpt.close()
        write_json(os.path.join(self.run_dir, "summary.json"), summary)  # from here on, the run is done
        write_report(self.run_dir, plots=self.cfg.run.plots)
        _log("done: " + ", ".join(f"{k}={v:.4g}" for k, v in summary.items() if isinstance(v, float)))
        return summary


def run_experiment(cfg: ExperimentConfig, stop_after: str | None = None) -> dict | None:
    return Pipeline(cfg).run(stop_after)
