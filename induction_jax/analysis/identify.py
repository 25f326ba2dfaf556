"""Find the induction circuit in every member and give a verdict, with thresholds stated here
(fixed before looking at trained models; not tuned to pass)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Thresholds:
    prev_token_score: float = 0.5        # attention mass on i-1, layer < last
    induction_score: float = 0.5         # attention mass on i-P+1, second half
    k_composition_std: float = 5.0       # K-composition above baseline mean + this many stds
    circuit_ablation_nats: float = 1.0   # mean-ablating either circuit head raises loss_second_half by more
    other_ablation_nats: float = 0.3     # ... and every other single head by less than this


def identify(scores: dict[str, np.ndarray], baseline: dict | None, thresholds: Thresholds = Thresholds()):
    """Per member: the previous-token head (best in any layer but the last), the induction head
    (best in a later layer), their scores, and two verdicts, each with its checks:

    - `clean_circuit`: the textbook two-head circuit. Both heads pass their attention
      thresholds, their K-composition is far above the random baseline and the largest of all
      pairs, the induction head copies (OV eigenvalues), mean-ablating either head raises
      loss_second_half by more than `circuit_ablation_nats`, and every other head by less than
      `other_ablation_nats`.
    - `induction_circuit`: the same mechanism with the induction work shared. The
      previous-token head passes and is necessary, every later head passing the induction
      threshold counts as an induction head, and mean-ablating them together is necessary.

    `scores` holds `[E, L, H]` arrays (and `k_composition [E, L, H, L, H]` when the weight-based
    scores apply); `baseline` is `composition_baseline(...)` or None when they do not.
    """
    prev, ind = scores["prev_token_score"], scores["induction_score"]
    E, L, H = prev.shape
    t = thresholds
    out = []
    for e in range(E):   # bookkeeping over small [L, H] tables; the scores were computed vmapped
        pl, ph = np.unravel_index(np.argmax(prev[e, :-1]), (L - 1, H)) if L > 1 else (0, 0)
        il, ih = np.unravel_index(np.argmax(ind[e, pl + 1:]), (L - pl - 1, H)) if L > 1 else (0, 0)
        il += pl + 1 if L > 1 else 0
        row = {"member": e, "prev_token_head": [int(pl), int(ph)], "induction_head": [int(il), int(ih)],
               "prev_token_score": float(prev[e, pl, ph]), "induction_score": float(ind[e, il, ih])}
        checks = {"prev_token_score": row["prev_token_score"] > t.prev_token_score,
                  "induction_score": row["induction_score"] > t.induction_score}
        if L < 2:
            checks["two_layers"] = False
        if "k_composition" in scores and baseline is not None and L > 1:
            kc = scores["k_composition"][e]
            k = float(kc[pl, ph, il, ih])
            base = baseline["k_composition"]
            row |= {"k_composition": k, "k_composition_baseline": base["mean"],
                    "k_composition_z": (k - base["mean"]) / base["std"],
                    "ov_copying_score": float(scores["ov_copying_score"][e, il, ih])}
            checks["k_composition_above_baseline"] = row["k_composition_z"] > t.k_composition_std
            checks["k_composition_largest_pair"] = bool(k >= np.nanmax(kc))
            checks["ov_copying_positive"] = row["ov_copying_score"] > 0
        if "mean_ablation_delta" in scores:
            d = scores["mean_ablation_delta"][e]
            circuit = {(int(pl), int(ph)), (int(il), int(ih))}
            others = [d[l, h] for l in range(L) for h in range(H) if (l, h) not in circuit]
            row |= {"ablation_prev_token_head": float(d[pl, ph]), "ablation_induction_head": float(d[il, ih]),
                    "ablation_max_other_head": float(max(others)) if others else 0.0}
            checks["ablating_circuit_heads_hurts"] = min(d[pl, ph], d[il, ih]) > t.circuit_ablation_nats
            checks["ablating_other_heads_barely_matters"] = row["ablation_max_other_head"] < t.other_ablation_nats
        row["checks"] = {k: bool(v) for k, v in checks.items()}
        row["clean_circuit"] = all(checks.values())
        # The same circuit with the induction work shared by several heads: each of them passes
        # the induction threshold, and mean-ablating all of them together (not one) must hurt.
        if "induction_heads_mask" in scores:
            row["induction_heads"] = [[int(a), int(b)] for a, b in np.argwhere(scores["induction_heads_mask"][e])]
        if "joint_ablation_induction_heads" in scores:
            row["n_induction_heads"] = int(scores["n_induction_heads"][e])
            row["ablation_all_induction_heads"] = float(scores["joint_ablation_induction_heads"][e])
            shared = {k: checks[k] for k in ("two_layers", "prev_token_score", "induction_score",
                                             "k_composition_above_baseline", "ov_copying_positive") if k in checks}
            if "mean_ablation_delta" in scores:
                shared["ablating_prev_token_head_hurts"] = row["ablation_prev_token_head"] > t.circuit_ablation_nats
                shared["ablating_all_induction_heads_hurts"] = (row["ablation_all_induction_heads"]
                                                                > t.circuit_ablation_nats)
            row["shared_checks"] = {k: bool(v) for k, v in shared.items()}
            row["induction_circuit"] = all(shared.values())
        out.append(row)
    return {"thresholds": asdict(t), "members": out, "n_clean": sum(r["clean_circuit"] for r in out),
            "n_induction_circuit": sum(r.get("induction_circuit", False) for r in out), "n_members": E}
