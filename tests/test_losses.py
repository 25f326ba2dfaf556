import jax
import jax.numpy as jnp
import numpy as np

from induction_jax.losses import split_losses, token_losses


def test_token_losses_match_manual_cross_entropy():
    logits = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 5))
    tokens = jnp.array([[0, 1, 2, 3, 4, 0], [4, 3, 2, 1, 0, 1]])
    got = np.asarray(token_losses(logits, tokens))
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    want = np.array([[-logp[b, t - 1, tokens[b, t]] for t in range(1, 6)] for b in range(2)])
    np.testing.assert_allclose(got, want, rtol=1e-6)


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
