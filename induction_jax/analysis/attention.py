"""Attention-pattern scores (docs/definitions.md), on patterns `[..., T, S]` with any leading axes.

Scores on repeated sequences use the fixed offsets of the task. The token-equality
versions (`*_by_tokens`) work on arbitrary sequences and normalise over the "rows with a
target": sum(A * D) / sum(A) over the query rows that have at least one target position,
summed over batch and rows before dividing. That is not TransformerLens' head_detector;
the `*_tl` functions reproduce its `detect_head` ("mul" measure) exactly.
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


def induction_score(pattern_TS: jnp.ndarray, period: int) -> jnp.ndarray:
    """Mean over second-half queries i = P..T-1 of A[i, i-P+1] (the token after the earlier copy)."""
    return _mean_offset_diagonal(pattern_TS, period - 1, period)


def duplicate_token_score(pattern_TS: jnp.ndarray, period: int) -> jnp.ndarray:
    """Mean over second-half queries i = P..T-1 of A[i, i-P] (the earlier copy itself)."""
    return _mean_offset_diagonal(pattern_TS, period, period)


def _masked_score(pattern_BHTS: jnp.ndarray, target_BTS: jnp.ndarray) -> jnp.ndarray:
    """sum(A * D) / sum(A) over the rows that have a target, per head: `[B,H,T,S] -> [H]`.

    "Rows with a target": summed over batch and rows before dividing, and rows without any
    target position are left out of both sums (TransformerLens' detect_head keeps every row
    and averages per-sequence ratios instead: see `_tl_score`).
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


# TransformerLens-exact scores: `transformer_lens.head_detector.detect_head` with its defaults
# (error_measure="mul", exclude_bos=False, exclude_current_token=False) on a list of sequences.


def _tl_score(pattern_BxTS: jnp.ndarray, detection_BTS: jnp.ndarray, exclude_bos: bool,
              exclude_current_token: bool) -> jnp.ndarray:
    """Mean over sequences of sum(A * D) / sum(A) over ALL rows: `[B,...,T,S] -> [...]`.

    detect_head scores one sequence as (A * D).sum() / A.sum() over the whole T x S pattern
    (so rows without a target add to the denominator only), and a list of sequences as the
    mean of those per-sequence scores. The exclusions zero A's first column / diagonal first.
    """
    A = pattern_BxTS
    T, S = A.shape[-2:]
    if exclude_bos:
        A = jnp.where(jnp.arange(S) == 0, 0.0, A)
    if exclude_current_token:
        A = jnp.where(jnp.eye(T, S, dtype=bool), 0.0, A)
    D = detection_BTS.reshape(detection_BTS.shape[:1] + (1,) * (A.ndim - 3) + detection_BTS.shape[1:])
    per_sequence = (A * D).sum((-2, -1)) / A.sum((-2, -1))
    return per_sequence.mean(0)


def previous_token_detection_tl(T: int) -> jnp.ndarray:
    """TransformerLens' previous-token detection pattern `[T,T]`: ones at (i, i-1)."""
    return jnp.eye(T, k=-1)


def duplicate_token_detection_tl(tokens_BT: jnp.ndarray) -> jnp.ndarray:
    """TransformerLens' duplicate-token detection pattern `[B,T,T]`: ones at j < i with x[j] == x[i]."""
    T = tokens_BT.shape[-1]
    same_BTS = tokens_BT[:, :, None] == tokens_BT[:, None, :]
    return (same_BTS & _lower(T, strict=True)).astype(jnp.float32)


def induction_detection_tl(tokens_BT: jnp.ndarray) -> jnp.ndarray:
    """TransformerLens' induction detection pattern `[B,T,T]`: the duplicate pattern shifted right
    by one key, i.e. ones at 1 <= j <= i with x[j-1] == x[i] (j = i when x[i-1] == x[i])."""
    dup_BTS = duplicate_token_detection_tl(tokens_BT)
    return jnp.concatenate([jnp.zeros_like(dup_BTS[..., :1]), dup_BTS[..., :-1]], axis=-1)


def previous_token_score_tl(pattern_BxTS: jnp.ndarray, tokens_BT: jnp.ndarray | None = None, *,
                            exclude_bos: bool = False, exclude_current_token: bool = False) -> jnp.ndarray:
    """TransformerLens' previous_token_head score per head, `[B,...,T,S] -> [...]` (tokens unused)."""
    B, T = pattern_BxTS.shape[0], pattern_BxTS.shape[-2]
    detection_BTS = jnp.broadcast_to(previous_token_detection_tl(T), (B, T, T))
    return _tl_score(pattern_BxTS, detection_BTS, exclude_bos, exclude_current_token)


def duplicate_token_score_tl(pattern_BxTS: jnp.ndarray, tokens_BT: jnp.ndarray, *,
                             exclude_bos: bool = False, exclude_current_token: bool = False) -> jnp.ndarray:
    """TransformerLens' duplicate_token_head score per head, `[B,...,T,S] -> [...]`."""
    return _tl_score(pattern_BxTS, duplicate_token_detection_tl(tokens_BT), exclude_bos,
                     exclude_current_token)


def induction_score_tl(pattern_BxTS: jnp.ndarray, tokens_BT: jnp.ndarray, *,
                       exclude_bos: bool = False, exclude_current_token: bool = False) -> jnp.ndarray:
    """TransformerLens' induction_head score per head, `[B,...,T,S] -> [...]`."""
    return _tl_score(pattern_BxTS, induction_detection_tl(tokens_BT), exclude_bos, exclude_current_token)
