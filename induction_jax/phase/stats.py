"""Ensemble statistics of a timing: mean, std, median, IQR, CV, Student-t 95% CI of the mean;
and how many members a study needs (`plan_sample_size`)."""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

# The fewest timed members given a CI of the mean. The Student-t interval covers 0.95 under a
# normal at every n >= 2 and 0.92 under a skewed (gamma, shape 2) timing at n = 3-12; the
# percentile bootstrap it replaced covered 0.51, 0.75, 0.84, 0.89 at n = 2, 3, 5, 8
# (tests/test_stats_calibration.py). With n = 2 the spread has 1 degree of freedom and the
# interval is +-12.7 standard errors: none is given.
MIN_N_MEAN_CI = 3
CI_METHOD = "student t"


def mean_ci(v: np.ndarray, level: float = 0.95) -> tuple[float, float] | None:
    """Student-t CI of the mean of the finite values; None below MIN_N_MEAN_CI of them."""
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if len(v) < MIN_N_MEAN_CI:
        return None
    h = _st.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean() - h), float(v.mean() + h)


def summarize(values: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """Statistics over the members that were not censored (NaN = censored). The CI of the mean
    is Student t (`mean_ci`); None, with the reason in `ci95_note`, below MIN_N_MEAN_CI members
    (`n_boot` and `seed` are no longer used: kept for callers)."""
    v = np.asarray(values, float)
    n_total = len(v)
    v = v[np.isfinite(v)]
    out = {"n": int(len(v)), "n_censored": int(n_total - len(v))}
    if len(v) == 0:
        return out | {k: None for k in ("mean", "std", "median", "iqr", "q25", "q75", "cv",
                                        "ci95_low", "ci95_high", "ci95_note")}
    mean = float(v.mean())
    std = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    q25, med, q75 = (float(q) for q in np.percentile(v, [25, 50, 75]))
    ci = mean_ci(v)
    note = None if ci is not None else (f"no CI of the mean: {len(v)} timed member(s), an interval needs at least "
                                        f"{MIN_N_MEAN_CI}")
    return out | {"mean": mean, "std": std, "median": med, "iqr": q75 - q25, "q25": q25, "q75": q75,
                  "cv": std / mean if mean else None, "ci95_low": None if ci is None else ci[0],
                  "ci95_high": None if ci is None else ci[1], "ci95_method": CI_METHOD, "ci95_note": note}


# Sample-size planning from a pilot: CI half-widths d and shifts (steps) tabulated; the defaults
# the summary prints.
PRECISIONS = (2.0, 5.0, 10.0)
SHIFTS = (5.0, 10.0, 20.0)
DEFAULT_PRECISION, DEFAULT_SHIFT, POWER, ALPHA = 5.0, 10.0, 0.8, 0.05
N_MAX = 100_000


def n_for_precision(sd: float, d: float, level: float = 0.95) -> int | None:
    """Smallest n (>= 2) with t_{(1+level)/2, n-1} sd / sqrt(n) <= d: the members for a CI of
    the mean of +-d, iterated because t depends on n. None above N_MAX."""
    if not (sd >= 0 and d > 0):
        return None
    z = _st.norm.ppf(0.5 + level / 2)
    n = max(2, int(np.ceil((z * sd / d) ** 2)))
    while n <= N_MAX and _st.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n) > d:
        n += 1
    return n if n <= N_MAX else None


def t_test_power(n: int, shift: float, sd: float, paired: bool, alpha: float = ALPHA) -> float:
    """Power of the two-sided t-test for a shift: paired (n pairs, sd of the differences) or two
    independent arms of n members each (sd within an arm); noncentral t."""
    if n < 2 or sd <= 0:
        return float("nan") if sd <= 0 else 0.0
    df, nc = (n - 1, shift / (sd / np.sqrt(n))) if paired else (2 * n - 2, shift / (sd * np.sqrt(2 / n)))
    c = _st.t.ppf(1 - alpha / 2, df)
    return float(_st.nct.sf(c, df, nc) + _st.nct.cdf(-c, df, nc))


def n_for_power(sd: float, shift: float, paired: bool, power: float = POWER, alpha: float = ALPHA) -> int | None:
    """Smallest n (pairs, or members per arm) whose t-test detects `shift` with `power`."""
    if not (sd > 0 and shift > 0):
        return None
    z = _st.norm.ppf(1 - alpha / 2) + _st.norm.ppf(power)
    n = max(2, int(np.ceil((1 if paired else 2) * (z * sd / shift) ** 2)) - 2)
    while n <= N_MAX and t_test_power(n, shift, sd, paired, alpha) < power:
        n += 1
    return n if n <= N_MAX else None


def plan_sample_size(values: np.ndarray, paired_differences: np.ndarray | None = None,
                     precisions=PRECISIONS, shifts=SHIFTS) -> dict:
    """From a pilot's timings (NaN = censored): how many timed members give a 95% CI of the mean
    of +-d steps, and how many per arm a t-test needs to detect a shift with power 0.8 at 5%
    (two independent arms with the pilot's sd; paired by seed with the sd of the paired
    differences where those are given). Also the n from the one-sided 80% upper confidence bound
    of the sd (chi-square), since the pilot's sd is itself uncertain. None below 3 timed members.
    Counts are of timed members: add the censored share of the pilot on top."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    out = {"n_pilot": int(len(v)), "sd": None, "sd_upper80": None, "precision": None, "shift": None,
           "power": POWER, "alpha": ALPHA, "ci_level": 0.95}
    if len(v) < MIN_N_MEAN_CI:
        return out | {"note": f"no plan: {len(v)} timed member(s) in the pilot; its sd needs at least {MIN_N_MEAN_CI}"}
    sd = float(v.std(ddof=1))
    upper = float(sd * np.sqrt((len(v) - 1) / _st.chi2.ppf(0.2, len(v) - 1)))
    out |= {"sd": sd, "sd_upper80": upper,
            "precision": [{"d": d, "n": n_for_precision(sd, d), "n_upper80": n_for_precision(upper, d)}
                          for d in precisions],
            "shift": [{"shift": x, "n_per_arm": n_for_power(sd, x, paired=False),
                       "n_per_arm_upper80": n_for_power(upper, x, paired=False)} for x in shifts]}
    if paired_differences is not None:
        d = np.asarray(paired_differences, float)
        d = d[np.isfinite(d)]
        if len(d) >= MIN_N_MEAN_CI:
            sdd = float(d.std(ddof=1))
            out["paired"] = {"n_pairs_pilot": int(len(d)), "sd_diff": sdd,
                             "shift": [{"shift": x, "n_pairs": n_for_power(sdd, x, paired=True)} for x in shifts]}
    return out


# A spread across members smaller than this many probe intervals is flagged as maybe unresolved.
RESOLVED_INTERVALS = 2


def resolution(stats: dict, probe_interval: float, smooth_steps: float | None = None) -> str | None:
    """A warning when the spread across members (std) is under RESOLVED_INTERVALS probe intervals:
    interpolation places each crossing between probes, but the curve between them is not seen.
    `smooth_steps` given marks the per-step training loss: recorded every step, so --eval-every
    does not touch it; what limits it is the noise left after its smoothing window."""
    std = stats.get("std")
    if std is None or stats.get("n", 0) < 2 or std >= RESOLVED_INTERVALS * probe_interval:
        return None
    if smooth_steps is not None:
        return (f"maybe not resolved: the spread across members (std {std:.1f} steps) is under {RESOLVED_INTERVALS} "
                f"steps; this curve is recorded every step (--eval-every does not change it), so what limits it "
                f"is the loss noise left after smoothing over {smooth_steps:g} steps (--loss-smooth-steps): "
                f"compare the probe timings")
    return (f"maybe not resolved: the spread across members (std {std:.1f} steps) is under {RESOLVED_INTERVALS} "
            f"probe intervals ({probe_interval:g} steps); probe more often (--eval-every) or compare the "
            f"per-step loss timing")


def formation_order(earlier_mid: np.ndarray, later_mid: np.ndarray, tolerance: float) -> dict:
    """Whether the curve the task expects first (e.g. the previous-token score) forms before,
    with or after the one it expects later (e.g. the induction score), member by member."""
    order = []
    for p, i in zip(earlier_mid, later_mid):
        if not (np.isfinite(p) and np.isfinite(i)):
            order.append("censored")
        elif p < i - tolerance:
            order.append("before")
        elif p > i + tolerance:
            order.append("after")
        else:
            order.append("with")
    counts = {k: order.count(k) for k in ("before", "with", "after", "censored")}
    lags = np.asarray(later_mid, float) - np.asarray(earlier_mid, float)
    lags = lags[np.isfinite(lags)]
    return {"per_member": order, "counts": counts, "tolerance_steps": tolerance,
            "median_lag_later_minus_earlier": float(np.median(lags)) if len(lags) else None}
