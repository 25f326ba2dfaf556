import jax
import jax.numpy as jnp
import numpy as np

from induction_jax.losses import token_losses


def test_token_losses_match_manual_cross_entropy():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5))
    tokens = jnp.array([[0, 1, 2, 3, 4, 0], [4, 3, 2, 1, 0, 1]])
    got = np.asarray(token_losses(logits, tokens))
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    want = np.array([[-logp[b, t - 1, tokens[b, t]] for t in range(1, 6)] for b in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-6)
