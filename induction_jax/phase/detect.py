"""Phase-change timing of one curve per member (docs/definitions.md), vectorised over members.

From a curve s(t) logged during training, smoothed with a centred moving average:
s0 = the level before the transition (mean of the first BASELINE_STEPS steps), s1 = the level
of the plateau right after it (`plateau_levels`: from the steepest rise, the slope falls under
PLATEAU_FRACTION of its peak tau steps later; s1 = the mean level over [peak + tau, peak +
2 tau], where the slope must stay under PLATEAU_RESUME of it), so neither depends on how long the
run went on after the transition; onset / midpoint / end = the step where s first crosses
s0 + {0.1, 0.5, 0.9}(s1 - s0); peak-slope step = argmax of the derivative of the smoothed s.
A curve whose plateau is not yet in the record (still rising at its end) is censored "not
finished". A threshold crossing is located between the two probe points
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


# Smallest rise that counts as a transition, in the curve's own units, when the curve does not
# say (a task's `Metric.min_rise`).
DEFAULT_MIN_RISE = 0.2
FRACTIONS = {"onset": 0.1, "midpoint": 0.5, "end": 0.9}
# The per-member timings a `Timing` holds, in the order of the tables.
TIMINGS = (*FRACTIONS, "peak_slope", "logistic_midpoint", "logistic_width")
# The direction a formation moves a curve (its `Metric.direction`: scores rise, losses fall).
# A move the other way (a trained member collapsing) is censored, not timed as a phase change.

# The levels of a transition, from the transition itself (docs/definitions.md): s0 = the mean
# of the first BASELINE_STEPS steps (cut at the foot of the steepest rise); s1 = the plateau
# after it. The slope that finds the plateau is taken on the curve smoothed over
# PLATEAU_SMOOTH_STEPS (at least the timing window), in the formation's direction; tau = the
# steps from its peak to the first point where it falls under PLATEAU_FRACTION of the peak;
# the plateau is [peak + PLATEAU_FROM tau, peak + PLATEAU_TO tau], over which (from the
# slowdown on) the slope must stay under PLATEAU_RESUME of the peak (else the rise resumed and
# the search goes on from there: hysteresis, so probe noise alone does not restart it), and
# every point it uses must be unaffected by where the record ends.
BASELINE_STEPS = 50.0
PLATEAU_SMOOTH_STEPS = 50.0
PLATEAU_FRACTION = 0.1
PLATEAU_RESUME = 0.2        # hysteresis: the rise has resumed only where the slope is back over this fraction
PLATEAU_FROM, PLATEAU_TO = 1.0, 2.0
NOT_FINISHED = "transition not finished by the last step"


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


def first_crossing(steps: np.ndarray, progress_EN: np.ndarray, frac: float) -> np.ndarray:
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


def plateau_levels(steps: np.ndarray, s_EN: np.ndarray, wide_EN: np.ndarray, direction_E: np.ndarray,
                   half: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`(s0, s1, finished, plateau_end)` per member from the timing-smoothed curve `s_EN` and the curve smoothed
    for the slope `wide_EN` (half-window `half` points); see the constants above.

    A point counts only where neither smoothing reaches past the end of the record, so a member
    trained longer gets the same levels. Where no plateau is in the record, `finished` is False
    and s1 is the level at the last such point (provisional: it still sets the onset of a
    formation that has started), and plateau_end is +inf.
    """
    t = np.asarray(steps, float)
    E, N = s_EN.shape
    last_ok = N - 2 - half          # slope at i uses the wide average at i +- 1, which reaches i + 1 + half
    s0, s1 = np.full(E, np.nan), np.full(E, np.nan)
    finished = np.zeros(E, bool)
    plateau_end = np.full(E, np.inf)
    slope_EN = np.gradient(wide_EN, t, axis=-1) * direction_E[:, None] if N > 1 else np.zeros_like(wide_EN)
    for e in range(E):
        y, g = s_EN[e], np.where(np.isfinite(slope_EN[e]), slope_EN[e], -np.inf)
        if not np.isfinite(y).any():
            continue
        j = int(np.argmax(g))
        thr = PLATEAU_FRACTION * g[j] if np.isfinite(g[j]) and g[j] > 0 else 0.0
        under = np.flatnonzero(g[:j] < thr)
        foot = t[under[-1]] if len(under) else t[0]
        base = np.isfinite(y) & (t <= max(min(t[0] + BASELINE_STEPS, foot), t[np.argmax(np.isfinite(y))]))
        s0[e] = y[base].mean()
        ok_last = min(last_ok, N - 1)
        s1[e] = y[:ok_last + 1][np.isfinite(y[:ok_last + 1])][-1] if np.isfinite(y[:ok_last + 1]).any() else np.nan
        k = j
        while j <= ok_last:
            after = np.flatnonzero(g[k + 1:ok_last + 1] < thr)
            if not len(after):
                break
            q = k + 1 + int(after[0])
            tau = t[q] - t[j]
            t_end = t[j] + PLATEAU_TO * tau
            if t_end > t[ok_last]:
                break
            end = int(np.searchsorted(t, t_end, side="right")) - 1
            resumed = np.flatnonzero(g[q:end + 1] >= thr * PLATEAU_RESUME / PLATEAU_FRACTION)
            if len(resumed):
                k = q + int(resumed[0])
                continue
            window = np.flatnonzero((t >= t[j] + PLATEAU_FROM * tau) & (t <= t_end) & np.isfinite(y))
            s1[e] = y[window].mean() if len(window) else y[end]
            finished[e] = True
            plateau_end[e] = t_end
            break
    return s0, s1, finished, plateau_end


def detect(steps: np.ndarray, values_EN: np.ndarray, metric, *, window: int = 5,
           min_rise: float | None = None) -> Timing:
    """Onset, midpoint, end, peak-slope and logistic estimates for every member's curve.

    `metric`: a task's `Metric` (its name, direction and smallest rise), or a bare name (then
    the direction is read off the curve and the smallest rise is DEFAULT_MIN_RISE)."""
    info = metric if hasattr(metric, "direction") else None
    metric = info.name if info is not None else metric
    steps = np.asarray(steps)
    values_EN = np.atleast_2d(np.asarray(values_EN, float))
    if values_EN.shape[-1] != len(steps):
        raise PhaseError(f"{metric}: {values_EN.shape[-1]} values for {len(steps)} steps")
    if min_rise is None:
        min_rise = info.min_rise if info is not None and info.min_rise > 0 else DEFAULT_MIN_RISE
    s = moving_average(values_EN, window)
    N = s.shape[-1]
    n1 = max(1, int(round(0.10 * N)))
    # the level the record ends at: only to tell a collapse (and the direction of a curve of
    # unknown direction), never a level of the transition
    last = np.array([row[np.isfinite(row)][-n1:].mean() if np.isfinite(row).any() else np.nan for row in s])
    first = np.array([row[np.isfinite(row)][0] if np.isfinite(row).any() else np.nan for row in s])
    if info is not None:
        direction = np.full(len(s), float(info.direction))
    else:
        direction = np.where(last - first >= 0, 1.0, -1.0)
    wide = max(window, window_points(float(np.median(np.diff(steps))) if N > 1 else 1.0, PLATEAU_SMOOTH_STEPS))
    s0, s1, finished, plateau_end = plateau_levels(steps, s, moving_average(values_EN, min(wide, N - (1 - N % 2))),
                                      direction, wide // 2)
    rise = s1 - s0
    progress = (s - s0[:, None]) / np.where(np.abs(rise) > 0, rise, 1.0)[:, None]
    out = {name: first_crossing(steps, progress, f) for name, f in FRACTIONS.items()}
    slope = np.gradient(s * direction[:, None], steps, axis=-1)
    peak = _peak_vertex(steps, slope)
    # the logistic is fitted up to the end of the plateau, not over whatever followed it
    t0, w = logistic_fit(steps, np.where(np.asarray(steps, float)[None] <= plateau_end[:, None], values_EN, np.nan))
    reasons = []
    for e in range(len(s0)):
        moved = (last[e] - s0[e]) * direction[e]
        if not (np.isfinite(rise[e]) and np.isfinite(last[e])):
            reasons.append("no finite values")
        elif moved < -min_rise:
            reasons.append(f"moves the wrong way ({last[e] - s0[e]:+.3g}): a collapse, not a formation")
        elif abs(rise[e]) < min_rise:
            reasons.append(f"no transition: rise {rise[e]:+.3g} below {min_rise:g}")
        elif not finished[e]:
            reasons.append(f"{NOT_FINISHED}: still rising at its end (its slope has not stayed under "
                           f"{PLATEAU_FRACTION:g} of its peak over a plateau)")
        elif not np.isfinite(out["end"][e]):
            reasons.append(NOT_FINISHED)
        else:
            reasons.append("")
    censored = np.array([bool(r) for r in reasons])
    nan_if = lambda v: np.where(censored, np.nan, v)  # noqa: E731
    # A start counts (for the survival of "not yet started") only where there is a formation
    # that has not finished; a curve with no transition, or one that collapses, never started.
    started = np.array([r == "" or r.startswith(NOT_FINISHED) for r in reasons])
    return Timing(metric, steps, s, s0, s1, nan_if(out["onset"]), nan_if(out["midpoint"]), nan_if(out["end"]),
                  nan_if(peak), nan_if(t0), nan_if(w), censored, reasons,
                  float(np.median(np.diff(steps))) if len(steps) > 1 else float("nan"),
                  np.where(started, out["onset"], np.nan))
