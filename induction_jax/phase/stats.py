"""Ensemble statistics of a timing: mean, std, median, IQR, CV, bootstrap 95% CI."""

from __future__ import annotations

import numpy as np


def summarize(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Statistics over the members that were not censored (NaN = censored)."""
    v = np.asarray(values, float)
    n_total = len(v)
    v = v[np.isfinite(v)]
    out = {"n": int(len(v)), "n_censored": int(n_total - len(v))}
    if len(v) == 0:
        return out | {k: None for k in ("mean", "std", "median", "iqr", "q25", "q75", "cv",
                                        "ci95_low", "ci95_high")}
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    q25, med, q75 = (float(q) for q in np.percentile(v, [25, 50, 75]))
    rng = np.random.default_rng(seed)
    boots = v[rng.integers(0, len(v), (n_boot, len(v)))].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return out | {"mean": mean, "std": std, "median": med, "iqr": q75 - q25, "q25": q25, "q75": q75,
                  "cv": std / mean if mean else None, "ci95_low": float(lo), "ci95_high": float(hi)}


# A spread across members smaller than this many probe intervals is flagged as maybe unresolved.
RESOLVED_INTERVALS = 2


def resolution(stats: dict, probe_interval: float) -> str | None:
    """A warning when the spread across members (std) is under RESOLVED_INTERVALS probe intervals:
    interpolation places each crossing between probes, but the curve between them is not seen."""
    std = stats.get("std")
    if std is None or stats.get("n", 0) < 2 or std >= RESOLVED_INTERVALS * probe_interval:
        return None
    return (f"maybe not resolved: the spread across members (std {std:.1f} steps) is under {RESOLVED_INTERVALS} "
            f"probe intervals ({probe_interval:g} steps); probe more often (--eval-every) or compare the "
            f"per-step loss timing")


def formation_order(prev_mid: np.ndarray, ind_mid: np.ndarray, tolerance: float) -> dict:
    """Whether the previous-token head forms before, with or after the induction head."""
    order = []
    for p, i in zip(prev_mid, ind_mid):
        if not (np.isfinite(p) and np.isfinite(i)):
            order.append("censored")
        elif p < i - tolerance:
            order.append("before")
        elif p > i + tolerance:
            order.append("after")
        else:
            order.append("with")
    counts = {k: order.count(k) for k in ("before", "with", "after", "censored")}
    lags = np.asarray(ind_mid, float) - np.asarray(prev_mid, float)
    lags = lags[np.isfinite(lags)]
    return {"per_member": order, "counts": counts, "tolerance_steps": tolerance,
            "median_lag_induction_minus_prev": float(np.median(lags)) if len(lags) else None}
