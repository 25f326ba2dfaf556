"""Next-token cross-entropy and its split into the halves of a repeated sequence (SCIENCE.md)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_losses(logits_BTV: jax.Array, tokens_BT: jax.Array) -> jax.Array:
    """`[B, T-1]`: loss of the target at position t (t = 1..T-1), predicted from position t-1."""
    logp_BTV = jax.nn.log_softmax(logits_BTV[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]


def split_losses(losses_BT: jax.Array, half_length: int) -> dict[str, jax.Array]:
    """Mean loss overall, on targets 1..P-1 (first half) and P+1..T-1 (second half).

    `losses_BT[:, t-1]` is the loss of target t. The target at P (the first repeated
    token) cannot be predicted and belongs to neither half.
    """
    P = half_length
    return {
        "loss": losses_BT.mean(),
        "loss_first_half": losses_BT[:, : P - 1].mean(),
        "loss_second_half": losses_BT[:, P:].mean(),
    }
