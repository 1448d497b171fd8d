import jax
import jax.numpy as jnp
import numpy as np

from rlhf_jax.losses import next_token_loss, sequence_logprob

# position 0 logits predict token 1, position 1 predicts token 2; position 2 is never used
LOGITS = jnp.array([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [9.0, -9.0, 3.0]]])
IDS = jnp.array([[1, 0, 2]])
LP1 = -0.23954477  # log softmax([2, 0, 0])[0] = 2 - log(e^2 + 2)
LP2 = -1.09861229  # log(1/3)


def test_next_token_loss_hand_values():
    loss, m = next_token_loss(LOGITS, IDS, jnp.array([[1, 1, 1]]))  # mask[:,0] is never a target
    np.testing.assert_allclose(loss, -(LP1 + LP2) / 2, rtol=1e-6)
    np.testing.assert_allclose(m["sft/loss"], loss)
    assert float(m["sft/ntokens"]) == 2.0
    assert float(m["sft/accuracy"]) == 0.5  # argmax 0 == 0; argmax([0,0,0]) = 0 != 2
    loss2, m2 = next_token_loss(LOGITS, IDS, jnp.array([[0, 0, 1]]))  # prompt masked
    np.testing.assert_allclose(loss2, -LP2, rtol=1e-6)
    assert float(m2["sft/accuracy"]) == 0.0 and float(m2["sft/ntokens"]) == 1.0


def test_mean_over_all_tokens_not_mean_of_rows():
    logits = jnp.concatenate([LOGITS, jnp.zeros_like(LOGITS)], axis=0)
    ids = jnp.array([[1, 0, 2], [0, 1, 1]])
    mask = jnp.array([[0, 0, 1], [0, 1, 1]])
    loss, m = next_token_loss(logits, ids, mask)
    # targets: row0 t=2 (LP2), row1 t=1, t=2 (uniform, LP2 each) -> 3 tokens, all log(1/3)
    np.testing.assert_allclose(loss, -LP2, rtol=1e-6)
    assert float(m["sft/ntokens"]) == 3.0


def test_sequence_logprob_and_jit_grad():
    lp = sequence_logprob(LOGITS, IDS, jnp.array([[0, 1, 1]]))
    np.testing.assert_allclose(lp, [LP1 + LP2], rtol=1e-6)
    lp_t = jax.jit(sequence_logprob)(LOGITS * 2.0, IDS, jnp.array([[0, 1, 1]]), 2.0)
    np.testing.assert_allclose(lp_t, [LP1 + LP2], rtol=1e-6)
    g = jax.jit(jax.grad(lambda z: next_token_loss(z, IDS, jnp.array([[0, 1, 1]]))[0]))(LOGITS)
    np.testing.assert_allclose(g[0, 2], 0.0)  # last position predicts nothing
    assert np.all(np.isfinite(g))
