"""In-training probes computed inside the compiled chunk: behaviour on the probe batch, and
per-head scores read off the weights alone."""

from __future__ import annotations

import jax

from induction_jax import model as model_lib
from induction_jax.analysis import circuits
from induction_jax.config import RunConfig


def probe_batch(cfg: RunConfig, probe_key: jax.Array, task_params=None):
    """The task's probe batch for a member with these task parameters (a dict with `tokens`)."""
    return cfg.task.probe(probe_key, task_params or {}, cfg.data.probe_batch_size, cfg.model.d_vocab)


def probe_metrics(cfg: RunConfig, params: dict, probe_key: jax.Array, edits=None, task_params=None):
    """The task's probes of the model as it trains, under its intervention at this step
    (`edits`), if it has one: `(scalars, per-head [L, H] values and curves)`. `task_params`: the
    member's (`training.task_inputs`)."""
    batch = probe_batch(cfg, probe_key, task_params)
    logits_BTV, acts = model_lib.forward(cfg.model, params, batch["tokens"], return_activations=True, edits=edits)
    out = cfg.task.probe_metrics(logits_BTV, acts, batch) | cfg.task.weight_probe_metrics(params, batch)
    arrays = cfg.task.head_probe_metrics + cfg.task.curve_probe_metrics
    return ({k: out[k] for k in cfg.task.probe_metric_names()}, {k: out[k] for k in arrays})


# Per-head weight-based probes: one value per head, or per (earlier head, later head) pair.
HEAD_METRICS = ("positional_prev_token_score",)
PAIR_METRICS = ("q_composition", "k_composition", "v_composition")


def weight_probes_apply(cfg: RunConfig) -> bool:
    """Whether the weight-based probes run: asked for, and an attention-only model without
    LayerNorm (the scores assume it)."""
    return cfg.train.weight_probes and cfg.model.attn_only and not cfg.model.layer_norm


def head_probe_metrics(cfg: RunConfig, params: dict) -> dict[str, jax.Array]:
    """Positional previous-token score `[L, H]` and Q/K/V composition `[L, H, L, H]` (raw scores,
    NaN where the later layer is not after the earlier) of one member, from its weights alone:
    a few small matrix products, cheap enough for every probe step. Empty when they do not apply."""
    if not weight_probes_apply(cfg):
        return {}
    one = {k: v[None] for k, v in params.items()}          # the circuit functions take a stacked ensemble
    pattern = circuits.positional_qk_pattern(one, cfg.task.seq_len)
    out = {"positional_prev_token_score": circuits.positional_prev_token_score(pattern)[0]}
    return out | {k: v[0] for k, v in circuits.composition_scores(one).items()}
