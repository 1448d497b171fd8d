import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms.kl_controller import (
    KL_CONTROLLERS, KLState, adaptive_kl_update, fixed_kl_update, init_kl_state)

# β0 = 0.1, target 6, horizon 10 000, n_steps 512 -> n/h = 0.0512
CASES = [
    (6.6, 0.100512),   # above target: e = 0.1
    (5.4, 0.099488),   # below target: e = -0.1
    (12.0, 0.101024),  # far above: e = 1 clipped to 0.2
    (0.0, 0.098976),   # far below: e = -1 clipped to -0.2
    (6.0, 0.1),        # on target
]


@pytest.mark.parametrize("kl,beta", CASES)
def test_adaptive_update_hand_values(kl, beta):
    s = adaptive_kl_update(init_kl_state(0.1), kl, 512, 6.0, 10_000)
    np.testing.assert_allclose(s.beta, beta, rtol=1e-6)


def test_adaptive_update_jit_array_inputs_and_vmap():
    f = jax.jit(adaptive_kl_update)
    s = f(init_kl_state(jnp.float32(0.1)), jnp.float32(6.6), jnp.int32(512), jnp.float32(6.0),
          jnp.float32(10_000.0))
    assert isinstance(s, KLState)
    np.testing.assert_allclose(s.beta, 0.100512, rtol=1e-6)
    kls = jnp.array([c[0] for c in CASES])
    betas = jax.jit(jax.vmap(adaptive_kl_update, in_axes=(None, 0, None, None, None)))(
        init_kl_state(0.1), kls, 512, 6.0, 10_000).beta
    np.testing.assert_allclose(betas, [c[1] for c in CASES], rtol=1e-6)


def test_fixed_update_and_registry():
    s0 = init_kl_state(0.05)
    s = jax.jit(fixed_kl_update)(s0, jnp.float32(100.0), 512, 6.0, 10_000.0)
    np.testing.assert_allclose(s.beta, 0.05)
    assert KL_CONTROLLERS.get("fixed") is fixed_kl_update
    assert KL_CONTROLLERS.get("adaptive") is adaptive_kl_update
    with pytest.raises(KeyError, match="did you mean 'adaptive'"):
        KL_CONTROLLERS.get("adaptve")


def test_repeated_updates_move_toward_target():
    s = init_kl_state(0.1)
    for _ in range(10):
        s = adaptive_kl_update(s, 20.0, 1000, 6.0, 10_000)
    np.testing.assert_allclose(s.beta, 0.1 * 1.02 ** 10, rtol=1e-5)
