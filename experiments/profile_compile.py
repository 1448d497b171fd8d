"""Where the compile time of one RL iteration goes: Python tracing, lowering, XLA's HLO passes and
its backend, and, on the CPU backend, which parts of the program the compiled kernels come from.

    python experiments/profile_compile.py                          # PPO at GPT-2-small size
    python experiments/profile_compile.py --algo grpo --vocab 512 --no-scan

It builds the same iteration as ``bench_train_step.py``'s ``ppo-scan`` variant (random weights; the
reward model and critic the policy's shape; ``--batch`` rollouts of ``--prompt`` + ``--new``
tokens), compiles it once under ``jax.profiler`` and reads XLA's own trace events back
(``jax.profiler.ProfileData``): nothing is run. XLA:CPU compiles every distinct fusion as its own
kernel (an MLIR pipeline and an LLVM module each, on its codegen threads), so its backend time
follows the number of kernels more than their size; fusions that are the same computation on other
buffers are compiled once. The per-part table groups the kernels by the loop body (while computation)
they were compiled for, named by its most common JAX ``op_name`` prefix, and the top-level
program's by their own ``op_name``. On other backends only the totals are printed.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.bench_train_step import rl_lowered  # noqa: E402

_PHASES = ("HLO passes through layout assignment", "HLO passes after layout assignment",
           "CpuCompiler::RunBackend", "Codegen", "ThunkEmitter::EmitEntryComputation")


def trace_events(trace_dir: str):
    """Every (name, start ns, duration ns, stats) event of the newest trace under ``trace_dir``."""
    import jax

    path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
    data = jax.profiler.ProfileData.from_file(path)
    return [(ev.name, ev.start_ns, ev.duration_ns, dict(ev.stats))
            for plane in data.planes for line in plane.lines for ev in line.events]


def fusion_parts(hlo_text: str) -> dict[str, str]:
    """fusion instruction -> the part of the program it belongs to, in a compiled module's text: a
    loop body's fusions are named by the body's most common JAX ``op_name`` prefix (down to its
    innermost while), the top-level program's by the first two steps of their own (control flow
    left out)."""
    part, bodies = {}, collections.defaultdict(collections.Counter)
    for comp in re.split(r"\n(?=\S)", hlo_text):
        head = re.match(r"(?:ENTRY )?%?([\w.\-]+)", comp)
        if not head:
            continue
        entry = comp.startswith("ENTRY")
        for line in comp.split("\n"):
            m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = .*? fusion\(", line)
            if not m:
                continue
            op = re.search(r'op_name="([^"]*)"', line)
            steps = [p for p in (op.group(1) if op else "").split("/")[1:] if not p.startswith("closed_call")]
            if entry:
                steps = [p for p in steps if p not in ("while", "body")]
                part[m.group(1)] = "top level: " + ("/".join(steps[:2]) or "(no op_name)")
            else:
                cut = max((i for i, p in enumerate(steps) if p == "while"), default=len(steps) - 1)
                part[m.group(1)] = head.group(1)
                bodies[head.group(1)]["loop: " + "/".join(steps[:cut + 2][:6])] += 1
    return {f: (bodies[c].most_common(1)[0][0] if c in bodies else c) for f, c in part.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", default="ppo")
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--vocab", type=int, default=None, help="override the preset's vocabulary")
    ap.add_argument("--no-scan", action="store_true", help="unrolled layers (model.scan_layers=false)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=512, help="the position table's length (as bench_train_step)")
    ap.add_argument("--top", type=int, default=12, help="parts to list")
    args = ap.parse_args()

    import jax

    from rlhf_jax.models import get_preset

    over = {"max_len": max(args.max_len, args.prompt + args.new)}
    if args.vocab is not None:
        over["vocab_size"] = args.vocab
    cfg = get_preset(args.preset, **over).replace(scan_layers=not args.no_scan)
    trace_s, lower_s, lowered = rl_lowered(cfg, args.algo, args.batch, args.prompt, args.new)
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp)
        t0 = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        jax.profiler.stop_trace()
        events = trace_events(tmp)
    print(f"{args.algo} iteration at {args.preset} ({cfg.n_layers} layers, vocab {cfg.vocab_size}, "
          f"{'scanned' if cfg.scans_layers else 'unrolled'}; {args.batch} x {args.prompt}+{args.new} "
          f"tokens) on {jax.default_backend()}: trace {trace_s:.1f} s + lower {lower_s:.1f} s + XLA "
          f"compile {compile_s:.1f} s = {trace_s + lower_s + compile_s:.1f} s")
    totals = collections.Counter()
    for name, _, dur, _ in events:
        phase = next((p for p in _PHASES if name.startswith(p)), None)
        if phase:
            totals[phase] += dur / 1e9
    for name in _PHASES:  # the last two run inside the backend
        if name in totals:
            indent = "    " if name in _PHASES[3:] else "  "
            print(f"{indent}{name:40s} {totals[name]:6.2f} s")
    kernels = [(st.get("module", ""), dur / 1e9) for name, _, dur, st in events if name == "FusionCompiler::Compile"]
    if not kernels:
        print("  (no per-kernel events: the per-part table needs XLA:CPU)")
        return
    where = fusion_parts(compiled.as_text())
    parts = collections.defaultdict(lambda: [0, 0.0])
    for module, dur in kernels:
        fusion = module.replace("__compute_module_", "").replace("_kernel_module", "")
        part = parts[where.get(fusion, "(not in the module text)")]
        part[0] += 1
        part[1] += dur
    n_fusions = len(where)
    print(f"  {len(kernels)} kernels compiled for {n_fusions} fusions, {sum(d for _, d in kernels):.2f} s of "
          f"fusion-emitter time over the codegen threads ({1e3 * sum(d for _, d in kernels) / len(kernels):.1f} "
          f"ms each); by part of the program:")
    for name, (n, dur) in sorted(parts.items(), key=lambda kv: -kv[1][0])[:args.top]:
        print(f"  {n:5d} kernels {dur:6.2f} s  {name}")


if __name__ == "__main__":
    main()
