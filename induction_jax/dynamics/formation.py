"""When each sub-circuit forms, in what order, and how far apart: per member and across members.

A sub-circuit forms at the first step where its score crosses the midpoint between its value
at initialisation (the first snapshot) and its final value (the last), interpolated linearly
between the snapshots that bracket the crossing: the rule of the phase timings, with s0 and s1
the end values. A score that changes by less than its event's minimum (`MIN_CHANGE`), or in
the direction opposite to its formation, has not formed (censored, with the reason).
"""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np

from induction_jax.dynamics.trajectories import MIN_CHANGE
from induction_jax.phase.detect import first_crossing

# Every event rises as its sub-circuit forms.
FRACTION = 0.5


def formation_steps(steps: np.ndarray, events: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """`({event: [E] steps, NaN if not formed}, {event: [E] reasons})` from scores `[S, E]`."""
    out, reasons = {}, {}
    for name, values_SE in events.items():
        v = np.asarray(values_SE, float).T                       # [E, S]
        s0, s1 = v[:, 0], v[:, -1]
        change = s1 - s0
        progress = (v - s0[:, None]) / np.where(np.abs(change) > 0, change, 1.0)[:, None]
        crossing = first_crossing(np.asarray(steps, float), progress, FRACTION)
        why = np.where(~np.isfinite(change), "no finite values",
                       np.where(change < MIN_CHANGE[name], f"no rise: changed by less than {MIN_CHANGE[name]:g}", ""))
        formed = why == ""
        out[name] = np.where(formed, crossing, np.nan)
        reasons[name] = [str(r) for r in why]
    return out, reasons


def fastest_rise_steps(steps: np.ndarray, events: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A second timing per event `[E]`: the middle of the snapshot interval over which its score
    rises fastest per step. It dates a score that jumps and then keeps rising (the midpoint
    rule waits for the end of the creep), or that overshoots and falls back (the midpoint rule
    can be met early, by drift), to the jump itself."""
    t = np.asarray(steps, float)
    out = {}
    for name, values_SE in events.items():
        slope = np.diff(np.asarray(values_SE, float), axis=0) / np.diff(t)[:, None]      # [S-1, E]
        k = np.nanargmax(np.where(np.isfinite(slope), slope, -np.inf), axis=0)
        out[name] = (t[k] + t[k + 1]) / 2
    return out


def orders(formed: dict[str, np.ndarray]) -> list[str]:
    """Each member's formation order, e.g. 'prev_token_qk < k_composition < ...'; events that
    did not form are left out; equal steps are joined with '='."""
    names = list(formed)
    E = len(next(iter(formed.values())))
    out = []
    for e in range(E):
        steps = sorted((formed[n][e], n) for n in names if np.isfinite(formed[n][e]))
        text = ""
        for i, (t, n) in enumerate(steps):
            text += ("" if i == 0 else (" = " if t == steps[i - 1][0] else " < ")) + n
        out.append(text)
    return out


def lags(formed: dict[str, np.ndarray], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """For every pair of events (a, b): the median lag b - a over the members where both formed,
    a bootstrap 95% CI of that median, and how often a came first."""
    rng = np.random.default_rng(seed)
    rows = []
    for a, b in itertools.combinations(formed, 2):
        d = formed[b] - formed[a]
        d = d[np.isfinite(d)]
        row = {"first": a, "second": b, "n": int(len(d))}
        if len(d):
            boots = np.median(d[rng.integers(0, len(d), (n_boot, len(d)))], axis=1)
            lo, hi = np.percentile(boots, [2.5, 97.5])
            row |= {"median_lag": float(np.median(d)), "ci95_low": float(lo), "ci95_high": float(hi),
                    "fraction_first_before_second": float((d > 0).mean()),
                    "fraction_same_step": float((d == 0).mean())}
        rows.append(row)
    return rows


def _medians(steps_by_event: dict[str, np.ndarray]) -> dict:
    """Each event's median step over the members where it formed (None where none did)."""
    return {n: (float(np.nanmedian(v)) if np.isfinite(v).any() else None) for n, v in steps_by_event.items()}


def summarize(steps: np.ndarray, events: dict[str, np.ndarray], labels: list[str]) -> dict:
    formed, reasons = formation_steps(steps, events)
    member_orders = orders(formed)
    counts = Counter(member_orders)
    fastest = fastest_rise_steps(steps, events)
    fastest = {n: np.where(np.isfinite(formed[n]), v, np.nan) for n, v in fastest.items()}   # formed ones only
    return {
        "members": [{"member": e, "label": labels[e], "order": member_orders[e],
                     **{f"{n}_step": (float(formed[n][e]) if np.isfinite(formed[n][e]) else None) for n in formed},
                     **{f"{n}_censored": reasons[n][e] for n in formed if reasons[n][e]}}
                    for e in range(len(labels))],
        "order_counts": [{"order": o, "n": n} for o, n in counts.most_common()],
        "lags": lags(formed),
        "median_step": _medians(formed),
        "n_formed": {n: int(np.isfinite(v).sum()) for n, v in formed.items()},
        "fastest_rise": {
            "median_step": _medians(fastest),
            "order_counts": [{"order": o, "n": c} for o, c in Counter(orders(fastest)).most_common()],
            "lags": lags(fastest)},
    }, formed
