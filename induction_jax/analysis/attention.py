"""Attention-pattern scores (SCIENCE.md), on patterns `[..., T, S]` with any leading axes.

Scores on repeated sequences use the fixed offsets of the task; the token-equality
versions (TransformerLens' head_detector) work on arbitrary sequences.
"""

from __future__ import annotations

import jax.numpy as jnp


def _mean_offset_diagonal(pattern_TS: jnp.ndarray, offset: int, first_query: int) -> jnp.ndarray:
    """Mean over queries i >= first_query of A[i, i - offset]."""
    T = pattern_TS.shape[-1]
    i = jnp.arange(first_query, T)
    return pattern_TS[..., i, i - offset].mean(-1)


def previous_token_score(pattern_TS: jnp.ndarray) -> jnp.ndarray:
    """Mean over queries i >= 1 of A[i, i-1]."""
    return _mean_offset_diagonal(pattern_TS, 1, 1)


def induction_score(pattern_TS: jnp.ndarray, half_length: int) -> jnp.ndarray:
    """Mean over second-half queries i = P..T-1 of A[i, i-P+1] (the token after the earlier copy)."""
    return _mean_offset_diagonal(pattern_TS, half_length - 1, half_length)


def duplicate_token_score(pattern_TS: jnp.ndarray, half_length: int) -> jnp.ndarray:
    """Mean over second-half queries i = P..T-1 of A[i, i-P] (the earlier copy itself)."""
    return _mean_offset_diagonal(pattern_TS, half_length, half_length)


def _masked_score(pattern_BHTS: jnp.ndarray, target_BTS: jnp.ndarray) -> jnp.ndarray:
    """sum(A * D) / sum(A) over the rows that have a target, per head: `[B,H,T,S] -> [H]`.

    Summed over batch and rows before dividing, as TransformerLens' head_detector does per
    sequence; rows without any target position are left out of both sums.
    """
    has_target_BT = target_BTS.any(-1)
    A = pattern_BHTS * has_target_BT[:, None, :, None]
    hit = (A * target_BTS[:, None]).sum((0, 2, 3))
    return hit / jnp.maximum(A.sum((0, 2, 3)), 1e-30)


def _lower(T: int, strict: bool) -> jnp.ndarray:
    return jnp.tril(jnp.ones((T, T), dtype=bool), -1 if strict else 0)


def induction_score_by_tokens(pattern_BHTS: jnp.ndarray, tokens_BT: jnp.ndarray) -> jnp.ndarray:
    """Token-equality induction score: targets j <= i-1 with x[j-1] == x[i]."""
    T = tokens_BT.shape[-1]
    prev_BS = jnp.concatenate([jnp.full_like(tokens_BT[:, :1], -1), tokens_BT[:, :-1]], axis=1)
    target = (prev_BS[:, None, :] == tokens_BT[:, :, None]) & _lower(T, strict=True)
    return _masked_score(pattern_BHTS, target)


def duplicate_token_score_by_tokens(pattern_BHTS: jnp.ndarray, tokens_BT: jnp.ndarray) -> jnp.ndarray:
    """Token-equality duplicate-token score: targets j < i with x[j] == x[i]."""
    T = tokens_BT.shape[-1]
    target = (tokens_BT[:, None, :] == tokens_BT[:, :, None]) & _lower(T, strict=True)
    return _masked_score(pattern_BHTS, target)


def previous_token_score_by_tokens(pattern_BHTS: jnp.ndarray, tokens_BT: jnp.ndarray) -> jnp.ndarray:
    """The previous-token score in the same masked form (target j = i-1), for any sequence."""
    B, T = tokens_BT.shape
    target = jnp.broadcast_to(jnp.eye(T, k=-1, dtype=bool), (B, T, T))
    return _masked_score(pattern_BHTS, target)


def prefix_matching_score(pattern_BHTS: jnp.ndarray, tokens_BT: jnp.ndarray, period: int) -> jnp.ndarray:
    """Olsson's prefix matching on R repeats of `period` random tokens.

    Mean over queries in repeats 2..R of the attention mass on all positions j+1 with
    x[j] == x[i] and j+1 < i.
    """
    T = tokens_BT.shape[-1]
    same_BTS = tokens_BT[:, :, None] == tokens_BT[:, None, :]           # [i, j]: x[i] == x[j]
    shifted = jnp.concatenate([jnp.zeros_like(same_BTS[:, :, :1]), same_BTS[:, :, :-1]], axis=2)
    target_BTS = shifted & _lower(T, strict=True)                         # key k = j+1 < i
    mass_BHT = (pattern_BHTS * target_BTS[:, None]).sum(-1)
    return mass_BHT[:, :, period:].mean((0, 2))
