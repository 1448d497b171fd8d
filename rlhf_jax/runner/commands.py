"""Commands on a run directory: ``sample``, ``export``, ``eval``.

Each reads the run back with :func:`rlhf_jax.runner.run_loader.load_run` (read-only; works on a
finished run and on a running one, whose newest complete checkpoints it reads) and never writes
into the run directory:

* ``sample RUN_DIR [--prompt TEXT ...] [--n K] [--temperature T] [--max-new-tokens N] [--seed S]
  [--compare] [--json]`` — generations of the newest policy with their reward-model score (as the
  RL stage saw it: ``gain·r + bias``, the no-EOS penalty and clipping of the algorithm's section)
  and, on a built-in task, their gold reward; ``--compare`` puts the reference policy's (the LM
  after step 1) generations from the same random keys beside them;
* ``export RUN_DIR OUT_DIR [--stage rl|sft|pretrain] [--reward-model] [--force]`` — the policy as a
  Hugging Face directory (``config.json``, ``model.safetensors``, tokenizer files) that
  ``transformers.AutoModelForCausalLM`` / ``AutoTokenizer`` load;
* ``eval RUN_DIR [--n-samples K] [--seed S]`` — held-out gold reward, reward-model score and
  KL(π‖π_ref) of the newest policy as one JSON object, computed as the pipeline's final
  evaluation is (on a finished run with the defaults it reproduces ``summary.json``'s
  ``gold_reward_final`` and ``kl_to_reference_final``).

Bad input (no such directory, no config.yaml, a stage without checkpoints, a non-empty OUT_DIR,
an out-of-range option) raises RunDirError / ConfigError, which the CLI reports in one line with
exit status 2 before any compute.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

from rlhf_jax.runner.config_loader import ConfigError
from rlhf_jax.runner.run_dir import RunDirError
from rlhf_jax.runner.run_loader import POLICY_STAGES, LoadedRun, load_run

__all__ = ["add_parsers", "load_run", "LoadedRun", "evaluate_run", "sample_run", "export_run",
           "REWARD_HEAD_FILE"]

DEFAULT_PROMPTS = 4
"""``sample`` without ``--prompt``: this many of the run's held-out evaluation prompts."""
REWARD_HEAD_FILE = "reward_head.json"
EVAL_RNG = 5
"""``jax.random.fold_in(PRNGKey(seed), 5)``: the key of the pipeline's evaluations."""
SAMPLE_RNG = 11

_HEAD_DOC = f"""\
--reward-model also writes OUT_DIR/reward_model: the reward model's backbone as a Hugging Face LM
directory (its lm_head is unused) with the tokenizer, and {REWARD_HEAD_FILE}:
  {{"kernel": [d_model floats], "head_bias": b, "gain": g, "bias": c, "normalize": MODE,
   "no_eos_penalty": P or null, "reward_clip": C, "eos_token_id": E, ...}}
The run's score of a prompt+response is g * (h . kernel + b) + c, where h is the backbone's final
hidden state (after the final norm: transformers' hidden_states[-1]) at the last non-pad token;
for left-padded rows pass position_ids = max(cumsum(attention_mask) - 1, 0). The RL stage further
replaced the score of a response without EOS by P (when not null) and clipped it to +-C (C > 0)."""


# ----------------------------------------------------------------------------- argument checks

def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{name} {value}: must be at least 1")
    return value


def _seed(run: LoadedRun, seed: int | None) -> int:
    return run.rl_seed if seed is None else seed


def _prompts(run: LoadedRun, given: list[str] | None) -> list[str]:
    prompts = list(given) if given else run.eval_prompts()[:DEFAULT_PROMPTS]
    for p, row in zip(prompts, run.tokenizer.tokenize(prompts)):
        if not row:
            raise ConfigError(f"--prompt {p!r}: the run's tokenizer makes no tokens of it")
        if len(row) > run.prompt_len:
            print(f"[rlhf_jax] --prompt {p!r}: {len(row)} tokens, only its last {run.prompt_len} "
                  f"(data.max_prompt_len) are used", file=sys.stderr)
    return prompts


# ----------------------------------------------------------------------------- sample

def _generate(run: LoadedRun, params, ids, mask, *, n, temperature, max_new_tokens, rng) -> dict:
    """Samples of ``params`` (the run's policy goes through its decoder, if it has one)."""
    from rlhf_jax.runner.evaluation import sample_many

    decoder = run.policy_decoder if params is run.policy_params else None
    return sample_many(run.model_cfg, params, ids, mask, rng=rng, n=n, max_new_tokens=max_new_tokens,
                       temperature=temperature, eos_id=run.tokenizer.eos_id, pad_id=run.tokenizer.pad_id,
                       decoder=decoder)


def sample_run(run: LoadedRun, prompts: list[str], *, n: int = 1, temperature: float | None = None,
               max_new_tokens: int | None = None, seed: int | None = None,
               compare: bool = False) -> list[dict]:
    """Generations of the newest policy (and the reference's with ``compare``), one record per
    generation: prompt, prompt_index, sample, model ('policy' / 'reference'), stage, step,
    response, rm_score (as the RL stage saw it) and rm_normalized (``gain·r + bias``; both None
    without a reward model), gold (None without a gold reward)."""
    import jax

    from rlhf_jax.runner.evaluation import decode_responses, gold_of_samples

    _check_sample_options(n, temperature, max_new_tokens)
    temperature = run.cfg.eval.temperature if temperature is None else float(temperature)
    N = run.response_len if max_new_tokens is None else max_new_tokens
    limit = min(run.model_cfg.max_len, run.rm_cfg.max_len if run.has_reward_model else 1 << 30)
    if run.prompt_len + N > limit:
        raise ConfigError(f"--max-new-tokens {N}: with the {run.prompt_len} prompt tokens "
                          f"(data.max_prompt_len) it exceeds the model's max_len {limit}; use at "
                          f"most {limit - run.prompt_len}")
    ids, mask = run.encode_prompts(prompts)
    rng = jax.random.fold_in(jax.random.PRNGKey(_seed(run, seed)), SAMPLE_RNG)
    models = [("policy", run.policy_params, run.policy_stage, run.policy_step)]
    if compare:
        models.append(("reference", run.reference_params, run.reference_stage, run.reference_step))
    records = []
    for model, params, stage, step in models:
        s = _generate(run, params, ids, mask, n=n, temperature=temperature, max_new_tokens=N, rng=rng)
        responses = decode_responses(run.tokenizer, s)
        rm, rm_norm = run.rm_scores(s) if run.has_reward_model else (None, None)
        gold = (gold_of_samples(run.gold, run.tokenizer, prompts, n, s).reshape(-1)
                if run.gold is not None else None)
        for i, text in enumerate(responses):
            records.append({"prompt_index": i // n, "prompt": prompts[i // n], "sample": i % n,
                            "model": model, "stage": stage, "step": step, "response": text,
                            "rm_score": None if rm is None else float(rm[i]),
                            "rm_normalized": None if rm is None else float(rm_norm[i]),
                            "gold": None if gold is None else float(gold[i])})
    records.sort(key=lambda r: (r["prompt_index"], r["sample"], r["model"] != "policy"))
    return records


def _check_sample_options(n: int, temperature: float | None, max_new_tokens: int | None) -> None:
    _positive("--n", n)
    if temperature is not None and not (np.isfinite(temperature) and temperature >= 0):
        raise ConfigError(f"--temperature {temperature}: must be >= 0 (0 is greedy decoding)")
    if max_new_tokens is not None:
        _positive("--max-new-tokens", max_new_tokens)


def _where(stage, step) -> str:
    return stage if step is None else f"{stage} step {step}"


def _print_samples(run: LoadedRun, records: list[dict]) -> None:
    print(f"{run.run_dir}: policy = {_where(run.policy_stage, run.policy_step)}, reference = "
          f"{_where(run.reference_stage, run.reference_step)}"
          + ("" if run.has_reward_model else "; no reward model yet (no rm scores)"))
    width = max(len(r["model"]) for r in records)
    last = None
    for r in records:
        if r["prompt_index"] != last:
            last = r["prompt_index"]
            print(f"\n[{last + 1}] {r['prompt']}")
        scores = "".join(f"  {k} {r[key]:+.3f}" for k, key in (("rm", "rm_score"), ("gold", "gold"))
                         if r[key] is not None)
        print(f"  {r['model']:<{width}}{scores}  | {r['response']}")


def _sample_command(args) -> int:
    _check_sample_options(args.n, args.temperature, args.max_new_tokens)  # before loading anything
    run = load_run(args.run_dir)
    prompts = _prompts(run, args.prompt)
    records = sample_run(run, prompts, n=args.n, temperature=args.temperature,
                         max_new_tokens=args.max_new_tokens, seed=args.seed, compare=args.compare)
    if args.json:
        for r in records:
            print(json.dumps(r))
    else:
        _print_samples(run, records)
    return 0


# ----------------------------------------------------------------------------- eval

def evaluate_run(run: LoadedRun, *, n_samples: int | None = None, seed: int | None = None) -> dict:
    """The pipeline's evaluation (``Pipeline.evaluate``) of the newest policy on the held-out
    prompts: ``n_samples`` (default ``eval.samples_per_prompt``) samples per prompt at
    ``eval.temperature`` from ``fold_in(PRNGKey(seed), 5)`` (default: step 3's seed, ``run.rl_seed``
    or else ``run.seed``, as the pipeline's final evaluation)."""
    import jax

    from rlhf_jax.runner.evaluation import gold_of_samples, kl_of_samples

    ec = run.cfg.eval
    n = ec.samples_per_prompt if n_samples is None else _positive("--n-samples", n_samples)
    seed = _seed(run, seed)
    prompts = run.eval_prompts()
    ids, mask = run.encode_prompts(prompts)
    s = _generate(run, run.policy_params, ids, mask, n=n, temperature=ec.temperature,
                  max_new_tokens=run.response_len,
                  rng=jax.random.fold_in(jax.random.PRNGKey(seed), EVAL_RNG))
    gold = gold_of_samples(run.gold, run.tokenizer, prompts, n, s) if run.gold is not None else None
    kl = kl_of_samples(run.model_cfg, run.policy_params, run.reference_params, s, ec.temperature,
                       run.prompt_len, decoder=run.policy_decoder)
    rm = run.rm_scores(s) if run.has_reward_model else None
    eos = np.any((s["tokens"] == run.tokenizer.eos_id) & (s["mask"] > 0), axis=1)
    return {
        "run_dir": run.run_dir, "algorithm": run.cfg.algorithm,
        "policy": run.policy_stage, "policy_step": run.policy_step,
        "reference": run.reference_stage, "reference_step": run.reference_step,
        "finished": run.summary is not None,
        "n_prompts": len(prompts), "samples_per_prompt": n, "temperature": ec.temperature, "seed": seed,
        "gold_reward": None if gold is None else float(gold.mean()),
        "rm_score": None if rm is None else float(rm[0].mean()),
        "rm_normalized": None if rm is None else float(rm[1].mean()),
        "kl_to_reference": float(kl.mean()),
        "response_length": float(s["mask"].sum(1).mean()),
        "eos_rate": float(eos.mean()),
    }


def _eval_command(args) -> int:
    if args.n_samples is not None:
        _positive("--n-samples", args.n_samples)
    run = load_run(args.run_dir)
    print(json.dumps(evaluate_run(run, n_samples=args.n_samples, seed=args.seed)))
    return 0


# ----------------------------------------------------------------------------- export

def _check_out_dir(out: str, run_dir: str, force: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise RunDirError(f"{out}: is a file, not a directory")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise RunDirError(f"{out}: exists and is not empty (use --force to replace it)")
    real_out, real_run = os.path.realpath(out), os.path.realpath(run_dir)
    if os.path.commonpath([real_out, real_run]) == real_out:
        raise RunDirError(f"{out}: holds the run directory {run_dir}; export somewhere else")


def _hf_ids(tok) -> dict:
    return {"eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id, "bos_token_id": tok.bos_id}


def _write_model(path: str, cfg, params, tok) -> None:
    from rlhf_jax.checkpoint.hf import save_pretrained

    save_pretrained(path, cfg, params, **_hf_ids(tok))
    tok.hf.save_pretrained(path)


def export_run(run: LoadedRun, out_dir: str, *, reward_model: bool = False,
               force: bool = False) -> str:
    """Write ``run``'s policy (and with ``reward_model`` its reward model) to ``out_dir`` (see the
    module docstring); built beside it and renamed into place, so a failure leaves no half
    export. Returns the absolute path."""
    out = os.path.abspath(out_dir)
    _check_out_dir(out, run.run_dir, force)
    if reward_model and not run.has_reward_model:
        raise RunDirError(f"{run.run_dir}: no trained reward model to export (reward_model.json is "
                          f"written when step 2 finishes)")
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out)}.", dir=parent)
    try:
        _write_model(tmp, run.model_cfg, run.policy_params, run.tokenizer)
        info = {"run_dir": run.run_dir, "algorithm": run.cfg.algorithm, "stage": run.policy_stage,
                "step": run.policy_step}
        if run.policy_decoder is not None:  # e.g. ILQL: the policy is the LM plus its heads
            info["note"] = (f"{run.cfg.algorithm}'s policy samples through heads on this language "
                            f"model (a shift of its logits) that a Hugging Face directory cannot hold: "
                            f"this is the language model alone")
            print(f"rlhf_jax: note: {info['note']}", file=sys.stderr)
        if reward_model:
            rm_dir = os.path.join(tmp, "reward_model")
            _write_model(rm_dir, run.rm_cfg, run.rm_params["backbone"], run.tokenizer)
            sec = _section(run)
            head = {k: np.asarray(v, np.float32) for k, v in run.rm_params["head"].items()}
            with open(os.path.join(rm_dir, REWARD_HEAD_FILE), "w", encoding="utf-8") as f:
                json.dump({"kernel": [float(x) for x in head["kernel"].reshape(-1)],
                           "head_bias": float(head["bias"]), "gain": float(run.rm_info["gain"]),
                           "bias": float(run.rm_info["bias"]), "normalize": run.cfg.reward.normalize,
                           "no_eos_penalty": getattr(sec, "no_eos_penalty", None),
                           "reward_clip": getattr(sec, "reward_clip", 0.0),
                           "eos_token_id": run.tokenizer.eos_id,
                           "score": "gain * (h . kernel + head_bias) + bias; h = final hidden state "
                                    "(after the final norm) at the last non-pad token",
                           "step": run.rm_step}, f, indent=2)
            info["reward_model"] = "reward_model"
        with open(os.path.join(tmp, "rlhf_jax_export.json"), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
        _usual_modes(tmp)
        if os.path.isdir(out):
            if os.listdir(out):
                shutil.rmtree(out)  # --force (checked above)
            else:
                os.rmdir(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _usual_modes(root: str) -> None:
    """The permissions a directory made with ``mkdir`` would have (``mkdtemp`` makes it 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(dirpath, d), 0o777 & ~umask)
        for f in files:
            os.chmod(os.path.join(dirpath, f), 0o666 & ~umask)


def _section(run: LoadedRun):
    from rlhf_jax.runner.schema import algorithm_section

    return algorithm_section(run.cfg)


def _export_command(args) -> int:
    run_dir = os.path.abspath(args.run_dir)
    _check_out_dir(os.path.abspath(args.out_dir), run_dir, args.force)  # before loading anything
    run = load_run(run_dir, stage=args.stage, reward_model=args.reward_model)
    out = export_run(run, args.out_dir, reward_model=args.reward_model, force=args.force)
    print(f"exported the {_where(run.policy_stage, run.policy_step)} policy of {run.run_dir} to {out}"
          + (f" (reward model in {os.path.join(out, 'reward_model')})" if args.reward_model else ""))
    return 0


# ----------------------------------------------------------------------------- parsers

def add_parsers(sub) -> None:
    """Register the run-directory commands on the CLI's subparsers."""
    run_dir_help = "a run directory (run.out_dir of a finished or running run)"
    s = sub.add_parser("sample", help="generations of a run's newest policy, with RM and gold scores",
                       description="Generations of the newest policy of RUN_DIR with their "
                       "reward-model score (normalised as the RL stage saw it) and, on a built-in "
                       "task, their gold reward.")
    s.add_argument("run_dir", help=run_dir_help)
    s.add_argument("--prompt", action="extend", nargs="+", metavar="TEXT",
                   help=f"prompt(s) to continue (repeatable; default: the first {DEFAULT_PROMPTS} "
                   f"held-out evaluation prompts of the run)")
    s.add_argument("--n", type=int, default=1, metavar="K", help="samples per prompt (default 1)")
    s.add_argument("--temperature", type=float, default=None, metavar="T",
                   help="sampling temperature; 0 is greedy (default: the run's eval.temperature)")
    s.add_argument("--max-new-tokens", type=int, default=None, metavar="N",
                   help="response length (default: the run's data.max_response_len)")
    s.add_argument("--seed", type=int, default=None, metavar="S",
                   help="default: the run's step-3 seed (run.rl_seed, else run.seed)")
    s.add_argument("--compare", action="store_true",
                   help="also show the reference policy's (the LM after step 1) generations")
    s.add_argument("--json", action="store_true",
                   help="one JSON object per generation (prompt_index, prompt, sample, model, "
                   "stage, step, response, rm_score, rm_normalized, gold)")
    s.set_defaults(handler=_sample_command)

    e = sub.add_parser("export", help="a run's policy as a Hugging Face directory",
                       description="Write the policy of RUN_DIR as a Hugging Face directory\n"
                       "(config.json, model.safetensors, the tokenizer, rlhf_jax_export.json) that\n"
                       "transformers' AutoModelForCausalLM and AutoTokenizer load.",
                       epilog=_HEAD_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run_dir", help=run_dir_help)
    e.add_argument("out_dir", help="the directory to write (must not exist or be empty, unless --force)")
    e.add_argument("--stage", choices=POLICY_STAGES, default=None,
                   help="which policy: the newest RL checkpoint, or step 1's SFT / pretrained LM "
                   "(default: the newest the run has)")
    e.add_argument("--reward-model", action="store_true",
                   help=f"also write the reward model to OUT_DIR/reward_model (+ {REWARD_HEAD_FILE})")
    e.add_argument("--force", action="store_true", help="replace OUT_DIR if it is not empty")
    e.set_defaults(handler=_export_command)

    v = sub.add_parser("eval", help="held-out gold reward, RM score and KL of a run's newest policy",
                       description="Evaluate the newest policy of RUN_DIR on its held-out prompts as "
                       "the pipeline does (one JSON object: gold_reward, rm_score, rm_normalized, "
                       "kl_to_reference, response_length, eos_rate, ...). With the defaults, on a "
                       "finished run it reproduces summary.json's gold_reward_final and "
                       "kl_to_reference_final.")
    v.add_argument("run_dir", help=run_dir_help)
    v.add_argument("--n-samples", type=int, default=None, metavar="K",
                   help="samples per prompt (default: the run's eval.samples_per_prompt)")
    v.add_argument("--seed", type=int, default=None, metavar="S",
                   help="the evaluation key is fold_in(PRNGKey(S), 5) (default: the run's step-3 "
                   "seed, run.rl_seed or else run.seed, as its final evaluation)")
    v.set_defaults(handler=_eval_command)
