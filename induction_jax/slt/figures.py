"""LLC figures: every member's LLC over training beside its in-context score."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from induction_jax.plots import plt, save

MARKS = {"peak": "^", "trough": "v", "plateau_start": "|", "plateau_end": "|"}


def llc_curves(steps, llc_SE, se_SE, stats: dict, path: Path) -> Path:
    """Per member: the LLC (+- 1 standard error) against step (log), the in-context score on a
    second axis, the stage boundaries marked and the ensemble's phase-change window shaded."""
    members = stats["members"]
    cols = min(4, len(members))
    rows = -(-len(members) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 3.2 * rows), squeeze=False)
    x = np.maximum(np.asarray(steps, float), 1.0)
    window = stats.get("phase_window")
    curve = stats.get("behaviour_curve", "in_context_score")
    for j, (ax, m) in enumerate(zip(axes.ravel(), members)):
        y, e = llc_SE[:, j], se_SE[:, j]
        ax.fill_between(x, y - e, y + e, color="tab:purple", alpha=0.2)
        ax.plot(x, y, color="tab:purple", lw=1.5, label="LLC")
        for b in m["boundaries"]:
            ax.plot(b["step"], b["llc"], MARKS[b["kind"]], color="k", ms=8)
        if window and window[0] is not None:
            ax.axvspan(window[0], window[1], color="tab:orange", alpha=0.15)
            ax.axvline(window[2], color="tab:orange", lw=1)
        if m.get("behaviour"):
            twin = ax.twinx()
            twin.plot(x, m["behaviour"], color="tab:green", lw=1, alpha=0.8)
            twin.set_ylabel(curve.replace("_", " "), color="tab:green", fontsize=8)
        ax.set_xscale("log"), ax.set_title(m["label"], fontsize=8), ax.grid(alpha=0.3)
        ax.set_xlabel("step (log; step 0 at 1)", fontsize=8), ax.set_ylabel("LLC", color="tab:purple", fontsize=8)
    for ax in axes.ravel()[len(members):]:
        ax.axis("off")
    fig.suptitle(f"LLC over training (purple, +- 1 s.e.), {curve.replace('_', ' ')} (green), stage boundaries "
                 "(^ peak, v trough, | plateau), phase window (orange)", fontsize=9)
    fig.tight_layout()
    return save(fig, path)
