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
from rlhf_jax.models import get_preset, init_params, to_layout
from rlhf_jax.rewards.gold import get_gold
from rlhf_jax.runner.config_loader import ConfigError
from rlhf_jax.runner.run_dir import RunDirError
from rlhf_jax.sharding.distributed import on_primary
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
        for i, path in enumerate(cfg.online.preferences):
            if not os.path.exists(path):
                raise FileNotFoundError(f"online.preferences[{i}]: no such file: {path}")
        self._corpus = None
        self._prefs = {}
        self._texts = None
        self._demos = None
        self._tok = None
        self._prompts = None

    def check_data(self, log=lambda msg: None) -> None:
        """Read and check every data file the run will use, now (before any compute). The built-in
        task's generated corpus is not a file: it is made when a stage needs it."""
        if self.cfg.data.pretrain_text:
            self.pretrain_texts()
        if self.cfg.sft.steps > 0:
            self.demonstrations()
        if self.cfg.data.preferences:
            self.preferences(log)
        for path in self.cfg.online.preferences:
            self.preferences(log, path)
        self.rl_prompts()
        self.eval_prompts()

    # ------------------------------------------------------------------ text
    def corpus(self) -> list[str]:
        if self._corpus is None:
            self._corpus = self.task.corpus(self.cfg.task.corpus_size, seed=self.cfg.run.seed) if self.task else []
        return self._corpus

    def has_pretrain_texts(self) -> bool:
        """Whether there are texts for step 1 / PPO-ptx (without generating the task's corpus)."""
        if self.cfg.data.pretrain_text:
            return bool(self.pretrain_texts())
        return self.task is not None and self.cfg.task.corpus_size > 0

    def pretrain_texts(self) -> list[str]:
        if self._texts is not None:
            return self._texts
        path = self.cfg.data.pretrain_text
        if path:
            texts = []
            for where, rec in read_records(path):
                if not isinstance(rec.get("text"), str):
                    raise where.error("expected a string", field="text")
                texts.append(rec["text"])
            if not any(t.strip() for t in texts):
                raise DataError("no non-empty 'text' records", file=path)
            self._texts = texts
        else:
            self._texts = self.corpus()
        return self._texts

    def demonstrations(self) -> list[tuple[str, str]]:
        if self._demos is None:
            if self.cfg.data.sft:
                ds = load_sft(self.cfg.data.sft)
                self._demos = list(zip(ds["prompt"], ds["completion"]))
            elif self.task is None:
                self._demos = []
            else:
                self._demos = self.task.demonstrations(self.cfg.sft.n_demonstrations, seed=self.cfg.run.seed)
        return self._demos

    def preferences(self, log=lambda msg: None, path: str | None = None):
        """The pairs of a preference file (default ``data.preferences``; an iterated online run's
        later rounds name theirs in ``online.preferences``), without those whose chosen equals its
        rejected (they carry no preference); a file left with fewer than 2 pairs is an error."""
        key = "data.preferences" if path is None else "online.preferences"
        path = self.cfg.data.preferences if path is None else path
        if path not in self._prefs:
            ds = load_preferences(path, format=self.cfg.data.preferences_format)
            keep = [i for i, (c, r) in enumerate(zip(ds["chosen"], ds["rejected"])) if c != r]
            if len(keep) < 2:
                raise DataError(f"{len(ds) - len(keep)} of {len(ds)} pairs have chosen == rejected; "
                                f"need at least 2 pairs that differ", file=path)
            if len(keep) < len(ds):
                log(f"{key}: dropped {len(ds) - len(keep)} of {len(ds)} pairs whose chosen "
                    f"equals their rejected ({path})")
                ds = ds.select(keep)
            self._prefs[path] = ds
        return self._prefs[path]

    def preference_arrays(self, tok, P: int, R: int, path: str | None = None) -> dict:
        enc = encode_preferences(tok, self.preferences(path=path), P, R)
        ids = np.stack([enc["chosen_input_ids"], enc["rejected_input_ids"]], axis=1)
        mask = np.stack([enc["chosen_attention_mask"], enc["rejected_attention_mask"]], axis=1)
        return {"input_ids": ids, "attention_mask": mask, "mu": np.ones(len(ids), np.float32)}

    def _file_prompts(self) -> list[str]:
        if self._prompts is None:
            if self.cfg.data.prompts:
                self._prompts = list(load_prompts(self.cfg.data.prompts)["prompt"])
            else:
                self._prompts = list(dict.fromkeys(self.preferences()["prompt"]))
        return self._prompts

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
    def existing_tokenizer(self):
        """The tokenizer the run uses if it exists already (a configured directory, or the one an
        earlier attempt of this run trained), else None; reading only."""
        if self._tok is None:
            mc = self.cfg.model
            if mc.tokenizer or mc.pretrained:
                self._tok = load_tokenizer(mc.tokenizer or mc.pretrained)
            else:
                path = os.path.join(self.run_dir, "tokenizer")
                if os.path.exists(path):
                    try:
                        self._tok = load_tokenizer(path)
                    except DataError as e:
                        raise RunDirError(f"{path}: unreadable tokenizer ({e.reason}); delete this "
                                          f"directory to train it again") from None
        return self._tok

    def tokenizer(self):
        """The run's tokenizer: configured, kept by the run, or trained on the task's texts now."""
        if self.existing_tokenizer() is None:
            out = os.path.join(self.run_dir, "tokenizer")

            def train():
                texts = self.pretrain_texts() + [p + " " + c for p, c in self.demonstrations()]
                if self.task is not None:
                    texts = texts + [" ".join(self.task.vocabulary())]
                return train_tokenizer(texts, out, vocab_size=self.cfg.model.vocab_size)

            # a multi-host run's other processes read what process 0 trained
            tok = on_primary("tokenizer", train)
            self._tok = tok if tok is not None else load_tokenizer(out)
        return self._tok

    def model_config(self, vocab_size: int):
        """The policy's ``TransformerConfig`` (a Hugging Face directory's config.json, or the preset
        with the ``model.*`` overrides), checked; no weights are read."""
        mc = self.cfg.model
        compute = {"dtype": mc.dtype, "attention": mc.attention, "remat": mc.remat,
                   "scan_layers": mc.scan_layers}
        if mc.pretrained:
            from rlhf_jax.checkpoint.hf import read_config

            return read_config(mc.pretrained).replace(**compute)
        try:
            base = get_preset(mc.preset)
        except KeyError as e:
            raise ConfigError(f"model.preset: {e.args[0]}") from None
        over = {"vocab_size": vocab_size, "max_len": mc.max_len, **compute}
        if mc.d_model is not None:
            if mc.d_model % base.n_heads:
                raise ConfigError(f"model.d_model={mc.d_model} must be a multiple of the {mc.preset!r} "
                                  f"preset's {base.n_heads} heads")
            over.update(d_model=mc.d_model, head_dim=mc.d_model // base.n_heads, d_ff=4 * mc.d_model)
        if mc.n_layers is not None:
            over["n_layers"] = mc.n_layers
        try:
            return base.replace(**over)
        except ValueError as e:
            raise ConfigError(f"model: {e}") from None

    def model(self, tok, rng, init=None):
        """``(TransformerConfig, initial params)`` from a Hugging Face directory (host arrays) or a
        preset (``init(cfg, rng)``, default ``init_params``: a mesh run passes a sharded one)."""
        if self.cfg.model.pretrained:
            from rlhf_jax.hf import load_pretrained

            cfg, params = load_pretrained(self.cfg.model.pretrained)
            cfg = self.model_config(cfg.vocab_size)
            return cfg, to_layout(cfg, params)  # model.scan_layers may differ from the default
        cfg = self.model_config(tok.vocab_size)
        return cfg, (init or init_params)(cfg, rng)
