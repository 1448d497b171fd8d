"""The commands on a run directory (``sample``, ``export``, ``eval``) on one tiny finished run.

The module fixture trains one tiny quickstart run in-process; every test reads it (or a copy) back
through :func:`rlhf_jax.runner.run_loader.load_run` or the CLI, and the last test checks that none
of them wrote a byte into it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlhf_jax.runner.cli import main
from rlhf_jax.runner.commands import export_run
from rlhf_jax.runner.config_loader import load_config
from rlhf_jax.runner.pipeline import Pipeline
from rlhf_jax.runner.run_loader import load_run
from rlhf_jax.runner.schema import ExperimentConfig

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(ROOT, "experiments", "quickstart.yaml")
TINY = ["task.corpus_size=300", "task.n_eval_prompts=4", "pretrain.steps=30", "pretrain.batch_size=16",
        "reward.n_prompts=40", "reward.k=2", "reward.epochs=1", "reward.batch_size=8",
        "ppo.iterations=4", "ppo.batch_size=8", "ppo.minibatches=2", "ppo.epochs=1",
        "eval.samples_per_prompt=2", "eval.best_of_n=2", "run.checkpoint_every=2",
        "run.progress=false"]
ITERATIONS = 4


def digest(path) -> dict:
    """{relative path: sha256 (files) or 'dir'} of everything under ``path``."""
    out = {}
    for dirpath, dirs, files in os.walk(path):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), path)] = "dir"
        for name in files:
            full = os.path.join(dirpath, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("commands") / "run")
    # run.plots=false: the plots take seconds and no command reads them
    cfg = load_config(ExperimentConfig, QUICKSTART, [f"run.out_dir={out}", *TINY, "run.plots=false"])
    summary = Pipeline(cfg).run()
    return {"dir": out, "summary": summary, "digest": digest(out)}


@pytest.fixture(scope="module")
def loaded(run):
    return load_run(run["dir"])


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# ----------------------------------------------------------------------------- load_run

def test_load_run_reconstructs_the_run(run, loaded):
    r = loaded
    assert (r.policy_stage, r.policy_step) == ("rl", ITERATIONS)
    assert (r.reference_stage, r.reference_step) == ("pretrain", 30)
    assert r.has_reward_model and r.rm_step is not None
    info = json.load(open(os.path.join(run["dir"], "reward_model.json")))
    assert (r.rm_info["gain"], r.rm_info["bias"]) == (info["gain"], info["bias"])
    assert r.summary == json.load(open(os.path.join(run["dir"], "summary.json")))
    assert r.gold is not None and r.tokenizer.vocab_size == r.model_cfg.vocab_size
    # RL moved the policy away from the reference; the reward model has its own head
    diff = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                        r.policy_params, r.reference_params)
    assert max(jax.tree.leaves(diff)) > 1e-4
    assert r.rm_params["head"]["kernel"].shape == (r.rm_cfg.d_model,)


def test_load_run_reads_the_newest_complete_checkpoint_of_a_running_run(run, loaded, tmp_path):
    """A run still in step 3 (no summary yet) whose next RL save is half written and whose newest
    complete one is unreadable: the loader reads the one before, without cleaning up or setting
    aside anything (the running process owns those files)."""
    copy = tmp_path / "running"
    shutil.copytree(run["dir"], copy)
    os.remove(copy / "summary.json")
    rl = copy / "checkpoints" / "rl"
    shutil.copytree(rl / str(ITERATIONS), rl / f"{ITERATIONS + 2}.orbax-checkpoint-tmp-1700000000000000")
    for dirpath, _, files in os.walk(rl / str(ITERATIONS)):
        for f in files:
            open(os.path.join(dirpath, f), "wb").close()
    before = digest(copy)
    r = load_run(str(copy))
    assert (r.policy_stage, r.policy_step, r.summary) == ("rl", ITERATIONS - 2, None)
    assert digest(copy) == before
    diff = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                        r.policy_params, loaded.policy_params)
    assert max(jax.tree.leaves(diff)) > 0  # an earlier policy than the finished run's
    # with no RL checkpoint yet, the newest policy is step 1's LM
    shutil.rmtree(rl)
    r = load_run(str(copy), reward_model=False)
    assert (r.policy_stage, r.policy_step, r.rm_params) == ("pretrain", 30, None)


# ----------------------------------------------------------------------------- eval

def test_eval_reproduces_the_summary(run, capsys):
    rc, out, err = _cli(capsys, "eval", run["dir"])
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    ev = json.loads(lines[0])
    s = run["summary"]
    assert ev["policy"] == "rl" and ev["policy_step"] == ITERATIONS and ev["finished"]
    assert (ev["n_prompts"], ev["samples_per_prompt"], ev["seed"]) == (4, 2, 0)
    # the same samples as the pipeline's final evaluation: equal to the last bit
    assert ev["gold_reward"] == s["gold_reward_final"], (ev, s)
    assert ev["kl_to_reference"] == s["kl_to_reference_final"], (ev, s)
    assert ev["response_length"] == s["response_length_final"]
    assert ev["eos_rate"] == s["eos_rate_final"]
    assert np.isfinite(ev["rm_score"]) and np.isfinite(ev["rm_normalized"])
    # another seed is other samples (the shapes are the same: nothing is compiled again)
    rc, out, _ = _cli(capsys, "eval", run["dir"], "--seed", 1)
    other = json.loads(out)
    assert rc == 0 and other["seed"] == 1
    assert other["gold_reward"] != ev["gold_reward"]


# ----------------------------------------------------------------------------- sample

# Each sampling call below makes 8 responses of the run's length, like the evaluation above: the
# sampler is compiled once for the module (the subprocess checks other lengths and greedy decoding).
PROMPTS = ["the movie was", "my friend said the pizza"]


def test_sample_generates_for_exactly_the_given_prompts(run, loaded, capsys):
    rc, out, err = _cli(capsys, "sample", run["dir"], "--prompt", PROMPTS[0], "--prompt", PROMPTS[1],
                        "--n", 4, "--compare", "--json")
    assert rc == 0, err
    recs = [json.loads(line) for line in out.strip().splitlines()]
    assert len(recs) == 2 * 4 * 2  # prompts x samples x (policy, reference)
    assert [r["prompt"] for r in recs] == [p for p in PROMPTS for _ in range(8)]
    assert {(r["prompt_index"], r["sample"], r["model"]) for r in recs} == {
        (i, k, m) for i in range(2) for k in range(4) for m in ("policy", "reference")}
    for r in recs:
        assert (r["stage"], r["step"]) == (("rl", ITERATIONS) if r["model"] == "policy"
                                           else ("pretrain", 30))
        assert np.isfinite(r["rm_score"]) and np.isfinite(r["rm_normalized"]) and -1 <= r["gold"] <= 1
        assert isinstance(r["response"], str)
    # the scores are those of the decoded texts: the gold reward of the printed responses
    pol = [r for r in recs if r["model"] == "policy"]
    gold = loaded.gold([r["prompt"] for r in pol], [r["response"] for r in pol])
    np.testing.assert_allclose(gold, [r["gold"] for r in pol], atol=1e-6)

    rc, out, err = _cli(capsys, "sample", run["dir"], "--prompt", PROMPTS[0], "--n", 8)
    assert rc == 0, err
    assert f"[1] {PROMPTS[0]}\n" in out and "[2]" not in out
    body = out.split(f"[1] {PROMPTS[0]}\n", 1)[1].splitlines()
    assert len(body) == 8 and all(line.lstrip().startswith("policy  rm ") for line in body), out


def test_sample_defaults_to_the_held_out_prompts(run, loaded, capsys):
    rc, out, err = _cli(capsys, "sample", run["dir"], "--json", "--n", 2)
    assert rc == 0, err
    prompts = [json.loads(line)["prompt"] for line in out.strip().splitlines()]
    assert prompts == [p for p in loaded.eval_prompts()[:4] for _ in range(2)]


def test_sample_subprocess(run):
    proc = subprocess.run([sys.executable, "-m", "rlhf_jax", "sample", run["dir"], "--prompt",
                           "this laptop looked", "--max-new-tokens", "4", "--temperature", "0",
                           "--n", "2", "--json"], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [r["prompt"] for r in recs] == ["this laptop looked"] * 2
    assert len(recs[0]["response"].split()) <= 4
    assert recs[0]["response"] == recs[1]["response"]  # greedy


# ----------------------------------------------------------------------------- export

def test_export_loads_in_transformers(loaded, tmp_path):
    torch = pytest.importorskip("torch", reason="the transformers parity check runs PyTorch")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf_jax.algorithms.reward_model import rm_scores
    from rlhf_jax.models import logits

    out = tmp_path / "hf"
    assert export_run(loaded, str(out), reward_model=True) == str(out)  # the CLI's export, in-process
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = np.random.default_rng(0).integers(0, loaded.model_cfg.vocab_size, (3, 24)).astype(np.int32)
    ours = np.asarray(logits(loaded.model_cfg, loaded.policy_params, ids))
    with torch.no_grad():
        theirs = model(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    err_policy = float(np.abs(ours - theirs).max())
    ref = np.asarray(logits(loaded.model_cfg, loaded.reference_params, ids))
    print(f"max |logits ours - transformers| = {err_policy:.2e}; policy vs reference "
          f"{np.abs(ref - theirs).max():.2e}")
    np.testing.assert_allclose(theirs, ours, atol=1e-4)
    assert np.abs(ref - theirs).max() > 1e-2  # it is the RL policy, not the reference

    tok = AutoTokenizer.from_pretrained(out)
    texts = ["the movie was great !", "i guess the game seemed boring and slow ."]
    assert [tok(t, add_special_tokens=False)["input_ids"] for t in texts] == \
        loaded.tokenizer.tokenize(texts)
    assert (tok.eos_token_id, tok.pad_token_id) == (loaded.tokenizer.eos_id, loaded.tokenizer.pad_id)
    assert model.config.eos_token_id == loaded.tokenizer.eos_id

    # the reward model: backbone + head file give the run's normalised score (left-padded rows)
    rm = AutoModelForCausalLM.from_pretrained(out / "reward_model").eval()
    head = json.load(open(out / "reward_model" / "reward_head.json"))
    mask = np.ones_like(ids)
    mask[0, :5] = mask[2, :2] = 0
    raw = jax.jit(rm_scores, static_argnums=0)(loaded.rm_cfg, loaded.rm_params, ids, mask)
    want = np.asarray(raw) * loaded.rm_info["gain"] + loaded.rm_info["bias"]
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    with torch.no_grad():
        h = rm(torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
               position_ids=torch.tensor(pos).long(), output_hidden_states=True).hidden_states[-1]
    got = head["gain"] * (h[:, -1].numpy() @ np.asarray(head["kernel"]) + head["head_bias"]) + head["bias"]
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert json.load(open(out / "rlhf_jax_export.json"))["stage"] == "rl"


def test_export_stage_and_force(run, loaded, tmp_path, capsys):
    from rlhf_jax.hf import load_pretrained

    out = tmp_path / "pre"
    rc, _, err = _cli(capsys, "export", run["dir"], out, "--stage", "pretrain")
    assert rc == 0, err
    _, params = load_pretrained(out)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                        params, loaded.reference_params)
    assert all(jax.tree.leaves(same))
    # a non-empty OUT_DIR is refused, and left as it was; --force replaces it
    (out / "keep.txt").write_text("mine")
    before = digest(out)
    rc, _, err = _cli(capsys, "export", run["dir"], out)
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and str(out) in err
    assert "--force" in err and digest(out) == before
    rc, _, err = _cli(capsys, "export", run["dir"], out, "--force")
    assert rc == 0, err
    assert not (out / "keep.txt").exists()
    assert json.load(open(out / "rlhf_jax_export.json"))["stage"] == "rl"


# ----------------------------------------------------------------------------- errors

def _one_line_error(capsys, argv, *needles):
    rc, out, err = _cli(capsys, *argv)
    assert rc == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("error: "), err
    for n in needles:
        assert str(n) in err, err
    return err


def test_errors_name_the_path(run, tmp_path, capsys):
    missing = tmp_path / "nope"
    for cmd in (["eval", missing], ["sample", missing], ["export", missing, tmp_path / "x"]):
        _one_line_error(capsys, cmd, missing, "no such run directory")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(capsys, ["sample", empty], empty, "no config.yaml")
    # a run that has its config and tokenizer but no step-1 checkpoint yet
    early = tmp_path / "early"
    early.mkdir()
    shutil.copy(os.path.join(run["dir"], "config.yaml"), early)
    shutil.copytree(os.path.join(run["dir"], "tokenizer"), early / "tokenizer")
    _one_line_error(capsys, ["eval", early], early, "checkpoints/pretrain")
    _one_line_error(capsys, ["export", run["dir"], tmp_path / "sft", "--stage", "sft"], run["dir"],
                    "no sft stage")
    _one_line_error(capsys, ["sample", run["dir"], "--max-new-tokens", 100], "--max-new-tokens",
                    "max_len")
    _one_line_error(capsys, ["export", run["dir"], os.path.dirname(run["dir"]), "--force"],
                    "holds the run")
    assert not (tmp_path / "x").exists() and not (tmp_path / "sft").exists()


# ----------------------------------------------------------------------------- rank

def test_rank_reference_and_checkpoints(run, tmp_path, capsys):
    from rlhf_jax.runner.evaluation import gold_of_samples, sample_many
    from rlhf_jax.runner.rank import RANK_RNG, rank_runs

    out_dir = tmp_path / "rank"
    rc, out, err = _cli(capsys, "rank", run["dir"], "--reference", "--checkpoints", "--samples", 2,
                        "--boot", 200, "--out", out_dir)
    assert rc == 0, err
    res = json.load(open(out_dir / "rank.json"))
    names = [p["name"] for p in res["players"]]
    assert names == ["reference (run)", "run@2", "run@4"]
    assert [(p["stage"], p["step"]) for p in res["players"]] == [("pretrain", 30), ("rl", 2), ("rl", 4)]
    ref = res["players"][0]
    assert ref["elo"] == ref["elo_low"] == ref["elo_high"] == 1000.0  # the anchor
    for p in res["players"]:
        assert p["elo_low"] <= p["elo"] <= p["elo_high"] and 0 <= p["win_rate"] <= 1
    games = np.array(res["games"])
    n = res["n_prompts"] * res["samples"] ** 2  # every response meets every response per prompt
    np.testing.assert_allclose(games + games.T, n * (1 - np.eye(3)))
    wr = np.array([[np.nan if x is None else x for x in row] for row in res["win_rate"]])
    np.testing.assert_allclose((wr + wr.T)[~np.eye(3, dtype=bool)], 1.0)
    # the judge's scores are the gold rewards of the players' samples from the rank key
    lr = load_run(run["dir"], reward_model=False)
    prompts = lr.eval_prompts()
    ids, mask = lr.encode_prompts(prompts)
    s = sample_many(lr.model_cfg, lr.reference_params, ids, mask,
                    rng=jax.random.fold_in(jax.random.PRNGKey(0), RANK_RNG), n=2,
                    max_new_tokens=lr.response_len, temperature=lr.cfg.eval.temperature,
                    eos_id=lr.tokenizer.eos_id, pad_id=lr.tokenizer.pad_id)
    assert ref["mean_score"] == pytest.approx(float(gold_of_samples(lr.gold, lr.tokenizer, prompts, 2, s).mean()))
    for f in ("rank.md", "elo.png", "win_rate.png"):
        assert (out_dir / f).stat().st_size > 0
    assert "| rank | policy | Elo [95% interval]" in out and "reference (run)" in out
    again = rank_runs([run["dir"]], reference=True, checkpoints=True, samples=2, n_boot=200)
    assert again["players"] == res["players"]  # deterministic given the seed


def test_rank_judged_by_a_reward_model(run):
    from rlhf_jax.runner.rank import rank_runs

    res = rank_runs([run["dir"]], judge=f"rm:{run['dir']}", reference=True, prompts=3, n_boot=50, seed=1)
    assert res["judge"].startswith("reward model of") and res["n_prompts"] == 3
    assert all(np.isfinite(p["mean_score"]) and np.isfinite(p["elo"]) for p in res["players"])


def test_rank_errors(run, tmp_path, capsys):
    _one_line_error(capsys, ["rank", run["dir"]], "one player only")
    _one_line_error(capsys, ["rank", run["dir"], run["dir"] + "/"], "given more than once")
    _one_line_error(capsys, ["rank", run["dir"], "--reference", "--judge", "human"], "--judge 'human'")
    _one_line_error(capsys, ["rank", run["dir"], "--reference", "--prompts", 99], "--prompts 99",
                    "only 4 held-out prompts")
    _one_line_error(capsys, ["rank", run["dir"], tmp_path / "nope"], "no such run directory")
    _one_line_error(capsys, ["rank", run["dir"], "--reference", "--samples", 0], "--samples 0")


def test_commands_wrote_nothing_into_the_run(run):
    assert digest(run["dir"]) == run["digest"]
