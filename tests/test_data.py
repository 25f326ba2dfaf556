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


def test_variable_period_sequences_repeat_with_their_own_period():
    from induction_jax.data import variable_period_sequences
    x, period = variable_period_sequences(jax.random.PRNGKey(4), 256, 25, 10, 64)
    x, period = np.asarray(x), np.asarray(period)
    assert x.shape == (256, 50) and period.min() >= 10 and period.max() <= 25
    assert len(np.unique(period)) > 10                       # the period really varies
    for row, p in zip(x, period):
        np.testing.assert_array_equal(row, np.resize(row[:p], 50))     # x[t] = x[t mod P_b]
    assert x.min() >= 0 and x.max() < 64


def test_variable_period_without_replacement_has_distinct_copies():
    from induction_jax.data import variable_period_sequences
    x, period = variable_period_sequences(jax.random.PRNGKey(5), 64, 12, 4, 16, replace=False)
    for row, p in zip(np.asarray(x), np.asarray(period)):
        assert len(set(row[:p])) == p


def test_sample_batch_fixed_period_when_min_equals_half():
    from induction_jax.config import DataConfig
    from induction_jax.data import sample_batch
    cfg = DataConfig(half_length=8, min_half_length=8, batch_size=4)
    x, period = sample_batch(jax.random.PRNGKey(6), cfg, 16)
    np.testing.assert_array_equal(np.asarray(x)[:, :8], np.asarray(x)[:, 8:])
    assert np.all(np.asarray(period) == 8)
    assert DataConfig(half_length=25).min_period == 10
