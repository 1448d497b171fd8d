"""Run many ``python -m rlhf_jax run`` command lines in one interpreter (the CLI's own ``main``),
each with its stdout and stderr captured at the file-descriptor level, so that what a case prints
is exactly what its own process would print.

    python tests/runner/cli_batch.py CASES.json RESULTS.json [SECONDS]

CASES.json is ``[[name, [arg, ...]], ...]``; RESULTS.json gets ``{name: {"rc", "stdout", "stderr",
"seconds"}}``, rewritten after every case. A case that runs longer than SECONDS (default 120)
dumps every thread's Python stack to the real stderr and ends the batch with a non-zero status,
so a hang is reported with where it hung instead of as a bare timeout.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import tempfile
import time
import traceback


def _run_one(cli_main, argv, real_err, limit):
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        faulthandler.dump_traceback_later(limit, exit=True, file=real_err)
        t0 = time.time()
        try:
            rc = cli_main(["run", *argv])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 -- reported as the process would report it
            traceback.print_exc()
            rc = 1
        finally:
            seconds = time.time() - t0
            faulthandler.cancel_dump_traceback_later()
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
        out.seek(0)
        err.seek(0)
        return {"rc": rc, "stdout": out.read().decode("utf-8", "replace"),
                "stderr": err.read().decode("utf-8", "replace"), "seconds": seconds}


def main(spec_path: str, out_path: str, limit: float = 120.0) -> int:
    with open(spec_path) as f:
        cases = json.load(f)
    real_err = os.fdopen(os.dup(2), "w")
    from rlhf_jax.runner.cli import main as cli_main

    results = {}
    for name, argv in cases:
        print(f"case {name}", file=real_err, flush=True)
        results[name] = _run_one(cli_main, argv, real_err, limit)
        with open(out_path + ".tmp", "w") as f:
            json.dump(results, f)
        os.replace(out_path + ".tmp", out_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], *(float(a) for a in sys.argv[3:4])))
