"""Benchmark: the supervised training step (next-token loss, AdamW) at the shapes the product trains.

Side by side in one run, on whatever backend JAX has (the CPU here; a GPU or TPU as is):

* the matmul peak of this device, measured now: the best FLOP/s of a float32 (and, with
  ``--bf16``, bfloat16) ``[B·T, D] @ [D, 4D]`` product, the model's widest matmul shape;
* the training step: tokens/s and model FLOP utilisation against that peak, with the usual count
  of 6·N FLOPs per token for N parameters plus 12·L·T·D for attention (Kaplan et al. 2020;
  PaLM's MFU, Chowdhery et al. 2022), for each variant asked: scan over layers or not, remat
  policies, bf16 compute;
* compile time of each variant (``lower().compile()``);
* peak memory of each variant as XLA plans it (``compiled.memory_analysis()``: arguments +
  outputs + temporaries, donated state counted once).

    python experiments/bench_train_step.py                         # GPT-2-small size, T=512, B=2
    python experiments/bench_train_step.py --preset tiny --seq 64 --batch 8 --repeats 5

The ``ppo-scan`` / ``ppo-noscan`` variants time the compile of one whole PPO iteration (sample
``--rl-new`` tokens for ``--rl-batch`` prompts of ``--rl-prompt`` tokens, reference / reward /
critic forwards, GAE, one gradient step of policy and critic) at the preset's size, as tracing,
lowering and XLA compile, with and without scan over layers. Nothing of it is run.

The ``lora`` variant trains rank-8 adapters on every attention and MLP kernel (scan over layers) as
training does, unmerged beside the base kernels (``lora_variables``): the base weights enter the
step as an argument (not as constants), the gradient flows to the adapters only, so the step needs
no weight gradients of the base: its utilisation is counted against 4·N FLOPs per token (forward
and input gradients) plus attention, the full step's against 6·N. ``lora-merged`` is the same loss
through the merged weights ``W + s·B·A``, whose gradient computes every ``∂L/∂W`` in full.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.benchtools import best_time  # noqa: E402


def matmul_peak(m: int, k: int, n: int, dtype, repeats: int) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.PRNGKey(0), (m, k), dtype)
    b = jax.random.normal(jax.random.PRNGKey(1), (k, n), dtype)
    f = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=jnp.float32))
    return 2 * m * k * n / best_time(f, a, b, repeats=repeats)


def variant(cfg, batch, repeats, lora_rank: int = 0, merged: bool = False):
    """(compile s, steady step s, planned peak bytes, loss) of one training step configuration."""
    import jax
    import jax.numpy as jnp

    from rlhf_jax.algorithms.sft import make_lm_loss
    from rlhf_jax.algorithms.step import make_train_step
    from rlhf_jax.algorithms.train_state import create_state, make_optimizer
    from rlhf_jax.models import init_params
    from rlhf_jax.models.lora import apply_lora, init_lora, lora_variables

    tx = make_optimizer(1e-4)
    params, hp = init_params(cfg, jax.random.PRNGKey(0)), None
    lm_loss = make_lm_loss(cfg)
    if lora_rank:
        def loss(adapters, b, hp):  # the base as an argument: not baked into the program
            form = apply_lora if merged else lora_variables
            return lm_loss(form(jax.lax.stop_gradient(hp["base"]), adapters, 2.0), b, hp)

        step = make_train_step(loss, tx)
        state, hp = create_state(init_lora(params, jax.random.PRNGKey(1), rank=lora_rank), tx), {"base": params}
    else:
        step = make_train_step(lm_loss, tx)
        state = create_state(params, tx)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch, hp).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    peak = None if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                     - mem.alias_size_in_bytes + mem.temp_size_in_bytes)
    state, m = compiled(state, batch, hp)  # a warm-up call
    jax.block_until_ready(m)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        state, m = compiled(state, batch, hp)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t0)
    steady = min(times)
    return compile_s, steady, peak, float(jnp.asarray(m["optim/loss"]))


def rl_lowered(cfg, algo_name: str, batch: int, prompt_len: int, new_tokens: int):
    """(trace s, lower s, lowered) of one iteration of ``algo_name`` at ``cfg``'s size (random
    weights; the reward model and critic are the same shape as the policy)."""
    import dataclasses

    import jax
    import numpy as np

    from rlhf_jax.algorithms.base import RLSetup, frozen_inputs
    from rlhf_jax.algorithms.registry import ALGORITHMS
    from rlhf_jax.algorithms.reward_model import init_reward_model
    from rlhf_jax.models import init_params

    algo = ALGORITHMS.get(algo_name)
    sec = dataclasses.replace(algo.section(), batch_size=batch, epochs=1, minibatches=1)
    policy = init_params(cfg, jax.random.PRNGKey(0))
    rm = init_reward_model(cfg, init_params(cfg, jax.random.PRNGKey(1)), jax.random.PRNGKey(2))
    ids = np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, prompt_len)).astype(np.int32)
    setup = RLSetup(model_cfg=cfg, rm_cfg=cfg, policy_params=policy, rm_params=rm, prompt_ids=ids,
                    prompt_mask=np.ones_like(ids), response_len=new_tokens, eos_id=-1, pad_id=0, seed=0)
    iteration, hp = algo.make_iteration(setup, sec), algo.hparams(sec)
    frozen = frozen_inputs(setup, policy, {"gain": 1.0, "bias": 0.0})
    state = algo.init(setup, sec, jax.random.PRNGKey(3))
    t0 = time.perf_counter()
    traced = iteration.trace(state, frozen, algo.batch(setup, sec, 0), hp)
    t1 = time.perf_counter()
    lowered = traced.lower()
    return t1 - t0, time.perf_counter() - t1, lowered


def rl_compile(cfg, algo_name: str, batch: int, prompt_len: int, new_tokens: int):
    """(trace s, lower s, compile s) of one iteration of ``algo_name`` (``rl_lowered``)."""
    tr, lo, lowered = rl_lowered(cfg, algo_name, batch, prompt_len, new_tokens)
    t0 = time.perf_counter()
    lowered.compile()
    return tr, lo, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--vocab", type=int, default=None, help="override the preset's vocabulary")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--variants", default="scan,noscan,remat-full,remat-dots,lora,lora-merged,ppo-scan,ppo-noscan",
                    help="comma list of: scan, noscan, remat-full, remat-dots, bf16, lora, lora-merged, "
                         "ppo-scan, ppo-noscan")
    ap.add_argument("--rl-batch", type=int, default=16, help="PPO compile variants: rollouts per iteration")
    ap.add_argument("--rl-prompt", type=int, default=16, help="PPO compile variants: prompt tokens")
    ap.add_argument("--rl-new", type=int, default=32, help="PPO compile variants: sampled tokens")
    args = ap.parse_args()

    import jax
    import numpy as np

    from rlhf_jax.models import get_preset
    from rlhf_jax.sharding.memory import param_count

    over = {"max_len": args.seq} if args.vocab is None else {"max_len": args.seq, "vocab_size": args.vocab}
    base = get_preset(args.preset, **over)
    n = param_count(base)
    B, T, D, L = args.batch, args.seq, base.d_model, base.n_layers
    flops_per_step = (6 * n + 12 * L * T * D) * B * T
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {args.preset}: "
          f"{n / 1e6:.1f}M params, B={B}, T={T}", flush=True)
    # The peak: the better of the model's widest matmul and a 2048-cube (small shapes underuse a chip).
    peak32 = max(matmul_peak(B * T, D, 4 * D, np.float32, max(args.repeats, 3)),
                 matmul_peak(2048, 2048, 2048, np.float32, 3))
    print(f"matmul peak float32 (best of [{B * T}x{D}]@[{D}x{4 * D}] and 2048^3): {peak32 / 1e9:.1f} GFLOP/s",
          flush=True)
    wanted = args.variants.split(",")
    peak16 = None
    if "bf16" in wanted:
        import jax.numpy as jnp

        peak16 = max(matmul_peak(B * T, D, 4 * D, jnp.bfloat16, max(args.repeats, 3)),
                     matmul_peak(2048, 2048, 2048, jnp.bfloat16, 3))
        print(f"matmul peak bfloat16: {peak16 / 1e9:.1f} GFLOP/s", flush=True)

    rng = np.random.default_rng(0)
    ids = rng.integers(0, base.vocab_size, (B, T)).astype(np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "loss_mask": np.ones_like(ids)}
    configs = {"scan": base.replace(scan_layers=True), "noscan": base.replace(scan_layers=False),
               "remat-full": base.replace(scan_layers=True, remat="full"),
               "remat-dots": base.replace(scan_layers=True, remat="dots"),
               "bf16": base.replace(scan_layers=True, dtype="bfloat16"),
               "lora": base.replace(scan_layers=True), "lora-merged": base.replace(scan_layers=True)}
    rows = {}
    for name in [w for w in wanted if w.startswith("ppo-")]:
        cfg = base.replace(scan_layers=name == "ppo-scan", max_len=max(base.max_len, args.rl_prompt + args.rl_new))
        tr, lo, co = rl_compile(cfg, "ppo", args.rl_batch, args.rl_prompt, args.rl_new)
        rows[name] = tr + lo + co
        print(f"{name:11s} | PPO iteration ({args.rl_batch} rollouts, {args.rl_prompt}+{args.rl_new} tokens): "
              f"trace {tr:.1f} s + lower {lo:.1f} s + XLA compile {co:.1f} s = {tr + lo + co:.1f} s", flush=True)
    if "ppo-scan" in rows and "ppo-noscan" in rows:
        print(f"PPO iteration compile: {rows['ppo-scan']:.1f} s scanned against {rows['ppo-noscan']:.1f} s "
              f"unrolled ({rows['ppo-noscan'] / rows['ppo-scan']:.2f}x)", flush=True)
    for name in [w for w in wanted if not w.startswith("ppo-")]:
        compile_s, step_s, peak_mem, loss = variant(configs[name], batch, args.repeats,
                                                    lora_rank=8 if name.startswith("lora") else 0,
                                                    merged=name == "lora-merged")
        peak = peak16 if name == "bf16" else peak32
        flops = (4 * n + 12 * L * T * D) * B * T if name.startswith("lora") else flops_per_step
        rows[name] = (compile_s, step_s, peak_mem)
        mem = "n/a" if peak_mem is None else f"{peak_mem / 2 ** 20:8.1f} MiB"
        print(f"{name:11s} | compile {compile_s:6.1f} s | step {step_s * 1e3:8.1f} ms | "
              f"{B * T / step_s:8.0f} tok/s | MFU {flops / step_s / peak:6.1%} of the measured "
              f"peak | planned peak memory {mem} | loss {loss:.4f}", flush=True)
    if "scan" in rows and "noscan" in rows:
        print(f"scan over layers: compile {rows['scan'][0]:.1f} s against {rows['noscan'][0]:.1f} s unrolled "
              f"({rows['noscan'][0] / max(rows['scan'][0], 1e-9):.2f}x); step {rows['noscan'][1] / rows['scan'][1]:.2f}x "
              f"the unrolled loop's speed")
    if "lora" in rows and "scan" in rows:
        print(f"lora (rank 8): step {rows['scan'][1] / rows['lora'][1]:.2f}x the full step's speed; "
              f"compile {rows['lora'][0]:.1f} s"
              + (f"; {rows['lora-merged'][1] / rows['lora'][1]:.2f}x the merged form's" if "lora-merged" in rows else ""))
    for name in ("remat-full", "remat-dots"):
        if name in rows and "scan" in rows and rows[name][2] and rows["scan"][2]:
            print(f"{name}: planned peak memory {rows[name][2] / rows['scan'][2]:.2f}x, "
                  f"step time {rows[name][1] / rows['scan'][1]:.2f}x of no remat")


if __name__ == "__main__":
    main()
