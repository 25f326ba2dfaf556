"""The whole analysis on every snapshot of every member, as one batch of models.

Snapshots `[S, E, ...]` are flattened to S*E models and scored by `analysis.score.analyze_params`
(`batch` models at a time inside each compiled call), then reshaped back to `[S, E, ...]`. The
per-model part (`model_scores`) runs on any slice of the models, so `dynamics` computes it one
chunk of `batch` models at a time and keeps each (`chunks`); `assemble` joins the slices. On top of the per-head scores, each
member's sub-circuits are followed through training on the heads that form its circuit at the
end (its previous-token head and best induction head at the last snapshot):

- `prev_token_qk`: positional previous-token score of the previous-token head (weights);
- `prev_token_attention`: its previous-token attention score on the probe batch;
- `k_composition`: K-composition of the previous-token head into the induction head, in
  baseline sd (weights);
- `induction_attention`: the induction head's induction attention score;
- `ov_copying`: the induction head's full-OV eigenvalue copying score (weights);
- `induction_heads_necessary`: increase of loss_second_half when the member's final induction
  heads are mean-ablated together;
- `in_context_score`: the loss gap on the probe batch (the behaviour).
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np

from induction_jax.analysis import behaviour
from induction_jax.analysis.score import analyze_params
from induction_jax.files import json_safe
from induction_jax.functional import apply
from induction_jax.losses import token_losses
from induction_jax.tasks.repeated import split_losses

EVENTS = ("prev_token_qk", "prev_token_attention", "k_composition", "induction_attention", "ov_copying",
          "induction_heads_necessary", "in_context_score")
# Smallest change from initialisation to the end that counts as the event happening, in each
# score's own units.
MIN_CHANGE = {"prev_token_qk": 0.1, "prev_token_attention": 0.1, "k_composition": 2.0, "induction_attention": 0.1,
              "ov_copying": 0.2, "induction_heads_necessary": 0.5, "in_context_score": 1.0}


@functools.partial(jax.jit, static_argnames=("period", "batch"))
def in_context_scores(params: dict, tokens_BT: jax.Array, period: int, batch: int | None = None):
    """Loss on the first-half targets minus loss on the second-half targets, per model `[N]`."""
    def model(p):
        losses = split_losses(token_losses(apply(p, tokens_BT), tokens_BT), period)
        return losses["loss_first_half"] - losses["loss_second_half"]

    return behaviour.over_models(model, params, batch)


def _flatten(params_SE: dict) -> tuple[dict, tuple[int, int]]:
    S, E = params_SE["W_E"].shape[:2]
    return {k: v.reshape(S * E, *v.shape[2:]) for k, v in params_SE.items()}, (S, E)


def snapshot_analysis(params_SE: dict, period: int, batch: int = 32, probe_batch: int = 64) -> dict:
    """`analyze_params` of every (snapshot, member) model, its arrays reshaped to `[S, E, ...]`,
    plus the in-context score and each member's events."""
    flat, (S, E) = _flatten(params_SE)
    return assemble(params_SE, [model_scores(flat, period, batch, probe_batch)], period, batch, probe_batch)


def model_scores(flat: dict, period: int, batch: int | None, probe_batch: int) -> dict[str, np.ndarray]:
    """The per-model part for models `[N, ...]` (any slice of the flattened snapshots): every
    score (`score_<name>`), the in-context score, the mean patterns, and as JSON each model's
    circuit and what all share (the composition baseline; why weight-based scores do not apply)."""
    N = flat["W_E"].shape[0]
    result = analyze_params(flat, period, probe_batch=probe_batch, batch=batch)
    out = {f"score_{k}": np.asarray(v) for k, v in result["scores"].items() if np.ndim(v) >= 1 and np.shape(v)[0] == N}
    tokens = behaviour.probe_tokens(jax.random.PRNGKey(12345), probe_batch, period, flat["W_E"].shape[1])
    out["in_context_score"] = np.asarray(in_context_scores(jax.tree.map(jnp.asarray, flat), tokens, period, batch))
    out["patterns"] = np.asarray(result["extra"]["patterns"])
    out["circuits"] = np.array(json.dumps(json_safe(result["circuit"]["members"])))
    out["shared"] = np.array(json.dumps({"baseline": result["baseline"], "not_applicable": result["not_applicable"]}))
    return out


def assemble(params_SE: dict, parts: list[dict], period: int, batch: int | None, probe_batch: int) -> dict:
    """`snapshot_analysis`'s result from the `model_scores` of consecutive slices of the flattened
    models; the members' events (which need every snapshot) are computed here."""
    flat, (S, E) = _flatten(params_SE)
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k not in ("circuits", "shared")}
    scores = {k[len("score_"):]: v.reshape(S, E, *v.shape[1:]) for k, v in joined.items() if k.startswith("score_")}
    scores["in_context_score"] = joined["in_context_score"].reshape(S, E)
    models = [c for p in parts for c in json.loads(str(p["circuits"]))]
    shared = json.loads(str(parts[0]["shared"]))
    # At the last snapshot, each named by its member (the analysis numbered the flattened models).
    circuits = [{**models[(S - 1) * E + e], "member": e} for e in range(E)]
    tokens = behaviour.probe_tokens(jax.random.PRNGKey(12345), probe_batch, period, flat["W_E"].shape[1])
    jflat = jax.tree.map(jnp.asarray, flat)
    events = member_events(scores, circuits, shared["baseline"], jflat, tokens, period, batch)
    patterns = joined["patterns"].reshape(S, E, *joined["patterns"].shape[1:])
    return {"scores": scores, "events": events, "final_circuits": circuits, "baseline": shared["baseline"],
            "not_applicable": shared["not_applicable"], "patterns": patterns}


def member_events(scores: dict, circuits: list[dict], baseline: dict | None, jflat: dict, tokens, period: int,
                  batch: int) -> dict[str, np.ndarray]:
    """Each event's score `[S, E]`, on each member's final heads."""
    S, E = scores["prev_token_score"].shape[:2]
    prev = np.array([c["prev_token_head"] for c in circuits])          # [E, 2]
    ind = np.array([c["induction_head"] for c in circuits])
    e = np.arange(E)
    out = {"prev_token_attention": scores["prev_token_score"][:, e, prev[:, 0], prev[:, 1]],
           "induction_attention": scores["induction_score"][:, e, ind[:, 0], ind[:, 1]],
           "in_context_score": scores["in_context_score"]}
    if "positional_prev_token_score" in scores:
        out["prev_token_qk"] = scores["positional_prev_token_score"][:, e, prev[:, 0], prev[:, 1]]
        out["ov_copying"] = scores["ov_copying_score"][:, e, ind[:, 0], ind[:, 1]]
    if "k_composition" in scores and baseline is not None:
        k = scores["k_composition"][:, e, prev[:, 0], prev[:, 1], ind[:, 0], ind[:, 1]]
        out["k_composition"] = (k - baseline["k_composition"]["mean"]) / baseline["k_composition"]["std"]
    # The member's final induction heads, mean-ablated together at every snapshot.
    L = scores["induction_score"].shape[2]
    H = scores["induction_score"].shape[3]
    final = np.zeros((E, L, H), bool)
    for i, c in enumerate(circuits):     # its induction heads, or its best one if none passed the threshold
        for layer, h in c.get("induction_heads") or [c["induction_head"]]:
            final[i, layer, h] = True
    heads = np.broadcast_to(final[None], (S, *final.shape)).reshape(S * E, *final.shape[1:])
    out["induction_heads_necessary"] = np.asarray(behaviour.joint_mean_ablation(
        jflat, tokens, period, jnp.asarray(heads, jnp.float32), batch)).reshape(S, E)
    return {k: out[k] for k in EVENTS if k in out}
