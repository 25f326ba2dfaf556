"""Phase-change figures."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.patches import Rectangle

from induction_jax.phase.survival import kaplan_meier, survival_at
from induction_jax.plots import plt, save


def _group_colors(n_members: int, groups: dict | None):
    """A colour per member: one per group (a sweep's arms) when there are several, else a
    gradient over the members; and the legend's (label, colour) pairs."""
    if groups and len(groups) > 1:
        palette = plt.cm.tab10(np.arange(len(groups)) % 10)
        colors = np.zeros((n_members, 4))
        for c, idx in zip(palette, groups.values()):
            colors[np.asarray(idx)] = c
        return colors, list(zip(groups, palette))
    return plt.cm.viridis(np.linspace(0, 0.9, n_members)), []


def curves_with_marks(t, raw_EN, path: Path, ylabel: str, groups: dict | None = None) -> Path:
    """Every member's curve with its onset / midpoint / end, the ensemble's window shaded;
    coloured by group (label -> member indices) when there are several."""
    fig, ax = plt.subplots(figsize=(8, 4.6))
    colors, legend = _group_colors(len(raw_EN), groups)
    for e, c in enumerate(colors):
        ax.plot(t.steps, raw_EN[e], color=c, lw=0.5, alpha=0.35)
        ax.plot(t.steps, t.smoothed[e], color=c, lw=1.2)
        for name, marker in (("onset", "|"), ("midpoint", "o"), ("end", "|")):
            x = getattr(t, name)[e]
            if np.isfinite(x):
                y = np.interp(x, t.steps, t.smoothed[e])
                ax.plot([x], [y], marker=marker, color=c, ms=7 if marker == "o" else 12, mew=1.5)
    for (label, c), idx in zip(legend, (groups or {}).values()):
        formed = int(np.isfinite(t.midpoint[np.asarray(idx)]).sum())
        ax.plot([], [], color=c, lw=2, label=f"{textwrap.shorten(str(label), 40)} ({formed} of {len(idx)} timed)")
    on, end = np.nanmedian(t.onset) if np.isfinite(t.onset).any() else None, \
        np.nanmedian(t.end) if np.isfinite(t.end).any() else None
    if on is not None and end is not None:
        ax.axvspan(on, end, color="tab:orange", alpha=0.15, label="ensemble window (median onset to end)")
    if legend or (on is not None and end is not None):
        ax.legend(loc="lower right", fontsize=7 if legend else None)
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


def midpoint_distribution(mid, path: Path, label="in-context score midpoint step", groups: dict | None = None) -> Path:
    """Histogram and ECDF of the timed members, one colour per group when there are several."""
    groups = groups if groups and len(groups) > 1 else {"all": np.arange(len(mid))}
    _, legend = _group_colors(len(mid), groups)
    colours = [c for _, c in legend] or ["tab:blue"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6))
    timed = mid[np.isfinite(mid)]
    bins = np.histogram_bin_edges(timed, bins=min(20, max(3, len(timed) // 2))) if len(timed) else 10
    for (name, idx), c in zip(groups.items(), colours):
        v = np.sort(mid[np.asarray(idx)][np.isfinite(mid[np.asarray(idx)])])
        text = f"{textwrap.shorten(str(name), 36)} ({len(v)} of {len(idx)})" if len(groups) > 1 else None
        if len(v):
            a.hist(v, bins=bins, color=c, alpha=0.6 if len(groups) > 1 else 0.8, label=text)
            b.step(v, np.arange(1, len(v) + 1) / len(v), where="post", color=c, label=text)
    a.set_xlabel(label), a.set_ylabel("members"), a.set_title(f"histogram ({len(timed)} members timed)")
    b.set_xlabel(label), b.set_ylabel("fraction of timed members"), b.set_title("ECDF"), b.set_ylim(0, 1.02)
    if len(groups) > 1:
        b.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save(fig, path)


def timing_by_group(groups: dict, path: Path, xlabel: str) -> Path:
    """Box plot of midpoint steps per group (a learning rate, a sweep arm), in the given order;
    each label says how many of the group's members were timed."""
    keys = list(groups)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(keys)), 4.2))
    data = [np.asarray(groups[k], float)[np.isfinite(np.asarray(groups[k], float))] for k in keys]
    ax.boxplot([d if len(d) else [np.nan] for d in data], showfliers=True)
    for i, d in enumerate(data):
        ax.scatter(np.full(len(d), i + 1), d, s=10, color="tab:blue", alpha=0.6)
    names = [f"{k:g}" if isinstance(k, (int, float, np.number)) else textwrap.fill(str(k), 16) for k in keys]
    ax.set_xticks(range(1, len(keys) + 1),
                  [f"{n}\n({len(d)} of {len(groups[k])} timed)" for n, d, k in zip(names, data, keys)], fontsize=7)
    ax.set_xlabel(xlabel), ax.set_ylabel("in-context score midpoint step")
    ax.set_title("Phase-change timing by " + xlabel)
    fig.tight_layout()
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


def survival_and_ecdf(groups: dict, path: Path, label: str) -> Path:
    """Kaplan-Meier curves of formation with 95% bands, one per group (censored members marked +),
    beside the ECDF of the observed times of each group."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.cm.tab10(np.arange(len(groups)) % 10)
    for (name, (times, observed)), c in zip(groups.items(), colors):
        t_E, obs_E = np.asarray(times, float), np.asarray(observed, bool)
        km = kaplan_meier(t_E, obs_E)
        x0 = min(0.0, float(km["steps"][0]))
        x = np.concatenate([[x0], km["steps"]])
        n_c = int((~obs_E).sum())
        a.step(x, np.concatenate([[1.0], km["survival"]]), where="post", color=c,
               label=f"{name} ({len(t_E)} members, {n_c} censored)")
        a.fill_between(x, np.concatenate([[1.0], km["ci95_low"]]), np.concatenate([[1.0], km["ci95_high"]]),
                       step="post", color=c, alpha=0.18, lw=0)
        if n_c:
            a.plot(t_E[~obs_E], survival_at(km, t_E[~obs_E]), "+", color=c, ms=10, mew=1.5)
        v = np.sort(t_E[obs_E])
        if len(v):
            b.step(np.concatenate([[v[0]], v]), np.arange(len(v) + 1) / len(v), where="post", color=c,
                   label=f"{name} ({len(v)} observed)")
    a.set_xlabel(label), a.set_ylabel("fraction not yet started"), a.set_ylim(-0.02, 1.02)
    a.set_title("Kaplan-Meier survival of formation (95% band, + censored)"), a.grid(alpha=0.3)
    a.legend(fontsize=8)
    b.set_xlabel(label), b.set_ylabel("fraction of observed members"), b.set_ylim(-0.02, 1.02)
    b.set_title("ECDF of the observed times"), b.grid(alpha=0.3)
    if b.lines:
        b.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def variance_heatmap(matrix_IJ, init_levels, data_levels, decomposition: dict, path: Path,
                     timing_name: str) -> Path:
    """The timing as an init seed x data seed grid (censored cells blank and hatched), beside the
    init / data / residual shares of its variance with their 95% CIs."""
    x_IJ = np.asarray(matrix_IJ, float)
    I, J = x_IJ.shape
    cell = min(0.5, 9.0 / max(I, J))
    fig, (a, b) = plt.subplots(1, 2, figsize=(J * cell + 6.5, max(3.8, I * cell + 1.5)),
                               gridspec_kw={"width_ratios": [max(J * cell, 2.5), 2.6]})
    im = a.imshow(np.ma.masked_invalid(x_IJ), cmap="viridis", aspect="auto")
    fig.colorbar(im, ax=a, label=timing_name)
    finite = x_IJ[np.isfinite(x_IJ)]
    mid = (finite.min() + finite.max()) / 2 if len(finite) else 0.0
    fs = max(4.0, min(8.0, 90.0 / max(I, J)))
    for i in range(I):
        for j in range(J):
            if np.isfinite(x_IJ[i, j]):
                a.text(j, i, f"{x_IJ[i, j]:.0f}", ha="center", va="center", fontsize=fs,
                       color="k" if x_IJ[i, j] > mid else "w")
            else:
                a.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", color="0.5", lw=0))
    a.set_xticks(range(J), [str(v) for v in data_levels], fontsize=fs)
    a.set_yticks(range(I), [str(v) for v in init_levels], fontsize=fs)
    a.set_xlabel("data seed"), a.set_ylabel("init seed")
    n_nan = int((~np.isfinite(x_IJ)).sum())
    a.set_title(f"{timing_name} per member" + (f" ({n_nan} censored, hatched)" if n_nan else ""))
    names = ("init", "data", "residual")
    shares = decomposition.get("shares")
    if shares is None:
        b.text(0.5, 0.5, textwrap.fill(decomposition.get("reason") or "no decomposition", 28), ha="center",
               va="center", transform=b.transAxes, fontsize=9)
        b.set_xticks([]), b.set_yticks([])
    else:
        v = np.array([np.nan if shares[k] is None else shares[k] for k in names])
        ci = decomposition.get("shares_ci95") or {}
        lo = np.array([ci[k][0] if ci.get(k) else np.nan for k in names])
        hi = np.array([ci[k][1] if ci.get(k) else np.nan for k in names])
        b.bar(range(3), v, color=["tab:blue", "tab:orange", "tab:gray"], alpha=0.85)
        b.errorbar(range(3), v, yerr=[np.clip(v - lo, 0, None), np.clip(hi - v, 0, None)], fmt="none",
                   ecolor="k", capsize=4)
        b.set_xticks(range(3), ["init seed", "data seed", "residual\n(interaction\n+ noise)"])
        b.set_ylim(0, 1.02), b.set_ylabel("share of variance"), b.grid(axis="y", alpha=0.3)
    b.set_title("Variance shares (95% bootstrap CI)")
    fig.tight_layout()
    return save(fig, path)


def predictors(table: list, path: Path) -> Path:
    """Spearman rho of each predictor with the timing, with its 95% CI, as dots and whiskers."""
    n = len(table)
    fig, ax = plt.subplots(figsize=(6.5, max(2.2, 0.45 * n + 1.2)))
    ax.axvline(0, color="k", lw=1)
    for y, row in enumerate(table):
        if row.get("rho") is None:
            ax.text(0.02, y, "not defined", va="center", fontsize=8, color="0.4")
            continue
        if row.get("ci95_low") is not None and row.get("ci95_high") is not None:
            ax.plot([row["ci95_low"], row["ci95_high"]], [y, y], color="tab:blue", lw=2)
        ax.plot([row["rho"]], [y], "o", color="tab:blue", ms=7)
    ax.set_yticks(range(n), [f"{r['name']} (n={r.get('n', '?')})" for r in table])
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(-1.05, 1.05), ax.set_xlabel("Spearman rho with 95% bootstrap CI"), ax.grid(axis="x", alpha=0.3)
    ax.set_title("What goes with the timing")
    fig.tight_layout()
    return save(fig, path)
