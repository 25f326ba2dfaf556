"""Survival curve of formation: the fraction of members whose transition has not started by
step t (Kaplan-Meier, with unfinished members censored at the last step)."""

from __future__ import annotations

import numpy as np

from induction_jax.phase.detect import PhaseError

Z95 = 1.959963984540054


def censor_at_last_step(event_times, last_step: float) -> tuple[np.ndarray, np.ndarray]:
    """`(times, observed)` from per-member timings with NaN for censored members: those are
    censored at `last_step`, the last step they were seen without the event."""
    t_E = np.asarray(event_times, float)
    observed_E = np.isfinite(t_E)
    return np.where(observed_E, t_E, float(last_step)), observed_E


def kaplan_meier(event_times, observed) -> dict:
    """Product-limit estimate S(t) at the distinct event and censoring times, as a
    right-continuous step function (S = 1 before the first time; see `survival_at`).

    At a time with both events and censorings the censored members count as still at risk
    (the usual convention: they were seen to last that long). The 95% CI uses Greenwood's
    variance on the log(-log S) scale, which keeps it inside [0, 1]; it is [1, 1] while S = 1
    and undefined (NaN) above 0 once S = 0, where that scale has no variance.
    """
    t_E = np.asarray(event_times, float)
    obs_E = np.asarray(observed, bool)
    if t_E.ndim != 1 or t_E.shape != obs_E.shape or len(t_E) == 0:
        raise PhaseError(f"{t_E.shape} times and {obs_E.shape} observed flags: need one of each per member, "
                         f"at least one member")
    if not np.isfinite(t_E).all():
        bad = int(np.flatnonzero(~np.isfinite(t_E))[0])
        raise PhaseError(f"member {bad} has time {t_E[bad]}: every member needs a finite event or censoring "
                         f"time (censor unfinished members at the last step)")
    steps_K, inv_E = np.unique(t_E, return_inverse=True)
    d_K = np.bincount(inv_E, weights=obs_E, minlength=len(steps_K))
    leaving_K = np.bincount(inv_E, minlength=len(steps_K))
    at_risk_K = len(t_E) - np.cumsum(leaving_K) + leaving_K
    s_K = np.cumprod(1.0 - d_K / at_risk_K)
    with np.errstate(divide="ignore", invalid="ignore"):
        greenwood_K = np.cumsum(d_K / (at_risk_K * (at_risk_K - d_K)))
        se_K = np.sqrt(greenwood_K) / np.abs(np.log(s_K))      # se of log(-log S)
        lo_K = s_K ** np.exp(Z95 * se_K)
        hi_K = s_K ** np.exp(-Z95 * se_K)
    one, zero = s_K >= 1.0, s_K <= 0.0
    lo_K = np.clip(np.where(one, 1.0, np.where(zero, 0.0, lo_K)), 0.0, 1.0)
    hi_K = np.clip(np.where(one, 1.0, np.where(zero, np.nan, hi_K)), 0.0, 1.0)
    return {"steps": steps_K, "survival": s_K, "ci95_low": lo_K, "ci95_high": hi_K,
            "n_at_risk": at_risk_K.astype(int), "n_events": d_K.astype(int)}


def survival_at(km: dict, t) -> np.ndarray:
    """The Kaplan-Meier step function at arbitrary steps `t` (1 before the first time)."""
    k = np.searchsorted(km["steps"], np.asarray(t, float), side="right") - 1
    return np.where(k >= 0, np.asarray(km["survival"])[np.maximum(k, 0)], 1.0)
