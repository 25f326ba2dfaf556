"""Repeated random sequences, drawn on the device from a PRNG key (no host data pipeline)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from induction_jax.config import DataConfig


def repeated_sequences(key: jax.Array, batch_size: int, half_length: int, d_vocab: int,
                       replace: bool = True, repeats: int = 2) -> jax.Array:
    """`[B, repeats*P]` int32: P random tokens, then the same P again (`repeats` times in all).

    With `replace=False` no token repeats inside a half (argsort of uniforms = a random
    permutation per row, truncated to P), which needs P <= V.
    """
    if replace:
        half_BP = jax.random.randint(key, (batch_size, half_length), 0, d_vocab, dtype=jnp.int32)
    else:
        u_BV = jax.random.uniform(key, (batch_size, d_vocab))
        half_BP = jnp.argsort(u_BV, axis=-1)[:, :half_length].astype(jnp.int32)
    return jnp.tile(half_BP, (1, repeats))


def sample_batch(key: jax.Array, cfg: DataConfig, d_vocab: int, batch_size: int | None = None):
    """One training (or probe) batch of repeated sequences, `[B, 2P]`."""
    return repeated_sequences(key, batch_size or cfg.batch_size, cfg.half_length, d_vocab, cfg.replace)
