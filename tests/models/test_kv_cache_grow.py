"""``grow_cache``: a longer cache with the same contents decodes exactly like the original."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.models import forward, get_preset, init_cache, init_params
from rlhf_jax.models.kv_cache import grow_cache


def test_grown_cache_keeps_contents_and_decodes_the_same():
    cfg = get_preset("tiny-llama")
    params = init_params(cfg, jax.random.PRNGKey(0))
    ids = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 1, cfg.vocab_size)
    mask = jnp.array([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], jnp.int32)
    _, _, cache = forward(cfg, params, ids, mask, init_cache(cfg, 2, 8))
    big = grow_cache(cache, 20)
    for path, a in jax.tree_util.tree_leaves_with_path(cache["layers"]):
        b = big["layers"]
        for key in path:
            b = b[key.key]
        assert b.shape[2] == 20
        np.testing.assert_array_equal(b[:, :, :8], a)
        np.testing.assert_array_equal(b[:, :, 8:], 0)
    np.testing.assert_array_equal(big["mask"][:, :8], cache["mask"])
    assert int(big["index"]) == 6
    tok = jnp.array([[3], [4]], jnp.int32)
    one = jnp.ones((2, 1), jnp.int32)
    small_logits = forward(cfg, params, tok, one, cache)[0]
    big_logits, _, big2 = forward(cfg, params, tok, one, big)
    np.testing.assert_allclose(big_logits, small_logits, atol=1e-5, rtol=0)
    assert int(big2["index"]) == 7
    with pytest.raises(ValueError, match="shrink"):
        grow_cache(cache, 4)
