"""A run checkpoint written in the per-layer layout restores into a stacked target.

Run directories saved before the stacked layout (``models.layout``) hold a scanning config's
layers one by one (``layer_0`` ...), in its params and in its optimizer moments; resuming such a run
restores them into the stacked target instead of calling the checkpoint unreadable.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rlhf_jax.checkpoint.orbax import RunCheckpoints
from rlhf_jax.models import get_preset, init_params, to_layout
from rlhf_jax.models.layout import stack_like, unstack_all

DEEP = get_preset("tiny", n_layers=4, scan_layers=True)   # stacked layout
SHALLOW = get_preset("tiny")                              # 2 layers: per layer either way


def _state(params, small):
    opt = optax.adam(1e-3)
    moments = opt.init(params)
    # moments that differ from zero, so a mixed-up restore shows
    moments = jax.tree.map(lambda m: m + 0.5 if m.dtype == jnp.float32 else m, moments)
    return {"policy": params, "opt": moments, "rm": small, "step": jnp.int32(7)}


def test_a_per_layer_checkpoint_restores_into_a_stacked_target(tmp_path):
    stacked = init_params(DEEP, jax.random.PRNGKey(0))
    small = init_params(SHALLOW, jax.random.PRNGKey(1))
    per_layer = to_layout(DEEP.replace(scan_layers=False), stacked)
    assert "layer_3" in per_layer["params"] and "layers" not in per_layer["params"]

    old = _state(per_layer, small)
    ck = RunCheckpoints(str(tmp_path))
    ck.save("rl", 3, old, {"done": False})
    target = _state(stacked, small)
    restored, meta = ck.restore("rl", jax.tree.map(jnp.zeros_like, target))
    ck.close()

    assert meta["step"] == 3
    want = _state(stacked, small)
    assert jax.tree.structure(restored) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not list(tmp_path.glob("checkpoints/rl/*.unreadable"))


def test_unstack_all_reaches_optimizer_moments_and_abstract_leaves():
    stacked = init_params(DEEP, jax.random.PRNGKey(0))
    state = _state(stacked, init_params(SHALLOW, jax.random.PRNGKey(1)))
    abstract = jax.eval_shape(lambda: state)
    flat, found = unstack_all(abstract)
    assert found
    mu = flat["opt"][0].mu["params"]
    assert "layers" not in mu and mu["layer_3"]["attn"]["qkv_kernel"].shape == \
        stacked["params"]["layers"]["attn"]["qkv_kernel"].shape[1:]
    # the unstacked shallow model is untouched, and stacking again gives the target's structure
    assert jax.tree.structure(flat["rm"]) == jax.tree.structure(abstract["rm"])
    per = unstack_all(state)[0]
    again = stack_like(per, abstract)
    assert jax.tree.structure(again) == jax.tree.structure(state)
    assert unstack_all({"rm": abstract["rm"], "step": 1})[1] is False


def _actor_critic_state(policy, critic):
    """PPO's optimizer: multi_transform, whose moments hold masked (leafless) copies of each tree."""
    opt = optax.multi_transform({"policy": optax.adam(1e-3), "critic": optax.adam(1e-3)},
                                lambda p: {k: jax.tree.map(lambda _: k, v) for k, v in p.items()})
    params = {"policy": policy, "critic": critic}
    return {"params": params, "opt": opt.init(params)}


def test_actor_critic_states_restore_in_either_layout(tmp_path):
    """A multi_transform state (empty MaskedNode copies of a stacked tree) restores as saved, and
    from the per-layer layout."""
    stacked = init_params(DEEP, jax.random.PRNGKey(0))
    per_layer = to_layout(DEEP.replace(scan_layers=False), stacked)
    target = _actor_critic_state(stacked, stacked)
    for step, saved in ((1, target), (2, _actor_critic_state(per_layer, per_layer))):
        ck = RunCheckpoints(str(tmp_path / str(step)))
        ck.save("rl", step, saved)
        restored, _ = ck.restore("rl", target)
        ck.close()
        assert jax.tree.structure(restored) == jax.tree.structure(target)
        for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
