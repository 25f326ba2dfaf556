import jax
import jax.numpy as jnp
import numpy as np

from induction_jax.data import repeated_sequences


def test_second_half_repeats_first_and_tokens_in_range():
    x = np.asarray(repeated_sequences(jax.random.PRNGKey(0), 16, 25, 64))
    assert x.shape == (16, 50) and x.dtype == np.int32
    np.testing.assert_array_equal(x[:, :25], x[:, 25:])
    assert x.min() >= 0 and x.max() < 64
    assert len(np.unique(x)) > 32       # random, not constant


def test_without_replacement_has_no_repeats_in_a_half():
    x = np.asarray(repeated_sequences(jax.random.PRNGKey(1), 32, 20, 24, replace=False))
    assert all(len(set(row[:20])) == 20 for row in x)
    np.testing.assert_array_equal(x[:, :20], x[:, 20:])


def test_repeats_and_keys():
    x = np.asarray(repeated_sequences(jax.random.PRNGKey(2), 4, 5, 10, repeats=4))
    assert x.shape == (4, 20)
    np.testing.assert_array_equal(x[:, :5], x[:, 15:])
    y = np.asarray(repeated_sequences(jax.random.PRNGKey(3), 4, 5, 10, repeats=4))
    assert not np.array_equal(x, y)
    assert np.array_equal(x, np.asarray(repeated_sequences(jax.random.PRNGKey(2), 4, 5, 10, repeats=4)))
    assert jnp.issubdtype(x.dtype, jnp.integer)
