"""Formation figures: trajectories of the sub-circuit scores, the order chart, an animation."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from induction_jax.plots import plt, save

LABELS = {"prev_token_qk": "previous-token head: positional QK", "prev_token_attention": "previous-token attention",
          "k_composition": "K-composition (baseline sd)", "induction_attention": "induction attention",
          "ov_copying": "induction head OV copying", "induction_heads_necessary": "ablating induction heads (nats)",
          "in_context_score": "in-context score (nats)"}
COLORS = dict(zip(LABELS, plt.cm.tab10(np.arange(len(LABELS)))))


def trajectories(steps, events: dict, formed: dict, window, path: Path) -> Path:
    """Every member's score of every sub-circuit against step, its formation step marked, the
    ensemble's phase window (median in-context onset to end) shaded."""
    names = list(events)
    cols = 4
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.1 * rows), squeeze=False)
    x = np.maximum(np.asarray(steps, float), 1.0)
    for ax, name in zip(axes.ravel(), names):
        v = events[name]
        for e in range(v.shape[1]):
            ax.plot(x, v[:, e], color=COLORS[name], lw=0.7, alpha=0.6)
            t = formed[name][e]
            if np.isfinite(t):
                ax.plot([max(t, 1.0)], [np.interp(t, steps, v[:, e])], "o", color="k", ms=3)
        if window is not None:
            ax.axvspan(*window, color="tab:orange", alpha=0.15)
        ax.set_xscale("log"), ax.set_title(LABELS[name], fontsize=9), ax.grid(alpha=0.3)
        ax.set_xlabel("step (log; step 0 drawn at 1)", fontsize=8)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    fig.suptitle("Sub-circuit scores per member (dots: formation steps; shaded: the phase-change window)")
    fig.tight_layout()
    return save(fig, path)


def order_chart(formed: dict, labels: list[str], path: Path) -> Path:
    """One row per member (sorted by in-context formation), each event's formation step."""
    names = list(formed)
    E = len(labels)
    key = formed.get("in_context_score", next(iter(formed.values())))
    order = np.argsort(np.where(np.isfinite(key), key, np.inf))
    fig, ax = plt.subplots(figsize=(9, 0.32 * E + 1.6))
    for row, e in enumerate(order):
        ax.axhline(row, color="0.9", lw=0.6, zorder=0)
        for i, name in enumerate(names):
            t = formed[name][e]
            if np.isfinite(t):
                ax.plot(t, row + (i - len(names) / 2) * 0.06, "o", color=COLORS[name], ms=5,
                        label=LABELS[name] if row == 0 else None)
    ax.set_yticks(range(E), [labels[e] for e in order], fontsize=7)
    ax.set_xlabel("formation step (midpoint between the value at initialisation and the final value)")
    ax.set_title("When each sub-circuit forms, member by member")
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def animation(steps, patterns_SLHTS: np.ndarray, kcomp_SHH: np.ndarray | None, member: int, path: Path,
              period: int) -> Path:
    """A GIF of one member over training: every head's attention pattern on the probe sequence
    and the K-composition matrix (layer-0 heads x layer-1 heads), one frame per snapshot."""
    from matplotlib.animation import FuncAnimation, PillowWriter

    S, L, H = patterns_SLHTS.shape[:3]
    extra = 1 if kcomp_SHH is not None else 0
    fig, axes = plt.subplots(L, H + extra, figsize=(2.0 * (H + extra), 2.0 * L + 0.5), squeeze=False)
    images = []
    for layer in range(L):
        for h in range(H):
            ax = axes[layer, h]
            images.append(ax.imshow(patterns_SLHTS[0, layer, h], cmap="Blues", vmin=0, vmax=1))
            ax.set_title(f"L{layer}H{h}", fontsize=8), ax.set_xticks([]), ax.set_yticks([])
    kimg = None
    if extra:
        ax = axes[0, H]
        vmax = float(np.nanmax(kcomp_SHH)) or 1.0
        kimg = ax.imshow(kcomp_SHH[0], cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title("K-comp. L0 -> L1", fontsize=8)
        ax.set_xlabel("L1 head", fontsize=7), ax.set_ylabel("L0 head", fontsize=7)
        for a in axes[1:, H]:
            a.axis("off")
    title = fig.suptitle("")

    def frame(i):
        for (layer, h), im in zip(np.ndindex(L, H), images):
            im.set_data(patterns_SLHTS[i, layer, h])
        if kimg is not None:
            kimg.set_data(kcomp_SHH[i])
        title.set_text(f"member {member}, step {int(steps[i])} (P = {period})")
        return images

    anim = FuncAnimation(fig, frame, frames=S)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.gif")
    anim.save(tmp, writer=PillowWriter(fps=4), dpi=70)
    plt.close(fig)
    tmp.replace(path)
    return path
