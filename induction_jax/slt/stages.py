"""Developmental stages from an LLC curve over training (after Hoogland et al. 2024).

The rule, on the estimates at the snapshot steps (in log step, where training's stages are
spread out):
- a **local extremum** is a snapshot whose estimate is above (a peak) or below (a trough) both
  neighbours by more than a tolerance on each side: tol = max(2 x the larger standard error of
  the three estimates, 5% of the curve's range), so chain noise does not make stages;
- a **plateau** is a run of at least 3 consecutive snapshots over which the slope between
  neighbouring snapshots, |delta llc / delta ln t|, stays below 10% of its largest value on the curve;
stage boundaries are the extrema and the two ends of each plateau.
"""

from __future__ import annotations

import numpy as np

MIN_PLATEAU = 3
PLATEAU_SLOPE = 0.1
RANGE_TOL = 0.05


def stage_boundaries(steps, llc, se) -> list[dict]:
    """`[{"step", "kind", "llc"}]` sorted by step, kind one of peak, trough, plateau_start, plateau_end."""
    steps, llc, se = (np.asarray(a, float) for a in (steps, llc, se))
    ok = (steps > 0) & np.isfinite(llc)
    x = steps[ok]
    t, y, e = np.log(x), llc[ok], np.nan_to_num(se[ok])
    out = []
    if len(y) < 3:
        return out
    span = float(y.max() - y.min())
    for k in range(1, len(y) - 1):
        tol = max(2 * e[k - 1:k + 2].max(), RANGE_TOL * span)
        up, down = y[k] - max(y[k - 1], y[k + 1]), min(y[k - 1], y[k + 1]) - y[k]
        if up > tol or down > tol:
            out.append({"step": float(x[k]), "kind": "peak" if up > tol else "trough", "llc": float(y[k])})
    # Slopes of the segments between consecutive snapshots (central differences would blur a
    # plateau's ends into the rises beside it).
    slope = np.abs(np.diff(y) / np.diff(t))
    flat = slope < PLATEAU_SLOPE * slope.max() if slope.max() > 0 else np.ones_like(slope, bool)
    k = 0
    while k < len(flat):
        if flat[k]:
            j = k
            while j + 1 < len(flat) and flat[j + 1]:
                j += 1
            if j - k + 2 >= MIN_PLATEAU:          # segments k..j span snapshots k..j+1
                out += [{"step": float(x[k]), "kind": "plateau_start", "llc": float(y[k])},
                        {"step": float(x[j + 1]), "kind": "plateau_end", "llc": float(y[j + 1])}]
            k = j + 1
        else:
            k += 1
    return sorted(out, key=lambda b: b["step"])
