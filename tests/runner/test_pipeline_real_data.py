"""The same three steps from a Hugging Face checkpoint and local preference files (HH, TL;DR)."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from rlhf_jax.data import train_tokenizer
from rlhf_jax.hf import save_pretrained
from rlhf_jax.models import get_preset, init_params
from rlhf_jax.runner.config_loader import load_config
from rlhf_jax.runner.pipeline import Pipeline
from rlhf_jax.runner.schema import ExperimentConfig

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = "the cat dog sat ran on a mat park happily sadly was is good bad very day today".split()


def _sentence(rng, n):
    return " ".join(rng.choice(WORDS, n))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny GPT-2 checkpoint with a byte-level BPE tokenizer in one HF directory."""
    d = str(tmp_path_factory.mktemp("gpt2_tiny"))
    rng = np.random.default_rng(0)
    texts = [_sentence(rng, 12) for _ in range(300)] + ["Human: Assistant: SUBREDDIT: TITLE: POST: TL;DR:"]
    tok = train_tokenizer(texts, d, vocab_size=400, kind="bpe")
    cfg = get_preset("tiny", vocab_size=tok.vocab_size, max_len=128)
    save_pretrained(d, cfg, init_params(cfg, jax.random.PRNGKey(0)))
    return d


def _write_jsonl(path, records):
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


TINY = ["pretrain.steps=0", "reward.epochs=1", "reward.batch_size=8", "ppo.iterations=3",
        "ppo.batch_size=8", "ppo.minibatches=2", "ppo.epochs=1", "ppo.eval_every=2",
        "task.n_eval_prompts=4", "eval.samples_per_prompt=1", "eval.best_of_n=2",
        "run.checkpoint_every=2", "run.progress=false"]


def _check(summary, out):
    assert np.isfinite(summary["rm_eval_accuracy"]) and np.isfinite(summary["kl_to_reference_final"])
    assert "gold_reward_final" not in summary  # real data: no gold
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.md"):
        assert os.path.exists(os.path.join(out, name))
    rl = [r for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if r["stage"] == "rl"]
    assert len(rl) == 3 and all(np.isfinite(r["objective/kl"]) for r in rl)


def test_hh_gpt2_config(hf_dir, tmp_path):
    rng = np.random.default_rng(1)
    recs = []
    for _ in range(40):
        q = _sentence(rng, 6)
        recs.append({"chosen": f"\n\nHuman: {q}\n\nAssistant: {_sentence(rng, 5)} good",
                     "rejected": f"\n\nHuman: {q}\n\nAssistant: {_sentence(rng, 5)} bad"})
    prefs = _write_jsonl(tmp_path / "hh.jsonl", recs)
    out = str(tmp_path / "run")
    cfg = load_config(ExperimentConfig, os.path.join(ROOT, "experiments", "hh_gpt2.yaml"),
                      [f"model.pretrained={hf_dir}", f"data.preferences={prefs}", f"run.out_dir={out}",
                       "data.max_prompt_len=24", "data.max_response_len=12", *TINY])
    _check(Pipeline(cfg).run(), out)


def test_tldr_config(hf_dir, tmp_path):
    rng = np.random.default_rng(2)
    comps, sft = [], []
    for _ in range(40):
        post = _sentence(rng, 10)
        comps.append({"info": {"post": post, "title": _sentence(rng, 3), "subreddit": "cats"},
                      "summaries": [{"text": _sentence(rng, 4)}, {"text": _sentence(rng, 4)}],
                      "choice": int(rng.integers(0, 2))})
        sft.append({"post": post, "summary": _sentence(rng, 4)})
    prefs = _write_jsonl(tmp_path / "tldr.jsonl", comps)
    sft_file = _write_jsonl(tmp_path / "tldr_sft.jsonl", sft)
    out = str(tmp_path / "run")
    cfg = load_config(ExperimentConfig, os.path.join(ROOT, "experiments", "tldr_summarize.yaml"),
                      [f"model.pretrained={hf_dir}", f"data.preferences={prefs}", f"data.sft={sft_file}",
                       f"run.out_dir={out}", "data.max_prompt_len=48", "data.max_response_len=24",
                       "sft.steps=4", "sft.batch_size=8", *TINY])
    summary = Pipeline(cfg).run()
    _check(summary, out)
    assert any('"sft"' in x for x in open(os.path.join(out, "metrics.jsonl")))


def test_dpo_from_a_trl_preference_file_without_a_reward_model(hf_dir, tmp_path):
    """TRL format (prompt / chosen / rejected); the chosen response ends 'good', the rejected 'bad':
    DPO alone must learn to prefer the chosen responses of the held-out pairs."""
    rng = np.random.default_rng(3)
    recs = [{"prompt": _sentence(rng, 5), "chosen": f" {_sentence(rng, 3)} good",
             "rejected": f" {_sentence(rng, 3)} bad"} for _ in range(60)]
    prefs = _write_jsonl(tmp_path / "trl.jsonl", recs)
    out = str(tmp_path / "run")
    cfg = load_config(ExperimentConfig, os.path.join(ROOT, "experiments", "quickstart.yaml"),
                      [f"model.pretrained={hf_dir}", "task.name=null", f"data.preferences={prefs}",
                       f"run.out_dir={out}", "data.max_prompt_len=12", "data.max_response_len=8",
                       "data.eval_fraction=0.2", "reward.eval_fraction=0.2", "reward.train=false",
                       "algorithm=dpo", "dpo.iterations=30", "dpo.batch_size=8", "dpo.lr=1e-3",
                       "dpo.eval_every=10", *[t for t in TINY if not t.startswith("ppo.")]])
    summary = Pipeline(cfg).run()
    assert summary["algorithm"] == "dpo"
    assert not os.path.exists(os.path.join(out, "reward_model.json"))  # no reward model trained
    assert "rm_eval_accuracy" not in summary and "proxy_score_final" not in summary
    assert summary["implicit_accuracy_final"] >= 0.9, summary  # 12 held-out pairs
    assert np.isfinite(summary["kl_to_reference_final"]) and summary["kl_coef_final"] == pytest.approx(0.1)
    rows = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    rl = [r for r in rows if r["stage"] == "rl"]
    assert [r["step"] for r in rl] == list(range(1, 31))
    assert abs(rl[0]["rewards/margin"]) < 1e-4  # the policy starts as the reference: no margins yet
    ev = [r for r in rows if r["stage"] == "eval" and "eval/implicit_accuracy" in r]
    assert [r["step"] for r in ev] == [10, 20, 30]
    assert os.path.exists(os.path.join(out, "report.md"))


def test_iterated_online_rounds_read_a_list_of_preference_files(hf_dir, tmp_path):
    """online.preferences: each later round's comparisons are the next file's pairs (no labelers,
    no gold); the reward model continues on all of them so far."""
    from rlhf_jax.data import encode_preferences, load_preferences, load_tokenizer

    rng = np.random.default_rng(4)

    def pairs(n, name):
        return _write_jsonl(tmp_path / name, [{"prompt": _sentence(rng, 5), "chosen": f" {_sentence(rng, 3)} good",
                                               "rejected": f" {_sentence(rng, 3)} bad"} for _ in range(n)])

    step2, later = pairs(40, "round1.jsonl"), [pairs(20, "round2.jsonl"), pairs(30, "round3.jsonl")]
    out = str(tmp_path / "run")
    cfg = load_config(ExperimentConfig, os.path.join(ROOT, "experiments", "quickstart.yaml"),
                      [f"model.pretrained={hf_dir}", "task.name=null", f"data.preferences={step2}",
                       f"run.out_dir={out}", "data.max_prompt_len=12", "data.max_response_len=8",
                       "online.rounds=3", f"online.preferences=[{later[0]},{later[1]}]",
                       *TINY])
    summary = Pipeline(cfg).run()
    rounds = summary["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert [r["comparisons_new"] for r in rounds] == [40, 20, 30]
    assert [r["comparisons_total"] for r in rounds] == [40, 60, 90]
    for r in rounds[1:]:
        assert 0.0 <= r["rm_accuracy_newest_before"] <= 1.0 and 0.0 <= r["rm_accuracy_newest_after"] <= 1.0
        assert r["rm_label_ceiling_newest"] is None  # no gold reward: no labelers' ceiling
        assert "gold_reward" not in json.dumps(r["end"])
    tok = load_tokenizer(os.path.join(hf_dir))
    for i, path in enumerate(later, 2):
        enc = encode_preferences(tok, load_preferences(path), 12, 8)
        with np.load(os.path.join(out, "online", f"comparisons_round{i}.npz")) as z:
            np.testing.assert_array_equal(z["input_ids"][:, 0], enc["chosen_input_ids"])
            np.testing.assert_array_equal(z["input_ids"][:, 1], enc["rejected_input_ids"])
