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
