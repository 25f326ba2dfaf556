"""Next-token cross-entropy and its split into the halves of a repeated sequence (docs/definitions.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_losses(logits_BTV: jax.Array, tokens_BT: jax.Array) -> jax.Array:
    """`[B, T-1]`: loss of the target at position t (t = 1..T-1), predicted from position t-1."""
    logp_BTV = jax.nn.log_softmax(logits_BTV[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]


def split_losses(losses_BT: jax.Array, half_length: int, period_B: jax.Array | None = None):
    """Mean loss overall, on the unpredictable targets and on the repeated ones.

    `losses_BT[:, t-1]` is the loss of target t. For reference sequences (period P for all):
    first half = targets 1..P-1, second half = targets P+1..T-1; the target at P (the first
    repeated token) cannot be predicted and belongs to neither. For variable-period
    sequences (`period_B`, x[t] = x[t mod P_b]): first half = targets 1..P_b-1, second
    half = targets P_b+1..T-1 (every repeat), token-weighted over the batch.
    """
    if period_B is None:
        P = half_length
        return {"loss": losses_BT.mean(), "loss_first_half": losses_BT[:, : P - 1].mean(),
                "loss_second_half": losses_BT[:, P:].mean()}
    T = losses_BT.shape[1] + 1
    target_T = jnp.arange(1, T)[None, :]
    repeat_B1 = period_B[:, None]
    first = target_T < repeat_B1
    second = target_T > repeat_B1
    return {"loss": losses_BT.mean(),
            "loss_first_half": (losses_BT * first).sum() / first.sum(),
            "loss_second_half": (losses_BT * second).sum() / second.sum()}
