"""Repeated random sequences, drawn on the device from a PRNG key (no host data pipeline).

Reference sequences (docs/definitions.md): P random tokens, then the same P again (T = 2P).

Training sequences may vary the period per sequence (`min_half_length < half_length`):
sequence b repeats its own `P_b ~ U{min_half_length..P}` random tokens from position 0
(x[t] = x[t mod P_b]), so it holds 2P / P_b copies. With a fixed period the earlier copy is
always exactly P-1 positions back, and a single attention head can find it from the
positional embeddings alone (measured: a 1-layer model then reaches 0.06 nats on the
second half and 2-layer models form no previous-token head). Varying the period removes
that shortcut; only content-based induction finds the copy. `P_b = P` is the reference
sequence exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from induction_jax.config import DataConfig


def _random_halves(key, batch_size: int, half_length: int, d_vocab: int, replace: bool):
    if replace:
        return jax.random.randint(key, (batch_size, half_length), 0, d_vocab, dtype=jnp.int32)
    # argsort of uniforms is a random permutation per row: no token repeats inside a half.
    u_BV = jax.random.uniform(key, (batch_size, d_vocab))
    return jnp.argsort(u_BV, axis=-1)[:, :half_length].astype(jnp.int32)


def repeated_sequences(key: jax.Array, batch_size: int, half_length: int, d_vocab: int,
                       replace: bool = True, repeats: int = 2) -> jax.Array:
    """`[B, repeats*P]` int32: P random tokens, then the same P again (`repeats` times in all)."""
    return jnp.tile(_random_halves(key, batch_size, half_length, d_vocab, replace), (1, repeats))


def variable_period_sequences(key: jax.Array, batch_size: int, half_length: int, min_half_length: int,
                              d_vocab: int, replace: bool = True) -> tuple[jax.Array, jax.Array]:
    """`([B, 2P] tokens, [B] periods)`: sequence b repeats its own P_b random tokens from
    position 0 (x[t] = x[t mod P_b]); P_b = P is the reference sequence exactly."""
    k_period, k_half = jax.random.split(key)
    T = 2 * half_length
    period_B = jax.random.randint(k_period, (batch_size,), min_half_length, half_length + 1)
    half_BP = _random_halves(k_half, batch_size, half_length, d_vocab, replace)
    index_BT = jnp.arange(T)[None, :] % period_B[:, None]
    return jnp.take_along_axis(half_BP, index_BT, axis=1), period_B


def sample_batch(key: jax.Array, cfg: DataConfig, d_vocab: int) -> tuple[jax.Array, jax.Array]:
    """One training batch `([B, 2P] tokens, [B] periods)`."""
    if cfg.min_period == cfg.half_length:
        tokens_BT = repeated_sequences(key, cfg.batch_size, cfg.half_length, d_vocab, cfg.replace)
        return tokens_BT, jnp.full((cfg.batch_size,), cfg.half_length, jnp.int32)
    return variable_period_sequences(key, cfg.batch_size, cfg.half_length, cfg.min_period,
                                     d_vocab, cfg.replace)


def probe_sequences(key: jax.Array, cfg: DataConfig, d_vocab: int) -> jax.Array:
    """The fixed-period reference sequences on which every score is defined, `[B, 2P]`."""
    return repeated_sequences(key, cfg.probe_batch_size, cfg.half_length, d_vocab, cfg.replace)
