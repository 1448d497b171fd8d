"""Read a run directory back (read-only): what a run used and the newest parameters it saved.

:func:`load_run` rebuilds, from ``run_dir/config.yaml`` (the resolved config a run writes) and its
checkpoints, exactly what :class:`~rlhf_jax.runner.pipeline.Pipeline` had in memory: the tokenizer
(``model.tokenizer`` / ``model.pretrained``, or the one the run trained in ``run_dir/tokenizer``),
the policy's ``TransformerConfig``, the reference policy (the LM after step 1: the last of
``checkpoints/pretrain`` and ``checkpoints/sft`` the config trains, or the initial weights when it
trains neither), the reward model (``checkpoints/reward`` + the ``gain``/``bias`` normalisation of
``reward_model.json``) and the newest policy (the newest RL checkpoint, else the reference).
Restore templates are shapes only (``jax.eval_shape`` of the pipeline's own initialisers), so
nothing is trained or allocated twice.

Nothing is written: checkpoints are opened with read-only Orbax managers (no temporary-directory
clean-up, no set-aside of a damaged step), the tokenizer is never trained, no metrics file is
opened. On a running run the newest *complete* checkpoint of each stage is read (Orbax lists only
finalised steps; a step that cannot be read falls back to the one before it). The ``sample``,
``export`` and ``eval`` commands (``runner/commands.py``) are built on it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import numpy as np

from rlhf_jax.algorithms.base import RLSetup
from rlhf_jax.algorithms.registry import ALGORITHMS
from rlhf_jax.algorithms.reward_model import init_reward_model, score_in_batches
from rlhf_jax.algorithms.sections import optimizer_kwargs
from rlhf_jax.algorithms.train_state import create_state, make_optimizer
from rlhf_jax.checkpoint.orbax import RunCheckpoints
from rlhf_jax.data.encoding import encode_prompts
from rlhf_jax.models import get_preset, init_params, to_layout
from rlhf_jax.runner import sources
from rlhf_jax.runner.config_loader import ConfigError, load_config
from rlhf_jax.runner.run_dir import RunDirError, read_json
from rlhf_jax.runner.schema import ExperimentConfig, algorithm_section

__all__ = ["LoadedRun", "load_run", "rl_steps", "LM_STAGES", "POLICY_STAGES"]

LM_STAGES = ("pretrain", "sft")
"""Step 1's trained stages, in pipeline order."""
POLICY_STAGES = ("rl",) + LM_STAGES
"""The stages whose policy a command may ask for (``export --stage``)."""


@dataclasses.dataclass
class LoadedRun:
    """A run directory read back. ``*_stage`` is 'rl', 'sft', 'pretrain' or 'initial' (the
    weights step 1 starts from: ``model.pretrained`` or the seeded initialisation); ``*_step``
    the checkpoint step (None for 'initial'); the reward-model fields are None while the run has
    not finished step 2 (or when not asked for)."""
    run_dir: str
    cfg: Any                         # ExperimentConfig (run.out_dir = run_dir)
    sources: sources.Sources
    tokenizer: Any                   # rlhf_jax.data.Tokenizer
    model_cfg: Any                   # the policy's TransformerConfig
    policy_params: Any
    policy_stage: str
    policy_step: int | None
    reference_params: Any            # the LM after step 1
    reference_stage: str
    reference_step: int | None
    rm_cfg: Any = None
    rm_params: Any = None            # {'backbone', 'head'}
    rm_info: dict | None = None      # reward_model.json: gain, bias, held-out accuracy, ...
    #   (iterated online RLHF: the newest round's RM, its gain and bias, and ``round``)
    rm_step: int | None = None
    summary: dict | None = None      # summary.json when the run has finished
    policy_decoder: Any = None       # the sampler hook of a policy that is more than its LM
    #   (ILQL's heads: ``Algorithm.decoder``), None for a plain LM

    @property
    def gold(self) -> Callable | None:
        """The built-in task's gold reward ``gold(prompts, responses) -> [n]`` (None without)."""
        return self.sources.gold

    @property
    def rl_seed(self) -> int:
        """Step 3's seed (``run.rl_seed``, else ``run.seed``): its evaluations' key is
        ``fold_in(PRNGKey(rl_seed), 5)``."""
        rc = self.cfg.run
        return rc.seed if rc.rl_seed is None else rc.rl_seed

    @property
    def prompt_len(self) -> int:
        return self.cfg.data.max_prompt_len

    @property
    def response_len(self) -> int:
        return self.cfg.data.max_response_len

    @property
    def has_reward_model(self) -> bool:
        return self.rm_params is not None

    def eval_prompts(self) -> list[str]:
        """The held-out prompts the run evaluates on (``task.n_eval_prompts`` of them)."""
        return self.sources.eval_prompts()

    def encode_prompts(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded ``(ids, mask)`` ``[n, prompt_len]`` as the run encodes its prompts."""
        return encode_prompts(self.tokenizer, prompts, self.prompt_len)

    def rm_scores(self, samples: dict) -> tuple[np.ndarray, np.ndarray]:
        """``(score, normalized)`` ``[n]`` of samples (``sample_many``'s dict): ``normalized`` is
        ``gain·r + bias`` of the reward model on the whole sequence; ``score`` what the RL stage
        saw (``algorithms/rollout.score_responses``): the section's ``no_eos_penalty`` instead
        for a response without EOS, clipped to ±``reward_clip``."""
        if self.rm_params is None:
            raise RunDirError(f"{self.run_dir}: no trained reward model yet (reward_model.json is "
                              f"written when step 2 finishes)")
        raw = score_in_batches(self.rm_cfg, self.rm_params, samples["sequences"],
                               samples["sequence_mask"])
        normalized = (self.rm_info["gain"] * raw + self.rm_info["bias"]).astype(np.float32)
        score = normalized
        sec = algorithm_section(self.cfg)
        penalty, clip = getattr(sec, "no_eos_penalty", None), getattr(sec, "reward_clip", 0.0)
        if penalty is not None:
            eos = np.any((samples["tokens"] == self.tokenizer.eos_id) & (samples["mask"] > 0), -1)
            score = np.where(eos, score, np.float32(penalty))
        if clip > 0:
            score = np.clip(score, -clip, clip)
        return score.astype(np.float32), normalized


class _ReadOnlyCheckpoints(RunCheckpoints):
    """:class:`RunCheckpoints` whose managers never write (no clean-up of a running run's
    temporary directories, no set-aside of a damaged step)."""

    def _manager(self, stage: str):
        import orbax.checkpoint as ocp

        if stage not in self._managers:
            absl = logging.getLogger("absl")  # it warns that a read-only manager will not save
            level = absl.level
            absl.setLevel(max(level, logging.ERROR))
            try:
                opts = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                                    cleanup_tmp_directories=False,
                                                    enable_async_checkpointing=False)
                self._managers[stage] = ocp.CheckpointManager(os.path.join(self.root, stage),
                                                              options=opts)
            finally:
                absl.setLevel(level)
        return self._managers[stage]

    def steps(self, stage: str) -> list[int]:
        """The complete steps of ``stage``, newest first ([] when it has none)."""
        if not os.path.isdir(os.path.join(self.root, stage)):
            return []
        return sorted(self._manager(stage).all_steps(), reverse=True)

    def restore_newest(self, stage: str, template: Any) -> tuple[Any, dict]:
        """The newest readable checkpoint of ``stage`` restored into ``template``'s structure."""
        steps = self.steps(stage)
        if not steps:
            raise RunDirError(f"{os.path.join(self.root, stage)}: no checkpoint")
        first = None
        for s in steps:
            try:
                return self.restore(stage, template, step=s)
            except RunDirError as e:
                first = first or e
        raise first


def _shapes(fn, *args):
    return jax.eval_shape(fn, *args)


def load_run(run_dir: str, *, stage: str | None = None, reward_model: bool = True,
             step: int | None = None) -> LoadedRun:
    """Read ``run_dir`` back; see the module docstring.

    ``stage`` picks the policy: None — the newest (RL if the run has an RL checkpoint, else step
    1's LM); 'rl', 'sft' or 'pretrain' — that stage's newest checkpoint (RunDirError when the
    run has none). ``step``: that RL checkpoint (one of :func:`rl_steps`) instead of the newest.
    ``reward_model=False`` skips reading the reward model. Every problem is a
    :class:`RunDirError` (or ConfigError for config.yaml) naming the path and what is missing.
    """
    if stage is not None and stage not in POLICY_STAGES:
        raise ConfigError(f"stage {stage!r}: choose one of {', '.join(POLICY_STAGES)}")
    if step is not None and stage not in (None, "rl"):
        raise ConfigError(f"step {step}: only an RL checkpoint is chosen by step")
    run_dir = os.path.abspath(run_dir)
    if not os.path.exists(run_dir):
        raise RunDirError(f"{run_dir}: no such run directory")
    if not os.path.isdir(run_dir):
        raise RunDirError(f"{run_dir}: not a directory (expected a run directory)")
    cfg_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(cfg_path):
        raise RunDirError(f"{run_dir}: no config.yaml (not a run directory, or the run has not "
                          f"started)")
    # The directory may have been moved since: it is where the run is now.
    cfg = load_config(ExperimentConfig, cfg_path, [f"run.out_dir={run_dir}"])
    src = sources.Sources(cfg, run_dir)
    tok = src.existing_tokenizer()
    if tok is None:
        raise RunDirError(f"{os.path.join(run_dir, 'tokenizer')}: missing (the run trains its "
                          f"tokenizer before step 1; it has not got that far)")
    model_cfg = src.model_config(tok.vocab_size)
    ck = _ReadOnlyCheckpoints(run_dir)
    try:
        if step is not None and step not in ck.steps("rl"):
            raise RunDirError(f"{run_dir}: no RL checkpoint at step {step} (it keeps "
                              f"{', '.join(map(str, sorted(ck.steps('rl')))) or 'none'})")
        return _load(run_dir, cfg, src, tok, model_cfg, ck, "rl" if step is not None else stage,
                     reward_model, step)
    finally:
        ck.close()


def rl_steps(run_dir: str) -> list[int]:
    """The complete RL checkpoints ``run_dir`` keeps, oldest first ([] when none)."""
    ck = _ReadOnlyCheckpoints(os.path.abspath(run_dir))
    try:
        return sorted(ck.steps("rl"))
    finally:
        ck.close()


def _lm_stages(cfg, src) -> list[str]:
    """Step 1's stages this config trains (as ``Pipeline.language_model`` decides; no text read:
    a configured file is non-empty, or the run would have stopped at validation)."""
    out = []
    if cfg.pretrain.steps > 0 and (cfg.data.pretrain_text or src.task is not None):
        out.append("pretrain")
    if cfg.sft.steps > 0 and (cfg.data.sft or src.task is not None):
        out.append("sft")
    return out


def _load(run_dir, cfg, src, tok, model_cfg, ck, stage, reward_model, step=None) -> LoadedRun:
    key = jax.random.PRNGKey(cfg.run.seed)
    trained = _lm_stages(cfg, src)
    init_rng = jax.random.fold_in(key, 0)
    # Shapes of the initial LM (a Hugging Face directory's weights have those of its config).
    lm_shapes = _shapes(lambda r: init_params(model_cfg, r), init_rng)

    def initial():  # the weights step 1 starts from (Sources.model), when it trains nothing
        if cfg.model.pretrained:
            from rlhf_jax.hf import load_pretrained

            return to_layout(model_cfg, load_pretrained(cfg.model.pretrained)[1])
        return init_params(model_cfg, init_rng)

    def lm_checkpoint(name):
        if not ck.steps(name):
            raise RunDirError(f"{run_dir}: no checkpoint of the {name} stage in checkpoints/{name} "
                              f"(the run has not trained it yet)")
        sc = getattr(cfg, name)
        tx = make_optimizer(sc.lr, total_steps=sc.steps, **optimizer_kwargs(sc))
        template = {"train": _shapes(lambda p: create_state(p, tx), lm_shapes)}
        restored, meta = ck.restore_newest(name, template)
        return restored["train"].params, int(meta["step"])

    if stage in LM_STAGES and stage not in trained:
        raise RunDirError(f"{run_dir}: the run has no {stage} stage ({stage}.steps is "
                          f"{getattr(cfg, stage).steps}" + ("" if getattr(cfg, stage).steps == 0 else
                                                            ", but it has no data for it") + ")")
    if stage == "rl" and not ck.steps("rl"):
        raise RunDirError(f"{run_dir}: no checkpoint of the rl stage in checkpoints/rl (the run "
                          f"has not reached step 3's first checkpoint yet)")

    # ---- the reference: the LM after step 1
    if trained:
        ref_stage = trained[-1]
        ref_params, ref_step = lm_checkpoint(ref_stage)
    else:
        ref_stage, ref_step = "initial", None
        ref_params = initial()

    # ---- the reward model
    rm_cfg = model_cfg
    if cfg.reward.init == "scratch":
        rm_cfg = get_preset(cfg.reward.preset or cfg.model.preset, vocab_size=model_cfg.vocab_size,
                            max_len=model_cfg.max_len)
    info_path = os.path.join(run_dir, "reward_model.json")
    rm_info = read_json(info_path, "delete it to recompute it (rerun the experiment)")
    rm_params = rm_step = None
    need_rl = stage == "rl" or (stage is None and bool(ck.steps("rl")))

    def rm_shapes():
        backbone = (_shapes(lambda r: init_params(rm_cfg, r), init_rng) if cfg.reward.init == "scratch"
                    else lm_shapes)
        return _shapes(lambda b, r: init_reward_model(rm_cfg, b, r), backbone, init_rng)

    if need_rl and rm_info is None and cfg.reward.train:
        raise RunDirError(f"{run_dir}: has RL checkpoints but no reward_model.json (the reward "
                          f"model's normalisation); the run directory is incomplete")
    if reward_model and rm_info is not None:
        rc = cfg.reward
        tx = make_optimizer(rc.lr, total_steps=1, **optimizer_kwargs(rc))  # shapes only
        template = {"train": _shapes(lambda p: create_state(p, tx), rm_shapes())}
        if not ck.steps("reward"):
            raise RunDirError(f"{run_dir}: reward_model.json is there but checkpoints/reward holds "
                              f"no checkpoint of the reward model")
        stage_rm = "reward"
        for r in range(cfg.online.rounds, 1, -1):  # iterated online RLHF: the newest round's RM
            rec = read_json(os.path.join(run_dir, "online", f"round{r}.json"), "delete it")
            if rec is not None and "gain" in rec and ck.steps(f"reward_round{r}"):
                stage_rm = f"reward_round{r}"
                rm_info = dict(rm_info, gain=rec["gain"], bias=rec["bias"], round=r)
                break
        restored, meta = ck.restore_newest(stage_rm, template)
        rm_params, rm_step = restored["train"].params, int(meta["step"])
    elif not reward_model:
        rm_info = None

    # ---- the policy
    pol_params, pol_stage, pol_step = ref_params, ref_stage, ref_step
    decoder = None
    if stage in LM_STAGES and stage != ref_stage:
        pol_params, pol_step = lm_checkpoint(stage)
        pol_stage = stage
    elif need_rl:
        pol_params, pol_step, decoder = _restore_rl(cfg, src, tok, model_cfg, rm_cfg, ck, lm_shapes,
                                                    rm_shapes(), step, base=ref_params)
        pol_stage = "rl"

    summary = read_json(os.path.join(run_dir, "summary.json"), "delete it to redo the final "
                        "evaluation (rerun the experiment)")
    return LoadedRun(run_dir=run_dir, cfg=cfg, sources=src, tokenizer=tok, model_cfg=model_cfg,
                     policy_params=pol_params, policy_stage=pol_stage, policy_step=pol_step,
                     reference_params=ref_params, reference_stage=ref_stage,
                     reference_step=ref_step, rm_cfg=rm_cfg if rm_params is not None else None,
                     rm_params=rm_params, rm_info=rm_info, rm_step=rm_step,
                     summary=summary, policy_decoder=decoder)


def _restore_rl(cfg, src, tok, model_cfg, rm_cfg, ck, lm_shapes, rm_shapes, step=None, base=None):
    """The newest RL checkpoint's policy (or step ``step``'s), restored into the algorithm's own
    state (as ``Pipeline.rl`` builds it, shapes only); with LoRA, its adapters merged into ``base``
    (the reference)."""
    algo = ALGORITHMS.get(cfg.algorithm)
    sec = algorithm_section(cfg)
    P, R = cfg.data.max_prompt_len, cfg.data.max_response_len
    ids, mask = encode_prompts(tok, src.rl_prompts(), P)
    rl_seed = cfg.run.seed if cfg.run.rl_seed is None else cfg.run.rl_seed
    setup = RLSetup(model_cfg=model_cfg, rm_cfg=rm_cfg, policy_params=None, rm_params=None,
                    prompt_ids=ids, prompt_mask=mask, response_len=R, eos_id=tok.eos_id,
                    pad_id=tok.pad_id, seed=rl_seed, ptx=None, lora=cfg.lora)

    def init(policy, rm, rng):
        return algo.init(dataclasses.replace(setup, policy_params=policy, rm_params=rm), sec, rng)

    template = {"rl": _shapes(init, lm_shapes, rm_shapes,
                              jax.random.fold_in(jax.random.PRNGKey(rl_seed), 7))}
    restored, meta = (ck.restore_newest("rl", template) if step is None else
                      ck.restore("rl", template, step=step))
    state = restored["rl"]
    return (setup.full_policy(algo.policy(state), base), int(meta["step"]),
            algo.decoder(state, algo.hparams(sec)))
