"""Phase-change timing of one curve per member (docs/definitions.md), vectorised over members.

From a curve s(t) logged during training, smoothed with a centred moving average:
s0 = mean of the first 5%, s1 = mean of the last 10%; onset / midpoint / end = the step
where s first crosses s0 + {0.1, 0.5, 0.9}(s1 - s0); peak-slope step = argmax of the
derivative of the smoothed s. A threshold crossing is located between the two probe points
that bracket it, by linear interpolation of the smoothed curve, and the peak slope at the
vertex of a parabola through the largest slope and its neighbours: a timing is never
quantised to the probe grid. A member whose rise |s1 - s0| is below `min_rise` is censored
(reported, not dropped). A logistic fit gives a second midpoint estimate and the width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class PhaseError(ValueError):
    """A curve that cannot be timed (too short to smooth, wrong shape): one-line message."""


# Smallest rise that counts as a transition, per probed curve (natural units of each).
MIN_RISE = {"in_context_score": 1.0, "induction_score": 0.2, "prev_token_score": 0.2,
            "probe_loss_second_half": 1.0, "loss_second_half": 1.0}
FRACTIONS = {"onset": 0.1, "midpoint": 0.5, "end": 0.9}
# The per-member timings a `Timing` holds, in the order of the tables.
TIMINGS = (*FRACTIONS, "peak_slope", "logistic_midpoint", "logistic_width")
# The direction a formation moves each curve: scores rise, losses fall. A move the other way
# (a trained member collapsing) is censored, not timed as a phase change.
DIRECTION = {"in_context_score": 1, "induction_score": 1, "prev_token_score": 1,
             "probe_loss_second_half": -1, "loss_second_half": -1}


def window_points(probe_interval: float, smooth_steps: float) -> int:
    """The moving-average window, in points, that spans at most `smooth_steps` steps: the
    largest odd w with (w - 1) x interval <= smooth_steps (1 = no smoothing)."""
    if smooth_steps < 0:
        raise PhaseError(f"smoothing span={smooth_steps:g} steps: must be >= 0")
    w = int(smooth_steps // probe_interval) + 1
    return w if w % 2 else w - 1


def moving_average(values_EN: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along the last axis; edges average over the part that exists."""
    if window < 1 or window % 2 == 0:
        raise PhaseError(f"smoothing window={window}: must be an odd number >= 1")
    if values_EN.shape[-1] < window:
        raise PhaseError(f"curve of {values_EN.shape[-1]} points: too short to smooth with a window "
                         f"of {window}; log probes more often (--eval-every) or train longer")
    k = np.ones(window)
    pad = window // 2
    filled = np.nan_to_num(values_EN)
    ok = np.isfinite(values_EN).astype(float)
    num = np.apply_along_axis(lambda r: np.convolve(np.pad(r, pad), k, "valid"), -1, filled)
    den = np.apply_along_axis(lambda r: np.convolve(np.pad(r, pad), k, "valid"), -1, ok)
    return np.where(den > 0, num / np.maximum(den, 1), np.nan)


@dataclass(frozen=True)
class Timing:
    """Per-member timings `[E]` of one curve (NaN where censored), with the reasons."""

    metric: str
    steps: np.ndarray
    smoothed: np.ndarray
    s0: np.ndarray
    s1: np.ndarray
    onset: np.ndarray
    midpoint: np.ndarray
    end: np.ndarray
    peak_slope: np.ndarray
    logistic_midpoint: np.ndarray
    logistic_width: np.ndarray
    censored: np.ndarray
    reason: list
    probe_interval: float  # median spacing of `steps`: the resolution the curve was logged at
    raw_onset: np.ndarray  # the onset of a formation, kept where only its end is missing; NaN with no formation

    def as_rows(self, members) -> list[dict]:
        """One row per member: its settings (`Members`), the timings and why it was censored."""
        table = members.table()
        rows = []
        for e in range(len(self.s0)):
            row = {"member": e, **{k: v[e] for k, v in table.items()}, "metric": self.metric,
                   "s0": float(self.s0[e]), "s1": float(self.s1[e]), "censored": bool(self.censored[e]),
                   "reason": self.reason[e]}
            for name in TIMINGS:
                v = getattr(self, name)[e]
                row[name] = None if not np.isfinite(v) else float(v)
            row["started"] = None if not np.isfinite(self.raw_onset[e]) else float(self.raw_onset[e])
            row["probe_interval"] = self.probe_interval
            rows.append(row)
        return rows


def _first_crossing(steps: np.ndarray, progress_EN: np.ndarray, frac: float) -> np.ndarray:
    """Step where the normalised progress first reaches `frac`, linearly interpolated between
    the bracketing probe points (NaN if never reached).

    If the point before the first hit is NaN (no probe there) the bracket is unknown and the
    hit's own step is returned.
    """
    t = np.asarray(steps, float)
    hit = progress_EN >= frac
    k = np.argmax(hit, axis=-1)
    prev = np.maximum(k - 1, 0)
    p_k = np.take_along_axis(progress_EN, k[:, None], -1)[:, 0]
    p_prev = np.take_along_axis(progress_EN, prev[:, None], -1)[:, 0]
    # p_prev < frac <= p_k wherever the bracket exists, so the denominator is positive there
    bracket = (k > 0) & np.isfinite(p_prev)
    w = np.where(bracket, (frac - p_prev) / np.where(bracket, p_k - p_prev, 1.0), 1.0)
    crossing = t[prev] + w * (t[k] - t[prev])
    return np.where(hit.any(-1), crossing, np.nan)


def _peak_vertex(steps: np.ndarray, slope_EN: np.ndarray) -> np.ndarray:
    """Step of the largest slope, refined to the vertex of the parabola through it and its two
    neighbours (any spacing); the grid step at either end, where a neighbour's slope is missing,
    or where the parabola is degenerate (does not open downward)."""
    t = np.asarray(steps, float)
    y = np.where(np.isfinite(slope_EN), slope_EN, -np.inf)
    j = np.argmax(y, axis=-1)
    N = len(t)
    lo, hi = np.clip(j - 1, 0, N - 1), np.clip(j + 1, 0, N - 1)
    y0, y1, y2 = (np.take_along_axis(y, i[:, None], -1)[:, 0] for i in (lo, j, hi))
    x0, x1, x2 = t[lo], t[j], t[hi]
    interior = (j > 0) & (j < N - 1) & np.isfinite(y0) & np.isfinite(y1) & np.isfinite(y2)
    with np.errstate(invalid="ignore", divide="ignore"):
        d1 = (y1 - y0) / (x1 - x0)
        d2 = (y2 - y1) / (x2 - x1)
        a = (d2 - d1) / (x2 - x0)
        vertex = 0.5 * (x0 + x1) - d1 / (2 * a)
    # y1 is the maximum, so d1 >= 0 >= d2 and the vertex lies in [(x0+x1)/2, (x1+x2)/2]; the clip
    # only guards rounding
    ok = interior & (a < 0) & np.isfinite(vertex)
    return np.where(ok, np.clip(vertex, x0, x2), x1)


def logistic_fit(steps: np.ndarray, values_EN: np.ndarray, n_t0: int = 200, n_width: int = 40):
    """Least-squares fit of a + b / (1 + exp(-(t - t0) / w)) per member.

    Grid over (t0, w); for each the best (a, b) is linear least squares in closed form, so the
    fit is global on the grid and needs no starting point. Returns (t0, w) per member; the
    10%-90% rise takes 2 ln(9) w = 4.39 w steps.
    """
    t = steps.astype(float)
    span = max(t[-1] - t[0], 1.0)
    t0s = np.linspace(t[0], t[-1], n_t0)
    dt = np.median(np.diff(t)) if len(t) > 1 else 1.0
    ws = np.geomspace(max(dt / 4, 1e-3), span / 2, n_width)
    with np.errstate(over="ignore"):      # exp overflow is the saturated logistic: g = 0 there
        g = 1.0 / (1.0 + np.exp(-(t[None, None, :] - t0s[:, None, None]) / ws[None, :, None]))  # [t0, w, N]
    y = np.nan_to_num(values_EN)
    ok = np.isfinite(values_EN).astype(float)
    n = ok.sum(-1)[:, None, None]
    # Normal equations for (a, b) with basis [1, g], weighted by ok.
    sg = np.einsum("twn,en->etw", g, ok)
    sgg = np.einsum("twn,en->etw", g * g, ok)
    sy = (y * ok).sum(-1)[:, None, None]
    sgy = np.einsum("twn,en->etw", g, y * ok)
    det = n * sgg - sg * sg
    b = np.where(np.abs(det) > 1e-12, (n * sgy - sg * sy) / np.where(det == 0, 1, det), 0.0)
    a = (sy - b * sg) / np.maximum(n, 1)
    syy = (y * y * ok).sum(-1)[:, None, None]
    sse = syy - 2 * a * sy - 2 * b * sgy + a * a * n + 2 * a * b * sg + b * b * sgg
    flat = sse.reshape(len(values_EN), -1).argmin(-1)
    i, j = np.unravel_index(flat, sse.shape[1:])
    # The global grid resolves t0 to span / n_t0 (15 steps on 3000): refine each member's t0,
    # then w, on fine local grids so the fitted midpoint is not quantised either.
    step_t0 = span / max(n_t0 - 1, 1)
    t0 = _refine(t, y, ok, t0s[i][:, None] + np.linspace(-step_t0, step_t0, 41)[None], ws[j][:, None], axis="t0")
    ratio = ws[1] / ws[0] if n_width > 1 else 2.0
    w = _refine(t, y, ok, t0[:, None], ws[j][:, None] * np.geomspace(1 / ratio, ratio, 21)[None], axis="w")
    return t0, w


def _refine(t, y_EN, ok_EN, t0_EK, w_EK, axis: str) -> np.ndarray:
    """The candidate (per member, K of them) with the least squared error of the best a + b g."""
    with np.errstate(over="ignore"):
        g = 1.0 / (1.0 + np.exp(-(t[None, None, :] - t0_EK[..., None]) / w_EK[..., None]))     # [E, K, N]
    g = g * ok_EN[:, None, :]
    n = ok_EN.sum(-1)[:, None]
    sg, sgg = g.sum(-1), (g * g).sum(-1)
    sy, syy = (y_EN * ok_EN).sum(-1)[:, None], (y_EN * y_EN * ok_EN).sum(-1)[:, None]
    sgy = (g * y_EN[:, None, :]).sum(-1)
    det = n * sgg - sg * sg
    b = np.where(np.abs(det) > 1e-12, (n * sgy - sg * sy) / np.where(det == 0, 1, det), 0.0)
    a = (sy - b * sg) / np.maximum(n, 1)
    sse = syy - 2 * a * sy - 2 * b * sgy + a * a * n + 2 * a * b * sg + b * b * sgg
    best = sse.argmin(-1)
    grid = t0_EK if axis == "t0" else w_EK
    grid = np.broadcast_to(grid, sse.shape)
    return np.take_along_axis(grid, best[:, None], -1)[:, 0]


def detect(steps: np.ndarray, values_EN: np.ndarray, metric: str, *, window: int = 5,
           min_rise: float | None = None) -> Timing:
    """Onset, midpoint, end, peak-slope and logistic estimates for every member's curve."""
    steps = np.asarray(steps)
    values_EN = np.atleast_2d(np.asarray(values_EN, float))
    if values_EN.shape[-1] != len(steps):
        raise PhaseError(f"{metric}: {values_EN.shape[-1]} values for {len(steps)} steps")
    min_rise = MIN_RISE.get(metric, 0.2) if min_rise is None else min_rise
    s = moving_average(values_EN, window)
    N = s.shape[-1]
    n0, n1 = max(1, int(round(0.05 * N))), max(1, int(round(0.10 * N)))
    s0 = np.nanmean(s[:, :n0], -1)
    s1 = np.array([row[np.isfinite(row)][-n1:].mean() if np.isfinite(row).any() else np.nan for row in s])
    rise = s1 - s0
    direction = np.where(rise >= 0, 1.0, -1.0)
    progress = (s - s0[:, None]) / np.where(np.abs(rise) > 0, rise, 1.0)[:, None]
    out = {name: _first_crossing(steps, progress, f) for name, f in FRACTIONS.items()}
    slope = np.gradient(s * direction[:, None], steps, axis=-1)
    peak = _peak_vertex(steps, slope)
    t0, w = logistic_fit(steps, values_EN)
    reasons = []
    for e in range(len(s0)):
        if not np.isfinite(rise[e]):
            reasons.append("no finite values")
        elif abs(rise[e]) < min_rise:
            reasons.append(f"no transition: rise {rise[e]:+.3g} below {min_rise:g}")
        elif metric in DIRECTION and np.sign(rise[e]) != DIRECTION[metric]:
            reasons.append(f"moves the wrong way ({rise[e]:+.3g}): a collapse, not a formation")
        elif not np.isfinite(out["end"][e]):
            reasons.append("transition not finished by the last step")
        else:
            reasons.append("")
    censored = np.array([bool(r) for r in reasons])
    nan_if = lambda v: np.where(censored, np.nan, v)  # noqa: E731
    # A start counts (for the survival of "not yet started") only where there is a formation
    # that has not finished; a curve with no transition, or one that collapses, never started.
    started = np.array([r in ("", "transition not finished by the last step") for r in reasons])
    return Timing(metric, steps, s, s0, s1, nan_if(out["onset"]), nan_if(out["midpoint"]), nan_if(out["end"]),
                  nan_if(peak), nan_if(t0), nan_if(w), censored, reasons,
                  float(np.median(np.diff(steps))) if len(steps) > 1 else float("nan"),
                  np.where(started, out["onset"], np.nan))
