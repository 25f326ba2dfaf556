"""Training figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

COLORS = ("tab:blue", "tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown")
TITLES = {("loss_first_half", "loss_second_half"): "Loss on the first half (unpredictable) and second half "
                                                   "(induction)"}


def save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def ensemble_lines(ax, steps, values_EN, color, label, thin_alpha=0.35):
    """Every member a thin line, the ensemble mean bold."""
    for row in values_EN:
        ax.plot(steps, row, color=color, lw=0.6, alpha=thin_alpha)
    ax.plot(steps, np.nanmean(values_EN, 0), color=color, lw=2.4, label=label)


def loss_plot(steps, losses: dict[str, np.ndarray], d_vocab: int, path: Path, title: str = "") -> Path:
    """The task's training losses against step (for the repeated task: first- and second-half
    loss); thin line per member, bold mean, ln V marked."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    E = len(next(iter(losses.values())))
    for name, color in zip(losses, COLORS):
        label = f"{name.replace('_', ' ')} (mean of {E})"
        ensemble_lines(ax, steps, losses[name], color, label)
    ax.axhline(math.log(d_vocab), color="k", ls="--", lw=1)
    ax.annotate(f"ln V = ln {d_vocab} = {math.log(d_vocab):.2f}", (steps[-1], math.log(d_vocab)),
                xytext=(0, 4), textcoords="offset points", ha="right", va="bottom", fontsize=9)
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy loss (nats)")
    ax.set_ylim(0, max(math.log(d_vocab) * 1.25, max(float(np.nanmax(np.nanmean(v, 0))) for v in losses.values())))
    if steps[-1] > steps[0]:
        ax.set_xlim(steps[0], steps[-1])
    ax.set_title(title or TITLES.get(tuple(losses), "Training loss: " + ", ".join(losses)))
    ax.legend(loc="center right")
    ax.grid(alpha=0.3)
    return save(fig, path)


def curve_plot(positions, steps, values_KP, path: Path, name: str, n_members: int, n_lines: int = 6) -> Path:
    """A curve probe (e.g. the loss at every token position) at up to `n_lines` probe steps, the
    first and last among them and the rest log-spaced; each the mean over the members."""
    steps = np.asarray(steps)
    pick = np.unique(np.r_[0, np.searchsorted(steps, np.geomspace(max(steps[0], 1), steps[-1], n_lines)),
                           len(steps) - 1].clip(0, len(steps) - 1))
    fig, ax = plt.subplots(figsize=(8, 4.8))
    cmap = plt.get_cmap("viridis")
    for j, k in enumerate(pick):
        ax.plot(positions, values_KP[k], color=cmap(j / max(1, len(pick) - 1)), lw=1.6, label=f"step {steps[k]}")
    ax.set_xlabel("position in the sequence")
    ax.set_ylabel(name.replace("_", " "))
    ax.set_title(f"{name.replace('_', ' ')} by position (mean of {n_members} members)")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)
