"""Where a run's inputs come from: the built-in task or local files, and the model/tokenizer.

The built-in task (``task.name``) supplies corpus, prompts, demonstrations, the gold reward and
simulated labelers; ``data.*`` files (TRL / HH / TL;DR preferences, prompts, SFT data, text) replace
the parts they name; ``model.pretrained`` / ``model.tokenizer`` load Hugging Face directories.
"""

from __future__ import annotations

import os

import numpy as np

from rlhf_jax import rewards as labelers
from rlhf_jax.data import (encode_preferences, load_preferences, load_prompts, load_sft,
                           load_tokenizer, read_records, train_tokenizer)
from rlhf_jax.data.errors import DataError
from rlhf_jax.models import get_preset, init_params
from rlhf_jax.rewards.gold import get_gold
from rlhf_jax.runner.config_loader import ConfigError
from rlhf_jax.tasks import get_task


class Sources:
    def __init__(self, cfg, run_dir: str):
        self.cfg = cfg
        self.run_dir = run_dir
        self.labelers = labelers
        self.task = None
        if cfg.task.name is not None:
            try:
                self.task = get_task(cfg.task.name)
            except KeyError as e:
                raise ConfigError(f"task.name: {e.args[0]}") from None
        gold_name = cfg.task.gold or (self.task.gold_name if self.task else None)
        try:
            self.gold = None if gold_name is None else get_gold(gold_name)
        except KeyError as e:
            raise ConfigError(f"task.gold: {e.args[0]}") from None
        if self.task is None and not cfg.data.preferences:
            raise ConfigError("with task.name: null, data.preferences must name a preference file")
        for key in ("preferences", "prompts", "sft", "pretrain_text"):
            path = getattr(cfg.data, key)
            if path is not None and not os.path.exists(path):
                raise FileNotFoundError(f"data.{key}: no such file: {path}")
        for key in ("pretrained", "tokenizer"):
            path = getattr(cfg.model, key)
            if path is not None and not os.path.isdir(path):
                raise FileNotFoundError(f"model.{key}: no such directory: {path}")
        self._corpus = None
        self._prefs = None

    # ------------------------------------------------------------------ text
    def corpus(self) -> list[str]:
        if self._corpus is None:
            self._corpus = self.task.corpus(self.cfg.task.corpus_size, seed=self.cfg.run.seed) if self.task else []
        return self._corpus

    def pretrain_texts(self) -> list[str]:
        path = self.cfg.data.pretrain_text
        if path:
            texts = []
            for where, rec in read_records(path):
                if not isinstance(rec.get("text"), str):
                    raise where.error("field 'text': expected a string")
                texts.append(rec["text"])
            return texts
        return self.corpus()

    def demonstrations(self) -> list[tuple[str, str]]:
        if self.cfg.data.sft:
            ds = load_sft(self.cfg.data.sft)
            return list(zip(ds["prompt"], ds["completion"]))
        if self.task is None:
            return []
        return self.task.demonstrations(self.cfg.sft.n_demonstrations, seed=self.cfg.run.seed)

    def preferences(self):
        if self._prefs is None:
            self._prefs = load_preferences(self.cfg.data.preferences, format=self.cfg.data.preferences_format)
        return self._prefs

    def preference_arrays(self, tok, P: int, R: int) -> dict:
        enc = encode_preferences(tok, self.preferences(), P, R)
        ids = np.stack([enc["chosen_input_ids"], enc["rejected_input_ids"]], axis=1)
        mask = np.stack([enc["chosen_attention_mask"], enc["rejected_attention_mask"]], axis=1)
        return {"input_ids": ids, "attention_mask": mask, "mu": np.ones(len(ids), np.float32)}

    def _file_prompts(self) -> list[str]:
        if self.cfg.data.prompts:
            return list(load_prompts(self.cfg.data.prompts)["prompt"])
        return list(dict.fromkeys(self.preferences()["prompt"]))

    def rl_prompts(self) -> list[str]:
        if self.task is not None and not self.cfg.data.prompts and not self.cfg.data.preferences:
            return self.task.prompts("train", seed=self.cfg.run.seed)
        prompts = self._file_prompts()
        n_eval = self._n_eval(len(prompts))
        return prompts[: len(prompts) - n_eval]

    def eval_prompts(self) -> list[str]:
        n = self.cfg.task.n_eval_prompts
        if self.task is not None and not self.cfg.data.prompts and not self.cfg.data.preferences:
            return self.task.prompts("eval", n=n, seed=self.cfg.run.seed)
        prompts = self._file_prompts()
        return prompts[len(prompts) - self._n_eval(len(prompts)):][:n]

    def _n_eval(self, n: int) -> int:
        if n < 2:
            raise DataError(f"need at least 2 prompts, found {n}", file=self.cfg.data.prompts or self.cfg.data.preferences)
        return min(n - 1, max(1, int(round(self.cfg.data.eval_fraction * n))))

    # ------------------------------------------------------------------ model
    def tokenizer(self):
        mc = self.cfg.model
        if mc.tokenizer:
            return load_tokenizer(mc.tokenizer)
        if mc.pretrained:
            return load_tokenizer(mc.pretrained)
        path = os.path.join(self.run_dir, "tokenizer")
        if os.path.exists(os.path.join(path, "tokenizer.json")):
            return load_tokenizer(path)
        texts = self.pretrain_texts() + [p + " " + c for p, c in self.demonstrations()]
        if self.task is not None:
            texts = texts + [" ".join(self.task.vocabulary())]
        return train_tokenizer(texts, path, vocab_size=mc.vocab_size)

    def model(self, tok, rng):
        """``(TransformerConfig, initial params)`` from a Hugging Face directory or a preset."""
        mc = self.cfg.model
        if mc.pretrained:
            from rlhf_jax.hf import load_pretrained

            return load_pretrained(mc.pretrained)
        over = {"vocab_size": tok.vocab_size, "max_len": mc.max_len}
        try:
            base = get_preset(mc.preset)
        except KeyError as e:
            raise ConfigError(f"model.preset: {e.args[0]}") from None
        if mc.d_model is not None:
            over.update(d_model=mc.d_model, head_dim=mc.d_model // base.n_heads, d_ff=4 * mc.d_model)
        if mc.n_layers is not None:
            over["n_layers"] = mc.n_layers
        cfg = base.replace(**over)
        return cfg, init_params(cfg, rng)
