"""Analysis figures (matplotlib PNG): one function per figure, each from the arrays of
`analyze_params`; `member` picks which ensemble member a single-model figure shows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from induction_jax.plots import plt, save


def _head_labels(L: int, H: int) -> list[str]:
    return [f"L{layer}H{h}" for layer in range(L) for h in range(H)]


def attention_grid(patterns_ELHTS, member: int, period: int, path: Path, circuit=None) -> Path:
    """Every head's attention pattern on one repeated sequence, as a layers x heads grid."""
    P = patterns_ELHTS[member]
    L, H = P.shape[:2]
    fig, axes = plt.subplots(L, H, figsize=(2.6 * H, 2.6 * L + 0.6), squeeze=False)
    marks = {} if circuit is None else {tuple(circuit["prev_token_head"]): "previous-token head",
                                        tuple(circuit["induction_head"]): "induction head"}
    for layer in range(L):
        for h in range(H):
            ax = axes[layer, h]
            ax.imshow(P[layer, h], cmap="Blues", vmin=0, vmax=1)
            ax.axvline(period - 0.5, color="tab:red", lw=0.6, alpha=0.6)
            ax.axhline(period - 0.5, color="tab:red", lw=0.6, alpha=0.6)
            title = f"L{layer}H{h}" + (f"\n{marks[(layer, h)]}" if (layer, h) in marks else "")
            ax.set_title(title, fontsize=9, color="tab:red" if (layer, h) in marks else "k")
            ax.set_xticks([]), ax.set_yticks([])
            if h == 0:
                ax.set_ylabel("query position")
            if layer == L - 1:
                ax.set_xlabel("key position")
    fig.suptitle(f"Attention patterns of member {member} on a repeated sequence (P = {period})")
    return save(fig, path)


def _paired_bars(a_LH, b_LH, labels: tuple[str, str], colors: tuple[str, str], ylabel: str, title: str,
                 path: Path, threshold: float | None = None, ylim=None) -> Path:
    """Two values per head as side-by-side bars, heads labelled L{layer}H{head}."""
    L, H = a_LH.shape
    x = np.arange(L * H)
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * L * H), 3.8))
    ax.bar(x - 0.2, a_LH.ravel(), 0.4, label=labels[0], color=colors[0])
    ax.bar(x + 0.2, b_LH.ravel(), 0.4, label=labels[1], color=colors[1])
    if threshold is not None:
        ax.axhline(threshold, color="k", ls=":", lw=1)
    ax.set_xticks(x, _head_labels(L, H))
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return save(fig, path)


def score_bars(scores: dict, member: int, path: Path) -> Path:
    """Previous-token and induction score of every head as bars."""
    return _paired_bars(scores["prev_token_score"][member], scores["induction_score"][member],
                        ("previous-token score", "induction score"), ("tab:blue", "tab:orange"),
                        "mean attention", f"Attention-pattern scores per head, member {member}", path,
                        threshold=0.5, ylim=(0, 1.05))


def positional_qk(pos_ELHTS, member: int, head, path: Path) -> Path:
    layer, h = head
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    im = ax.imshow(pos_ELHTS[member, layer, h], cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, shrink=0.8, label="attention")
    ax.set_xlabel("key position"), ax.set_ylabel("query position")
    ax.set_title(f"Positional QK pattern of L{layer}H{h} (member {member})\n"
                 "softmax(mask(W_pos QK W_pos^T / sqrt(d_head)))", fontsize=9)
    return save(fig, path)


def k_composition(kcomp_ELHLH, baseline: dict, member: int, path: Path) -> Path:
    """K-composition of every (layer-0 head, layer-1 head) pair beside its random baseline."""
    K = kcomp_ELHLH[member]
    L, H = K.shape[:2]
    mat = K[0, :, 1, :] if L >= 2 else np.full((H, H), np.nan)
    base = baseline["k_composition"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(9, 3.9), gridspec_kw={"width_ratios": [1.2, 1]})
    vmax = max(float(np.nanmax(mat)), base["mean"] * 2)
    im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=vmax)
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(im, ax=ax, shrink=0.8)
    ax.set_xticks(range(H), [f"L1H{h}" for h in range(H)]), ax.set_yticks(range(H), [f"L0H{h}" for h in range(H)])
    ax.set_xlabel("later head (keys read from)"), ax.set_ylabel("earlier head (writes)")
    ax.set_title(f"K-composition, member {member}")
    ax2.hist(mat.ravel(), bins=12, color="tab:green", alpha=0.8, label="this member's pairs")
    ax2.axvspan(base["mean"] - 2 * base["std"], base["mean"] + 2 * base["std"], color="gray", alpha=0.3,
                label=f"random baseline {base['mean']:.3f} ± 2·{base['std']:.3f}")
    ax2.set_xlabel("K-composition score"), ax2.set_ylabel("pairs")
    ax2.legend(fontsize=8)
    ax2.set_title("against random factors of the same shapes")
    return save(fig, path)


def full_ov_matrix(params: dict, member: int, head) -> np.ndarray:
    """W_E OV W_U of one head of one member: [V, V], row = source token, column = logit."""
    layer, h = head
    return np.asarray(params["W_E"][member] @ params["W_V"][member, layer, h] @ params["W_O"][member, layer, h]
                      @ params["W_U"][member])


def full_ov(params: dict, member: int, head, path: Path) -> Path:
    layer, h = head
    M = full_ov_matrix(params, member, head)
    fig, ax = plt.subplots(figsize=(4.8, 4.3))
    lim = float(np.abs(M).max())
    im = ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
    fig.colorbar(im, ax=ax, shrink=0.8, label="logit")
    ax.set_xlabel("output logit token"), ax.set_ylabel("source token")
    ax.set_title(f"Full OV circuit W_E OV W_U of L{layer}H{h} (member {member})", fontsize=9)
    return save(fig, path)


def ov_eigenvalues(eig_ELHK, scores: dict, member: int, path: Path) -> Path:
    eig = eig_ELHK[member]
    L, H = eig.shape[:2]
    fig, axes = plt.subplots(L, H, figsize=(2.4 * H, 2.4 * L + 0.5), squeeze=False)
    for layer in range(L):
        for h in range(H):
            ax = axes[layer, h]
            ev = eig[layer, h]
            ax.scatter(ev.real, ev.imag, s=10, color="tab:purple")
            lim = float(np.abs(ev).max()) * 1.1 or 1.0
            ax.axhline(0, color="k", lw=0.5), ax.axvline(0, color="k", lw=0.5)
            ax.set_xlim(-lim, lim), ax.set_ylim(-lim, lim)
            ax.set_title(f"L{layer}H{h}  copy {scores['ov_copying_score'][member, layer, h]:+.2f}", fontsize=8)
            ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(f"Eigenvalues of each head's full OV circuit (complex plane), member {member}")
    return save(fig, path)


def ablation_bars(scores: dict, member: int, path: Path) -> Path:
    return _paired_bars(scores["zero_ablation_delta"][member], scores["mean_ablation_delta"][member],
                        ("zero-ablation", "mean-ablation"), ("tab:gray", "tab:red"),
                        "increase of loss_second_half (nats)", f"Ablating one head at a time, member {member}", path)


def role_groups(circuit_rows, E: int, L: int, H: int) -> tuple[list[str], list[list[tuple[int, int, int]]]]:
    """The (member, layer, head) triples of each role: every member's previous-token head, its
    best induction head, the other heads (a head's role changes from seed to seed). Without the
    two roles (no circuit rows, or one layer, where both name the same head): one group per head
    index."""
    roles = [(tuple(r["prev_token_head"]), tuple(r["induction_head"])) for r in circuit_rows or []]
    if len(roles) != E or any(pt == ih for pt, ih in roles):
        return _head_labels(L, H), [[(e, layer, h) for e in range(E)] for layer in range(L) for h in range(H)]
    heads = [(layer, h) for layer in range(L) for h in range(H)]
    return (["previous-token head", "best induction head", "other heads"],
            [[(e, *pt) for e, (pt, _) in enumerate(roles)], [(e, *ih) for e, (_, ih) in enumerate(roles)],
             [(e, *k) for e, (pt, ih) in enumerate(roles) for k in heads if k not in (pt, ih)]])


def ensemble_distributions(scores: dict, path: Path, circuit_rows=None) -> Path:
    """Across seeds: the previous-token score, induction score and mean-ablation effect of each
    role's heads (`role_groups`)."""
    names = [n for n in ("prev_token_score", "induction_score", "mean_ablation_delta") if n in scores]
    E, L, H = scores["prev_token_score"].shape
    labels, groups = role_groups(circuit_rows, E, L, H)
    fig, axes = plt.subplots(1, len(names), figsize=(max(5, 0.55 * len(labels) + 2) * len(names), 3.8))
    for ax, name in zip(np.atleast_1d(axes), names):
        data = [np.array([scores[name][t] for t in g]) for g in groups]
        ax.boxplot(data, showfliers=False)
        for i, d in enumerate(data):
            ax.scatter(np.full(len(d), i + 1) + np.random.default_rng(i).uniform(-0.15, 0.15, len(d)), d,
                       s=8, color="tab:blue", alpha=0.6)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=20 if len(labels) <= 3 else 60, fontsize=8)
        ax.set_title(f"{name} across {E} seeds", fontsize=10)
    fig.tight_layout()
    return save(fig, path)
