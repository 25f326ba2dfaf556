"""Next-token cross-entropy per target (docs/definitions.md); how a task splits it is the task's
(e.g. `tasks.repeated.split_losses`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_losses(logits_BTV: jax.Array, tokens_BT: jax.Array) -> jax.Array:
    """`[B, T-1]`: loss of the target at position t (t = 1..T-1), predicted from position t-1."""
    logp_BTV = jax.nn.log_softmax(logits_BTV[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp_BTV, tokens_BT[:, 1:, None], axis=-1)[..., 0]
