"""Phase-change figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from induction_jax.plots import plt, save


def curves_with_marks(t, raw_EN, path: Path, ylabel: str) -> Path:
    """Every member's curve with its onset / midpoint / end, the ensemble's window shaded."""
    fig, ax = plt.subplots(figsize=(8, 4.6))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(raw_EN)))
    for e, c in enumerate(colors):
        ax.plot(t.steps, raw_EN[e], color=c, lw=0.5, alpha=0.35)
        ax.plot(t.steps, t.smoothed[e], color=c, lw=1.2)
        for name, marker in (("onset", "|"), ("midpoint", "o"), ("end", "|")):
            x = getattr(t, name)[e]
            if np.isfinite(x):
                y = np.interp(x, t.steps, t.smoothed[e])
                ax.plot([x], [y], marker=marker, color=c, ms=7 if marker == "o" else 12, mew=1.5)
    on, end = np.nanmedian(t.onset) if np.isfinite(t.onset).any() else None, \
        np.nanmedian(t.end) if np.isfinite(t.end).any() else None
    if on is not None and end is not None:
        ax.axvspan(on, end, color="tab:orange", alpha=0.15, label="ensemble window (median onset to end)")
        ax.legend(loc="lower right")
    n_c = int(t.censored.sum())
    ax.set_title(f"{t.metric} per member with onset | midpoint o | end |"
                 + (f"  ({n_c} censored)" if n_c else ""))
    ax.set_xlabel("training step"), ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return save(fig, path)


def loss_bump(steps, loss_EN, window, path: Path) -> Path:
    """The mean training loss with a power-law trend fitted after the window, and the rate of
    loss decrease per log-step, -dL/dlog t, whose spike marks the phase change (Olsson et al.
    select their window from such a derivative)."""
    mean = np.nanmean(loss_EN, 0)
    ok = (steps > 0) & np.isfinite(mean) & (mean > 0)
    t, y = steps[ok].astype(float), mean[ok]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(t, y, color="tab:blue", lw=1, label="mean training loss")
    if window is not None:
        after = t > window[1]
        if after.sum() > 3:
            coef = np.polyfit(np.log(t[after]), np.log(y[after]), 1)
            shown = t >= window[0]
            a.plot(t[shown], np.exp(np.polyval(coef, np.log(t[shown]))), "k--", lw=1,
                   label="power-law trend fitted after the window")
        for ax in (a, b):
            ax.axvspan(*window, color="tab:orange", alpha=0.15, label="phase-change window")
    a.set_xscale("log"), a.set_xlabel("training step (log)"), a.set_ylabel("loss (nats)")
    a.set_title("Training loss and its trend"), a.legend(fontsize=8), a.grid(alpha=0.3)
    # Differentiate on a log-spaced grid: raw steps are ever closer in log t, which amplifies noise.
    smooth = np.convolve(y, np.ones(9) / 9, mode="valid")
    ts = t[4:-4]
    grid = np.geomspace(ts[0], ts[-1], 80)
    rate = -np.gradient(np.interp(grid, ts, smooth), np.log(grid))
    b.plot(grid, rate, color="tab:purple", lw=1.5)
    b.set_xscale("log"), b.set_xlabel("training step (log)"), b.set_ylabel("-dL / d log(step)")
    b.set_title("Rate of loss decrease: the induction bump"), b.grid(alpha=0.3)
    return save(fig, path)


def midpoint_distribution(mid, path: Path, label="in-context score midpoint step") -> Path:
    v = np.sort(mid[np.isfinite(mid)])
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    if len(v):
        a.hist(v, bins=min(20, max(3, len(v) // 2)), color="tab:blue", alpha=0.8)
        b.step(v, np.arange(1, len(v) + 1) / len(v), where="post", color="tab:blue")
    a.set_xlabel(label), a.set_ylabel("members"), a.set_title(f"histogram ({len(v)} members)")
    b.set_xlabel(label), b.set_ylabel("fraction of members"), b.set_title("ECDF"), b.set_ylim(0, 1.02)
    fig.tight_layout()
    return save(fig, path)


def timing_by_group(groups: dict, path: Path, xlabel: str) -> Path:
    """Box plot of midpoint steps per group (e.g. per learning rate)."""
    keys = sorted(groups)
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(keys)), 3.8))
    data = [np.asarray(groups[k])[np.isfinite(groups[k])] for k in keys]
    ax.boxplot(data, showfliers=True)
    for i, d in enumerate(data):
        ax.scatter(np.full(len(d), i + 1), d, s=10, color="tab:blue", alpha=0.6)
    ax.set_xticks(range(1, len(keys) + 1), [f"{k:g}" for k in keys])
    ax.set_xlabel(xlabel), ax.set_ylabel("in-context score midpoint step")
    ax.set_title("Phase-change timing by " + xlabel)
    return save(fig, path)


def prev_vs_induction(prev_mid, ind_mid, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ok = np.isfinite(prev_mid) & np.isfinite(ind_mid)
    ax.scatter(prev_mid[ok], ind_mid[ok], color="tab:purple")
    if ok.any():
        lo, hi = float(min(prev_mid[ok].min(), ind_mid[ok].min())), float(max(prev_mid[ok].max(), ind_mid[ok].max()))
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="same step")
        ax.legend()
    ax.set_xlabel("previous-token score midpoint step"), ax.set_ylabel("induction score midpoint step")
    ax.set_title("Which head forms first?")
    return save(fig, path)
