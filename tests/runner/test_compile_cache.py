"""The CLI keeps XLA's compiled programs on disk, where the user's environment does not say
otherwise (each case in a fresh interpreter: JAX reads its cache settings once)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBE = """
import json, jax, jax.numpy as jnp
from rlhf_jax.runner.cli import _compile_cache
_compile_cache()
jax.jit(lambda x: jnp.sin(x) * 2)(jnp.ones(3)).block_until_ready()
print(json.dumps({"dir": jax.config.jax_compilation_cache_dir,
                  "max": jax.config.jax_compilation_cache_max_size}))
"""


def _probe(tmp_path, **env):
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("JAX_COMPILATION_CACHE") and k != "RLHF_JAX_COMPILE_CACHE"}
    base.update(RLHF_JAX_CACHE_DIR=str(tmp_path / "home"), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", **env)
    out = subprocess.run([sys.executable, "-c", PROBE], env=base, capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_cli_caches_compiled_programs_under_the_cache_root(tmp_path):
    got = _probe(tmp_path)
    where = tmp_path / "home" / "xla"
    assert got["dir"] == str(where)
    assert got["max"] == 8 << 30
    assert [p for p in where.iterdir() if p.name.startswith("jit_")], "no compiled program was written"


def test_the_users_cache_dir_wins_and_the_cache_can_be_turned_off(tmp_path):
    mine = tmp_path / "mine"
    assert _probe(tmp_path, JAX_COMPILATION_CACHE_DIR=str(mine))["dir"] == str(mine)
    assert not (tmp_path / "home" / "xla").exists()
    assert _probe(tmp_path, RLHF_JAX_COMPILE_CACHE="0")["dir"] is None
    assert not (tmp_path / "home" / "xla").exists()
