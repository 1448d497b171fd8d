"""Benchmark: one PPO and one GRPO iteration of ours (JAX) against TRL's trainers, on this CPU.

Both sides train random-weight GPT-2 models of the same shape, float32, from the same 16-token
prompts, sampling 32 tokens per response: PPO with 16 rollouts (16 prompts), GRPO with 16
completions (4 prompts x 4 generations); one epoch, one minibatch. Sizes: ``tiny`` (2 layers x 128
wide, 4 heads) and ``gpt2-small`` (12 layers x 768 wide, 12 heads), both with a 512-token vocab.

    python experiments/bench_vs_trl.py --sizes tiny,gpt2-small --algos ppo,grpo --iters 5
    python experiments/bench_vs_trl.py --sizes tiny --iters 2 --skip-trl   # ours only, no trl import

What one iteration is:

* ours: one call of the algorithm's jitted ``iteration(state, frozen, batch, hp)`` (sample, reference
  forward, reward-model score, critic values for PPO, GAE / group advantages, one gradient step),
  timed host-side up to ``jax.block_until_ready`` of the new state and metrics, including building
  the prompt batch. The first call compiles: "compile" is the first call minus the steady median.
* TRL: one pass of the trainer's training loop = one rollout + one optimisation pass over it,
  everything the loop does included (data loading, generation, the scoring forwards, the update,
  TRL's own metric logging, PPO's ``gc.collect()``/``empty_cache()``). It is timed with a
  ``TrainerCallback`` as the time between consecutive ``on_step_end`` calls (the first one from
  ``on_train_begin``), inside one ``trainer.train()`` over ``warm-up + --iters`` steps, so trainer
  construction, model loading and end-of-training work are never counted. (``experimental.ppo``'s
  loop has no ``on_step_begin``, so end-to-end intervals are the one measure both trainers share.)
  TRL is run as shipped except for settings that would make it do different work: float32
  (``bf16=False``), no gradient checkpointing (TRL's default, a recomputation of the policy forward
  that ours does not do), no reporting (``report_to=[]``), no saving, no evaluation, no sample
  generations, no printed logs (the printer/progress callbacks are removed), torch on 2 threads.
  PPO's ``gc.collect()`` + ``empty_cache()`` calls are measured apart (by wrapping them in the
  trainer's module) and printed; they stay inside TRL's time. Each TRL run is a child process of
  this script that never imports JAX (nor rlhf_jax), so ``gc.collect()`` walks only TRL's heap and
  no idle XLA threads share the cores; it reports its timings back as one JSON line.

Steady state is the median of ``--iters`` iterations after ``WARMUP`` discarded ones, per side.

Same decoding work on both sides: every response is exactly 32 tokens, no early stop. Ours gets an
``eos_id`` of -1, which ``generate`` never samples. TRL PPO gets ``stop_token_id=None`` (the
trainer then clears the policy's ``eos_token_id``, so ``generate`` runs all ``response_length``
steps); TRL GRPO gets ``generation_kwargs={"min_new_tokens": 32}`` with ``max_completion_length=32``
(EOS is masked until the last step). Both sample at temperature 1, no top-k / top-p.

Rewards: both sides score with a reward model of the policy's shape (backbone + scalar head on the
last token). TRL GRPO decodes prompt + completion to text and re-tokenises it for its RM (a
word-level tokenizer with one word per id, so the RM sees the same ~48 tokens); ours scores the
token ids directly. KL: PPO's per-token penalty in the reward (β = 0.05, k1; ours adaptive, TRL
fixed); GRPO's k3 loss term against the reference (β = 0.04, TRL ``beta=0.04`` so TRL loads its
reference model; ``loss_type="grpo"`` = our ``seq_mean_token_mean``). The critic (PPO) is a separate
GPT-2 backbone plus a value head on both sides. No side spends an extra policy forward on the
behaviour logprobs (ours and TRL PPO take them from the sampler, TRL GRPO detaches its training
forward's, as it does with one iteration per generation).

FLOP convention (printed per side and part): a forward over ``t`` tokens costs ``2·t·P_blocks``
(P_blocks = L·(4d² + 2·d·d_ff), the block weight matrices) + ``2·r·V·d`` for ``r`` rows of LM-head
logits + ``4·L·d·q·s`` attention (QKᵀ and AV) for ``q`` queries against the ``s`` keys the kernel
is handed, masked or not (full T×T for a full forward; ours decodes against the preallocated cache
segment, HF's DynamicCache against the keys so far). Backward = 2x forward. Norms, biases,
softmax, scalar heads and the optimizer are not counted. Rows of logits are what each side asks
for: ours computes them for every position of a policy/reference forward (``response_logits``
slices the 32 it needs afterwards; XLA keeps the full matmul) and for 1 + 32 rows while
sampling (prefill last position + every decode step, the last one unused); HF ``generate`` 1 per
forward (``logits_to_keep=1``), 16 + 31 forwards for 32 tokens; TRL PPO every position; TRL GRPO
33 rows (``logits_to_keep + 1``); the reward/value backbones none (TRL calls the backbone; in our jitted
iteration XLA removes the unused logits). GFLOP/s = FLOPs / median time, and is shown as a
fraction of the float32 matmul peak measured first in the same run (best of a few 2048x2048
matmuls, numpy and jax; the higher is the peak).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout
sys.path.insert(0, HERE)  # benchtools
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally; never download
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchtools import best_time  # noqa: E402

P, N = 16, 32            # prompt tokens, sampled tokens
B = 16                   # responses per iteration
GROUP = 4                # GRPO: 4 prompts x 4 completions
VOCAB, MAX_LEN = 512, 64
PAD, EOS, UNK = 0, 1, 2  # the TRL tokenizer's special ids; prompts use ids 3..511
N_PROMPTS = 64
WARMUP = 1
TORCH_THREADS = 2
PEAK_N = 2048
SIZES = {  # GPT-2 shapes; head_dim = d_model / n_heads
    "tiny": dict(n_layers=2, d_model=128, n_heads=4, d_ff=512),
    "gpt2-small": dict(n_layers=12, d_model=768, n_heads=12, d_ff=3072),
}
ALGOS = ("ppo", "grpo")
TRL_MISSING = "bench_vs_trl: trl is not installed: pip install -r requirements-bench.txt"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="tiny,gpt2-small")
    ap.add_argument("--algos", default="ppo,grpo")
    ap.add_argument("--iters", type=int, default=5, help="timed iterations per side (after warm-up)")
    ap.add_argument("--skip-trl", action="store_true", help="time only ours (trl is not imported)")
    ap.add_argument("--trl-worker", metavar="ALGO:SIZE", help=argparse.SUPPRESS)  # internal: the TRL child
    args = ap.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    args.algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    for given, known, what in ((args.sizes, SIZES, "sizes"), (args.algos, ALGOS, "algos")):
        unknown = [x for x in given if x not in known]
        if unknown:
            ap.error(f"unknown {what} {unknown}; known: {', '.join(known)}")
    if args.iters < 1:
        ap.error("--iters must be at least 1")
    return args


def require_trl():
    """Exit with one line when trl (or accelerate, which it needs) is missing; imports neither."""
    if any(importlib.util.find_spec(name) is None for name in ("trl", "accelerate")):
        sys.exit(TRL_MISSING)


def prompt_ids():
    """The shared prompts: ``N_PROMPTS`` rows of ``P`` ids in 3..511 (never pad, EOS or unk)."""
    import numpy as np

    return np.random.default_rng(0).integers(3, VOCAB, (N_PROMPTS, P)).astype(np.int32)


# ----------------------------------------------------------------------------- float32 matmul peak

def matmul_peak() -> float:
    """Best float32 GFLOP/s of a PEAK_N³ matmul (numpy and jax); prints both, returns the higher."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = np.random.default_rng(0).standard_normal((PEAK_N, PEAK_N), dtype=np.float32)
    flops = 2 * PEAK_N ** 3
    ja = jax.device_put(a)
    jmm = jax.jit(jnp.matmul)
    rates = {"numpy": flops / best_time(np.matmul, a, a, repeats=3) / 1e9,
             "jax": flops / best_time(jmm, ja, ja, repeats=3) / 1e9}
    peak = max(rates.values())
    print(f"float32 matmul peak ({PEAK_N}x{PEAK_N}, best of 3): numpy {rates['numpy']:.1f} GFLOP/s, "
          f"jax {rates['jax']:.1f} GFLOP/s -> peak {peak:.1f} GFLOP/s", flush=True)
    return peak


# ----------------------------------------------------------------------------- analytic FLOPs

@dataclasses.dataclass(frozen=True)
class Dims:
    L: int
    d: int
    ff: int
    V: int = VOCAB

    @classmethod
    def of(cls, size: str) -> "Dims":
        s = SIZES[size]
        return cls(L=s["n_layers"], d=s["d_model"], ff=s["d_ff"])

    @property
    def block_params(self) -> int:
        return self.L * (4 * self.d ** 2 + 2 * self.d * self.ff)


def forward_flops(dm: Dims, tokens: int, logit_rows: int, attn_pairs: int) -> int:
    """Matmul FLOPs of a forward: blocks over ``tokens``, LM head over ``logit_rows``, attention
    over ``attn_pairs`` (query, key) pairs, all summed over the batch."""
    return 2 * tokens * dm.block_params + 2 * logit_rows * dm.V * dm.d + 4 * dm.L * dm.d * attn_pairs


def full_forward(dm: Dims, rows: int, logits_per_row: int) -> int:
    T = P + N
    return forward_flops(dm, rows * T, rows * logits_per_row, rows * T * T)


def ours_generation(dm: Dims) -> int:
    """Prefill P (last-position logits) + N decode steps, each against its cache segment."""
    from rlhf_jax.sampling.generate import decode_segments

    ends = decode_segments(N)
    pairs, start = P * (P + ends[0]), 0
    for end in ends:
        pairs += (end - start) * (P + end)
        start = end
    return forward_flops(dm, B * (P + N), B * (1 + N), B * pairs)


def hf_generation(dm: Dims) -> int:
    """Prefill P (full P×P attention), then N − 1 one-token steps against the keys so far."""
    pairs = P * P + sum(P + t for t in range(1, N))
    return forward_flops(dm, B * (P + N - 1), B * N, B * pairs)


def flop_breakdown(algo: str, size: str, side: str) -> dict[str, int]:
    """Per-part FLOPs of one iteration as each side runs it (see the module docstring)."""
    dm, T = Dims.of(size), P + N
    ours = side == "ours"
    policy_logits = T if ours else (T if algo == "ppo" else N + 1)
    parts = {"generation": ours_generation(dm) if ours else hf_generation(dm),
             "reference forward": full_forward(dm, B, policy_logits),
             "reward-model forward": full_forward(dm, B, 0)}
    train = full_forward(dm, B, policy_logits)
    if algo == "ppo":
        parts["critic forward (rollout)"] = full_forward(dm, B, 0)
        train += full_forward(dm, B, 0)
        parts["policy+critic fwd+bwd"] = 3 * train
    else:
        parts["policy fwd+bwd"] = 3 * train
    return parts


# ----------------------------------------------------------------------------- ours (JAX)

def jax_config(size: str):
    from rlhf_jax.models import get_preset

    s = SIZES[size]
    return get_preset("gpt2-small", vocab_size=VOCAB, max_len=MAX_LEN, n_layers=s["n_layers"],
                      d_model=s["d_model"], n_heads=s["n_heads"], n_kv_heads=s["n_heads"],
                      head_dim=s["d_model"] // s["n_heads"], d_ff=s["d_ff"])


def our_section(algo):
    sec = algo.section()
    changes = dict(batch_size=B, epochs=1, minibatches=1, no_eos_penalty=None)
    if algo.name == "grpo":
        changes["group_size"] = GROUP
    return dataclasses.replace(sec, **changes)


def our_setup(size: str):
    import jax
    import numpy as np

    from rlhf_jax.algorithms.base import RLSetup
    from rlhf_jax.algorithms.reward_model import init_reward_model
    from rlhf_jax.models import init_params

    cfg = jax_config(size)
    policy = init_params(cfg, jax.random.PRNGKey(0))
    rm = init_reward_model(cfg, init_params(cfg, jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    ids = prompt_ids()
    # eos_id -1: generate never samples it, so every response is N tokens (like TRL below).
    return RLSetup(model_cfg=cfg, rm_cfg=cfg, policy_params=policy, rm_params=rm, prompt_ids=ids,
                   prompt_mask=np.ones_like(ids), response_len=N, eos_id=-1, pad_id=PAD, seed=0)


def time_ours(algo_name: str, size: str, iters: int) -> list[float]:
    """Wall seconds of each of ``WARMUP + iters`` iterations (the first compiles)."""
    import jax
    import jax.numpy as jnp

    from rlhf_jax.algorithms.base import frozen_inputs
    from rlhf_jax.algorithms.registry import ALGORITHMS

    algo = ALGORITHMS.get(algo_name)
    setup = our_setup(size)
    sec = our_section(algo)
    algo.check(sec, n_prompts=len(setup.prompt_ids), has_pretrain_texts=False)
    iteration, hp = algo.make_iteration(setup, sec), algo.hparams(sec)
    frozen = frozen_inputs(setup, jax.tree_util.tree_map(jnp.copy, setup.policy_params),
                           {"gain": 1.0, "bias": 0.0})
    state = algo.init(setup, sec, jax.random.PRNGKey(3))
    times = []
    for i in range(WARMUP + iters):
        t0 = time.perf_counter()
        state, metrics = iteration(state, frozen, algo.batch(setup, sec, i), hp)  # state is donated
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    _check_full_length(metrics, algo_name)
    return times


def _check_full_length(metrics, what: str) -> None:
    length = float(metrics["response/length"])
    if length != N:
        raise RuntimeError(f"ours ({what}): mean response length {length}, expected {N}")


# ----------------------------------------------------------------------------- TRL

def trl_tokenizer():
    """A local word-level tokenizer: ids 0..2 are <pad>, <eos>, <unk>; id i >= 3 is the word 'w{i}'."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": EOS, "<unk>": UNK, **{f"w{i}": i for i in range(3, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>")


def gpt2_config(size: str, **extra):
    from transformers import GPT2Config

    s = SIZES[size]
    return GPT2Config(vocab_size=VOCAB, n_positions=MAX_LEN, n_embd=s["d_model"], n_layer=s["n_layers"],
                      n_head=s["n_heads"], n_inner=s["d_ff"], resid_pdrop=0.0, embd_pdrop=0.0,
                      attn_pdrop=0.0, bos_token_id=EOS, eos_token_id=EOS, pad_token_id=PAD, **extra)


def torch_models(size: str, *names: str) -> dict:
    """Random float32 models: 'policy' (GPT2LMHeadModel), 'reward'/'value' (sequence classifiers)."""
    import torch
    from transformers import AutoModelForSequenceClassification, GPT2LMHeadModel

    torch.manual_seed(0)
    out = {}
    for name in names:
        if name == "policy":
            out[name] = GPT2LMHeadModel(gpt2_config(size))
        else:
            out[name] = AutoModelForSequenceClassification.from_config(gpt2_config(size, num_labels=1))
    return out


class Housekeeping:
    """Seconds spent in PPO's ``gc.collect()`` and ``empty_cache()``, by wrapping both in the trainer's
    module for the duration of a run (they still run, as shipped)."""

    def __init__(self, module):
        self.module, self.seconds = module, 0.0
        self._saved = (module.gc, module.empty_cache)

    def _timed(self, fn):
        def call(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds += time.perf_counter() - t0
        return call

    def __enter__(self):
        real_gc, real_empty = self._saved
        self.module.gc = type("TimedGC", (), {"collect": staticmethod(self._timed(real_gc.collect))})
        self.module.empty_cache = self._timed(real_empty)
        return self

    def __exit__(self, *exc):
        self.module.gc, self.module.empty_cache = self._saved


def iteration_clock(housekeeping=None):
    """A TrainerCallback stamping ``on_train_begin`` and every ``on_step_end``."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks, self.gc = [], []

        def _mark(self):
            self.marks.append(time.perf_counter())
            self.gc.append(housekeeping.seconds if housekeeping else 0.0)

        def on_train_begin(self, args, state, control, **kwargs):
            self._mark()

        def on_step_end(self, args, state, control, **kwargs):
            self._mark()

    return Clock()


def differences(marks: list[float]) -> list[float]:
    return [b - a for a, b in zip(marks, marks[1:])]


def quiet(trainer) -> None:
    """No printed logs: drop the printer / progress-bar callbacks (TRL still computes its metrics)."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)


def common_args(out_dir: str) -> dict:
    return dict(output_dir=out_dir, per_device_train_batch_size=B, gradient_accumulation_steps=1,
                bf16=False, gradient_checkpointing=False, report_to=[], save_strategy="no",
                eval_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
                dataloader_num_workers=0, temperature=1.0)


def trl_ppo_times(size: str, iters: int) -> tuple[list[float], list[float]]:
    """Per-iteration seconds and gc/empty_cache seconds of ``experimental.ppo.PPOTrainer``."""
    import copy

    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_module

    steps = WARMUP + iters
    m = torch_models(size, "policy", "reward", "value")
    data = Dataset.from_dict({"input_ids": prompt_ids().tolist()})
    with tempfile.TemporaryDirectory() as out, Housekeeping(ppo_module) as hk:
        args = PPOConfig(**common_args(out), num_mini_batches=1, num_ppo_epochs=1,
                         total_episodes=B * steps, response_length=N, stop_token_id=None,
                         num_sample_generations=0, local_rollout_forward_batch_size=B, kl_coef=0.05)
        clock = iteration_clock(hk)
        trainer = PPOTrainer(args=args, processing_class=trl_tokenizer(), model=m["policy"],
                             ref_model=copy.deepcopy(m["policy"]), reward_model=m["reward"],
                             value_model=m["value"], train_dataset=data, eval_dataset=data,
                             callbacks=[clock])
        quiet(trainer)
        trainer.train()
    return differences(clock.marks), differences(clock.gc)


def trl_grpo_times(size: str, iters: int) -> list[float]:
    """Per-iteration seconds of ``GRPOTrainer`` (policy saved to a temp dir: TRL loads its reference
    model from the policy's path)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    steps = WARMUP + iters
    m = torch_models(size, "policy", "reward")
    tok = trl_tokenizer()
    # A trailing space: TRL scores prompt + completion text, so the first completion word stays apart.
    texts = [" ".join(tok.convert_ids_to_tokens(row.tolist())) + " " for row in prompt_ids()]
    data = Dataset.from_dict({"prompt": texts})
    with tempfile.TemporaryDirectory() as out:
        policy_dir = os.path.join(out, "policy")
        m["policy"].save_pretrained(policy_dir)
        args = GRPOConfig(**common_args(out), max_steps=steps, num_generations=GROUP,
                          max_completion_length=N, generation_kwargs={"min_new_tokens": N},
                          beta=0.04, loss_type="grpo", num_iterations=1, disable_dropout=True)
        clock = iteration_clock()
        trainer = GRPOTrainer(model=policy_dir, reward_funcs=[m["reward"]], args=args, train_dataset=data,
                              processing_class=tok, reward_processing_classes=[tok], callbacks=[clock])
        quiet(trainer)
        trainer.train()
    return differences(clock.marks)


def trl_worker(spec: str, iters: int) -> None:
    """Child-process entry (``--trl-worker ALGO:SIZE``): time TRL, print the result as one JSON line."""
    import warnings

    import datasets
    import torch
    import transformers

    warnings.filterwarnings("ignore")  # TRL/transformers deprecation chatter; no work changes
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    torch.set_num_threads(TORCH_THREADS)
    algo, size = spec.split(":")
    times, housekeeping = trl_ppo_times(size, iters) if algo == "ppo" else (trl_grpo_times(size, iters), None)
    print(json.dumps({"times": times, "gc": housekeeping}))


def time_trl(algo: str, size: str, iters: int) -> tuple[list[float], list[float] | None]:
    """TRL's per-iteration seconds (and PPO's gc seconds), measured in a child process that never
    loads JAX: ``gc.collect()`` walks the whole heap, and idle XLA/OpenMP threads would share the cores."""
    cmd = [sys.executable, os.path.abspath(__file__), "--trl-worker", f"{algo}:{size}", "--iters", str(iters)]
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if out.returncode:
        sys.exit(f"bench_vs_trl: the TRL run for {algo} @ {size} failed (exit {out.returncode}; "
                 f"its error is above)")
    result = json.loads(out.stdout.strip().splitlines()[-1])  # TRL prints a line of its own first
    return result["times"], result["gc"]


# ----------------------------------------------------------------------------- report

def steady(times: list[float]) -> float:
    return statistics.median(times[WARMUP:])


def print_result(algo: str, size: str, peak: float, ours: list[float], trl) -> None:
    s = SIZES[size]
    what = f"{B} rollouts" if algo == "ppo" else f"{B // GROUP} prompts x {GROUP} completions"
    print(f"\n== {algo} @ {size} ({s['n_layers']} layers x {s['d_model']}, {s['n_heads']} heads, "
          f"vocab {VOCAB}): {what}, {P} prompt + {N} sampled tokens, float32 ==")
    sides = {"ours (JAX)": ("ours", ours)}
    if trl is not None:
        sides["TRL 1.12"] = ("trl", trl[0])
    print(f"  {'side':<12}{'median s/it':>12}{'compile s':>11}{'GFLOP/it':>10}{'GFLOP/s':>9}{'of peak':>9}")
    for label, (side, times) in sides.items():
        t = steady(times)
        flops = sum(flop_breakdown(algo, size, side).values())
        comp = f"{times[0] - t:.2f}" if side == "ours" else "-"
        rate = flops / t / 1e9
        print(f"  {label:<12}{t:>12.4f}{comp:>11}{flops / 1e9:>10.2f}{rate:>9.2f}{rate / peak:>9.1%}")
    if trl is not None and trl[1] is not None:
        print(f"  TRL gc.collect() + empty_cache() per iteration: {steady(trl[1]):.4f} s (inside TRL's time)")
    print_breakdown(algo, size, trl is not None)


def print_breakdown(algo: str, size: str, with_trl: bool) -> None:
    ours = flop_breakdown(algo, size, "ours")
    trl = flop_breakdown(algo, size, "trl") if with_trl else {}
    print(f"  FLOPs per iteration (GFLOP){'ours':>16}" + (f"{'TRL':>10}" if with_trl else ""))
    for part in ours:
        line = f"    {part:<34}{ours[part] / 1e9:>10.3f}"
        print(line + (f"{trl[part] / 1e9:>10.3f}" if with_trl else ""))
    if algo == "grpo" and with_trl:
        print("    (TRL's RM reads the re-tokenised prompt + completion text, ~the same 48 tokens)")


def print_summary(rows) -> None:
    print("\n== summary: median seconds per iteration; ratio = TRL time / our time (> 1: ours faster) ==")
    print(f"  {'algo':<6}{'size':<12}{'ours s/it':>11}{'TRL s/it':>11}{'TRL/ours':>10}")
    for algo, size, ours, trl in rows:
        t_ours = steady(ours)
        if trl is None:
            print(f"  {algo:<6}{size:<12}{t_ours:>11.4f}{'-':>11}{'-':>10}")
        else:
            t_trl = steady(trl[0])
            print(f"  {algo:<6}{size:<12}{t_ours:>11.4f}{t_trl:>11.4f}{t_trl / t_ours:>9.2f}x")


def main(argv=None):
    args = parse_args(argv)
    if not args.skip_trl:
        require_trl()
    if args.trl_worker:
        return trl_worker(args.trl_worker, args.iters)
    import jax

    print(f"jax {jax.__version__} on {jax.devices()}; cores {os.cpu_count()}; warm-up {WARMUP}, "
          f"timed iterations {args.iters}", flush=True)
    if not args.skip_trl:
        from importlib.metadata import version

        print(f"trl {version('trl')}, torch {version('torch')} on {TORCH_THREADS} threads, in a child "
              f"process without JAX", flush=True)
    peak = matmul_peak()
    rows = []
    for size in args.sizes:
        for algo in args.algos:
            ours = time_ours(algo, size, args.iters)
            trl = None if args.skip_trl else time_trl(algo, size, args.iters)
            print_result(algo, size, peak, ours, trl)
            rows.append((algo, size, ours, trl))
    print_summary(rows)


if __name__ == "__main__":
    main()
