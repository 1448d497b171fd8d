"""``jit_step`` without a mesh: a state that mixes committed and uncommitted leaves (restored
parameters beside fresh ``jnp.zeros`` counters) compiles once, not again when the step's own
(committed) outputs come back as the next call's state."""

import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.sharding.jit import commit, jit_step


def _new_step():
    """A fresh function each time: jit shares compiled programs between wrappers of one function."""
    def step(state, batch):
        return {"w": state["w"] + batch, "n": state["n"] + 1}, {"sum": state["w"].sum()}
    return step


def _mixed_state():
    return {"w": jax.device_put(jnp.ones(3), jax.local_devices()[0]),  # committed (as restored)
            "n": jnp.zeros((), jnp.int32)}                            # uncommitted


def test_plain_jit_recompiles_on_the_state_it_returned():
    """The failure the wrapper exists for (if jax stops keying on commitment, this test says so)."""
    step = jax.jit(_new_step(), donate_argnums=0)
    state = _mixed_state()
    for _ in range(3):
        state, _ = step(state, np.ones(3, np.float32))
    assert step._cache_size() == 2


def test_jit_step_compiles_once_and_computes_the_same():
    step = jit_step(_new_step(), batch_argnums=(1,))
    state = _mixed_state()
    for _ in range(3):
        state, m = step(state, np.ones(3, np.float32))
    assert step._cache_size() == 1
    assert int(state["n"]) == 3 and float(m["sum"]) == 9.0
    np.testing.assert_array_equal(np.asarray(state["w"]), np.full(3, 4.0, np.float32))


def test_commit_places_without_copying():
    x = jnp.arange(4.0)
    y = commit({"x": x, "h": np.zeros(2, np.float32)})
    assert not x.committed and y["x"].committed and y["h"].committed
    assert y["x"].unsafe_buffer_pointer() == x.unsafe_buffer_pointer()
