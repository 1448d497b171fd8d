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
