"""Test-session settings, applied before any test module imports JAX.

One persistent XLA compilation cache for the whole session and every subprocess it starts: many
modules (and every CLI subprocess) compile the same tiny-config programs, and a compiled program
read back from the cache is the same executable, so results do not change (a cache entry that
cannot be read is compiled again). ``JAX_COMPILATION_CACHE_DIR`` set by the caller wins."""

import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "rlhf_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# The longest modules first. Under xdist (`-n 2 --dist loadfile`) each module runs whole in one
# process, handed out in collection order: started first, the long ones overlap the rest instead of
# running alone at the end. (A plain serial run only changes order; modules stay contiguous.)
_LONGEST_FIRST = ("runner/test_pipeline_e2e.py", "runner/test_hardening.py", "runner/test_vectorized.py",
                  "runner/test_sweep.py", "runner/test_overopt.py", "runner/test_online.py",
                  "runner/test_pipeline_real_data.py", "algorithms/test_algorithms.py")


def _rank(item) -> int:
    path = item.nodeid.split("::")[0]
    return next((i for i, name in enumerate(_LONGEST_FIRST) if path.endswith(name)), len(_LONGEST_FIRST))


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=_rank)  # stable: everything else keeps its order
