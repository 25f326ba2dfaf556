import jax
import jax.numpy as jnp
import numpy as np
import pytest

from induction_jax.tasks.repeated import Repeated, repeated_sequences, split_losses, variable_period_sequences


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
    x, period = variable_period_sequences(jax.random.PRNGKey(4), 256, 25, 10, 64)
    x, period = np.asarray(x), np.asarray(period)
    assert x.shape == (256, 50) and period.min() >= 10 and period.max() <= 25
    assert len(np.unique(period)) > 10                       # the period really varies
    for row, p in zip(x, period):
        np.testing.assert_array_equal(row, np.resize(row[:p], 50))     # x[t] = x[t mod P_b]
    assert x.min() >= 0 and x.max() < 64


def test_variable_period_without_replacement_has_distinct_copies():
    x, period = variable_period_sequences(jax.random.PRNGKey(5), 64, 12, 4, 16, replace=False)
    for row, p in zip(np.asarray(x), np.asarray(period)):
        assert len(set(row[:p])) == p


def test_sample_is_fixed_period_when_min_equals_half():
    task = Repeated(half_length=8, min_half_length=8)
    batch = task.sample(jax.random.PRNGKey(6), {}, 4, 16)
    x = np.asarray(batch["tokens"])
    np.testing.assert_array_equal(x[:, :8], x[:, 8:])
    assert np.all(np.asarray(batch["period"]) == 8)
    assert Repeated(half_length=25).min_period == 10


def test_a_traced_member_min_period_draws_what_the_static_one_draws():
    # The member parameter arrives as data (a traced scalar) in the compiled step: it must
    # draw bit for bit what the task's own setting draws, on both sides of the fixed-period branch.
    task, key = Repeated(half_length=8), jax.random.PRNGKey(7)
    for static in (Repeated(half_length=8, min_half_length=3), Repeated(half_length=8, min_half_length=8)):
        want = static.sample(key, {}, 4, 16)
        got = jax.jit(lambda k, m: task.sample(k, {"min_period": m}, 4, 16))(key, jnp.int32(static.min_period))
        for name in want:
            np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))


def test_member_param_range_and_errors():
    from induction_jax.config import ConfigError
    (param,) = Repeated(half_length=8).member_params()
    assert (param.name, param.default, param.lo, param.hi) == ("min_period", 4, 2, 8)
    assert param.check(["3", 8], "--task-param min_period") == [3, 8]
    for bad in ("1", "9", "2.5", "x"):
        with pytest.raises(ConfigError, match=r"^--task-param min_period: min_period=.* out of range; allowed: "
                                              r"integers 2\.\.8$"):
            param.check([bad], "--task-param min_period")


def test_probe_is_the_reference_sequences_and_probe_metrics_are_named():
    task = Repeated(half_length=6)
    batch = task.probe(jax.random.PRNGKey(0), {}, 3, 16)
    x = np.asarray(batch["tokens"])
    assert len(x) == task.probe_sequences(3) == 3
    np.testing.assert_array_equal(x[:, :6], x[:, 6:])
    assert task.probe_metric_names() == ("in_context_score", "probe_loss_second_half", "prev_token_score",
                                         "induction_score")
    assert task.timing_curves[0] == task.primary_curve and task.step_curve in task.step_metric_names()


def test_ideal_patterns_are_rows_of_one_on_the_offsets():
    pats = Repeated(half_length=4).ideal_patterns(8)
    np.testing.assert_array_equal(pats["prev_token"].sum(1), np.ones(8))
    assert pats["prev_token"][5, 4] == 1 and pats["induction"][5, 2] == 1 and pats["induction"][2, 2] == 1


def test_the_induction_floor_baseline():
    x = np.asarray(repeated_sequences(jax.random.PRNGKey(3), 64, 25, 64))
    floor = Repeated().baselines({"tokens": x})["induction_floor_loss_second_half"]
    assert 0.2 < floor < 0.4


# ---- the split of the loss into the unpredictable and the repeated targets ----

def test_split_uses_targets_1_to_P_minus_1_and_P_plus_1_to_T_minus_1():
    P = 4                               # T = 8, targets 1..7 -> columns 0..6
    losses = jnp.array([[1.0, 2.0, 3.0, 100.0, 5.0, 6.0, 7.0]])
    out = split_losses(losses, P)
    assert float(out["loss_first_half"]) == 2.0                   # targets 1, 2, 3
    assert float(out["loss_second_half"]) == 6.0                  # targets 5, 6, 7
    np.testing.assert_allclose(float(out["loss"]), np.mean(losses))  # target P=4 only here


def test_split_with_periods_reduces_to_the_reference_at_period_P():
    P = 4
    losses = jax.random.uniform(jax.random.PRNGKey(1), (3, 2 * P - 1))
    ref = split_losses(losses, P)
    per = split_losses(losses, P, jnp.full((3,), P))
    for k in ref:
        np.testing.assert_allclose(float(ref[k]), float(per[k]), rtol=1e-6)


def test_split_with_periods_masks_each_sequence_at_its_own_repeat():
    # T = 8; sequence 0 has period 3 (repeats start at 3), sequence 1 period 4 (the reference).
    losses = jnp.array([[1.0, 2.0, 50.0, 3.0, 3.0, 3.0, 3.0],     # targets 1..7
                        [1.0, 1.0, 1.0, 50.0, 5.0, 5.0, 5.0]])
    out = split_losses(losses, 4, jnp.array([3, 4]))
    np.testing.assert_allclose(float(out["loss_first_half"]), (1 + 2 + 1 + 1 + 1) / 5)  # 1..P_b-1
    np.testing.assert_allclose(float(out["loss_second_half"]), (3 * 4 + 5 * 3) / 7)      # P_b+1..7


def test_probe_scores_equal_the_mean_patterns_scores():
    """The probe scores each sequence's diagonal and then averages: the same numbers as scoring
    the batch-mean pattern (what the definitions state), to float rounding."""
    from types import SimpleNamespace

    from induction_jax.analysis.attention import induction_score, previous_token_score

    task = Repeated(half_length=6)
    tokens = task.probe(jax.random.PRNGKey(0), {}, 5, 16)["tokens"]
    pattern = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(1), (5, 2, 3, 12, 12)) * 3
                             + jnp.where(jnp.tril(jnp.ones((12, 12), bool)), 0.0, -1e9), -1)
    logits = jax.random.normal(jax.random.PRNGKey(2), (5, 12, 16))
    out = task.probe_metrics(logits, SimpleNamespace(pattern_BLHTS=pattern), {"tokens": tokens})
    mean = pattern.mean(0)
    np.testing.assert_allclose(out["prev_token_score"], previous_token_score(mean[0]).max(), rtol=1e-6)
    np.testing.assert_allclose(out["induction_score"], induction_score(mean[-1], 6).max(), rtol=1e-6)
