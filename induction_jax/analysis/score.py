"""Score every head of every member in one pass: `analyze_params(params, period)`, on reference
repeated random sequences of period P (2P tokens), the sequences the induction scores are defined on."""

from __future__ import annotations

import jax
import numpy as np

from induction_jax.analysis import behaviour, circuits
from induction_jax.analysis.identify import Thresholds, identify
from induction_jax.analysis.weights import stacked_params
from induction_jax.tasks.repeated import induction_floor

# Per-head scores written to scores.csv, in this order.
HEAD_SCORES = ("prev_token_score", "induction_score", "duplicate_token_score", "prefix_matching_score",
               "prev_token_score_tokens", "induction_score_tokens", "duplicate_score_tokens",
               "prev_token_score_tl", "induction_score_tl", "duplicate_score_tl",
               "positional_prev_token_score", "ov_copying_score", "ov_top1", "ov_top5",
               "zero_ablation_delta", "mean_ablation_delta", "direct_logit_attribution",
               "max_k_composition_in", "max_k_composition_out")


def analyze_params(params: dict, period: int, *, probe_batch: int = 128, seed: int = 12345,
                   prefix_repeats: int = 4, thresholds: Thresholds = Thresholds(),
                   batch: int | None = None) -> dict:
    """All scores for stacked params `[E, ...]` on fresh reference probe sequences.

    Returns `scores` (arrays `[E, L, H]`, and `[E, L, H, L, H]` compositions), the extra
    arrays the figures need, the composition baseline and the circuit identification.
    `batch` models run at a time (memory; the numbers do not change).
    """
    params = stacked_params(params)
    V = params["W_E"].shape[1]
    T = 2 * period
    k_probe, k_prefix = jax.random.split(jax.random.PRNGKey(seed))
    tokens = behaviour.probe_tokens(k_probe, probe_batch, period, V)
    prefix_period = T // prefix_repeats
    prefix_tokens = behaviour.probe_tokens(k_prefix, probe_batch, prefix_period, V, prefix_repeats)
    jparams = jax.tree.map(jax.numpy.asarray, params)

    scores = behaviour.to_numpy(behaviour.pattern_scores(jparams, tokens, prefix_tokens, period, prefix_period, batch))
    scores |= behaviour.to_numpy(behaviour.ablations(jparams, tokens, period, batch))
    scores["direct_logit_attribution"] = np.asarray(
        behaviour.direct_logit_attribution(jparams, tokens, period, batch))
    extra = {"patterns": np.asarray(behaviour.mean_patterns(jparams, tokens[:1], batch)),
             "tokens": np.asarray(tokens[0])}
    baseline, not_applicable = None, None
    try:
        circuits.check_weight_based(params)
    except circuits.NotApplicable as e:
        not_applicable = str(e)
    if not_applicable is None:
        comp = {k: np.asarray(v) for k, v in circuits.composition_scores(jparams).items()}
        scores |= comp
        ov = circuits.ov_copying_scores(jparams)
        extra["ov_eigenvalues"] = ov.pop("ov_eigenvalues")
        scores |= ov
        pos = circuits.positional_qk_pattern(jparams, T)
        scores["positional_prev_token_score"] = np.asarray(circuits.positional_prev_token_score(pos))
        extra["positional_qk"] = np.asarray(pos)
        d_head = params["W_Q"].shape[-1]
        baseline = circuits.composition_baseline(params["W_Q"].shape[-2], d_head)
        # Largest K-composition into / out of each head; NaN where it has no partner layer.
        k = np.where(np.isnan(comp["k_composition"]), -np.inf, comp["k_composition"])
        for name, axes in (("max_k_composition_in", (1, 2)), ("max_k_composition_out", (3, 4))):
            m = k.max(axis=axes)
            scores[name] = np.where(np.isinf(m), np.nan, m)
    # All heads in layers after layer 0 whose induction score passes the threshold, per member.
    L = scores["induction_score"].shape[1]
    later = (np.arange(L) > 0)[None, :, None]
    induction_heads = (scores["induction_score"] > thresholds.induction_score) & later
    scores["joint_ablation_induction_heads"] = np.asarray(behaviour.joint_mean_ablation(
        jparams, tokens, period, jax.numpy.asarray(induction_heads, jax.numpy.float32), batch))
    scores["n_induction_heads"] = induction_heads.sum((1, 2))
    scores["induction_heads_mask"] = induction_heads
    circuit = identify(scores, baseline, thresholds)
    circuit["induction_floor_loss_second_half"] = induction_floor(np.asarray(tokens), period)
    circuit["clean_loss_second_half"] = scores["clean_loss_second_half"].tolist()
    circuit["composition_baseline"] = baseline
    circuit["weight_based_not_applicable"] = not_applicable
    return {"scores": scores, "extra": extra, "baseline": baseline, "circuit": circuit,
            "period": period, "not_applicable": not_applicable}


def scores_table(result: dict, members) -> tuple[list[str], list[list]]:
    """scores.csv rows: one per (member, layer, head), the member's settings (`Members`) and every
    per-head score (blank = n/a)."""
    scores = result["scores"]
    E, L, H = scores["prev_token_score"].shape
    table = members.table()
    header = ["member", *table, "layer", "head", *HEAD_SCORES]
    rows = []
    for e in range(E):
        for layer in range(L):
            for h in range(H):
                row = [e, *(col[e] for col in table.values()), layer, h]
                for name in HEAD_SCORES:
                    v = scores.get(name)
                    row.append("" if v is None or not np.isfinite(v[e, layer, h]) else f"{v[e, layer, h]:.6g}")
                rows.append(row)
    return header, rows
