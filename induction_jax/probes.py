"""In-training probes computed inside the compiled chunk: behaviour on the probe batch, and
per-head scores read off the weights alone."""

from __future__ import annotations

import jax

from induction_jax import model as model_lib
from induction_jax.analysis import circuits
from induction_jax.analysis.attention import induction_score, previous_token_score
from induction_jax.config import RunConfig
from induction_jax.data import probe_sequences
from induction_jax.losses import split_losses, token_losses

PROBE_METRICS = ("in_context_score", "probe_loss_second_half", "prev_token_score", "induction_score")


def probe_batch(cfg: RunConfig, probe_key: jax.Array) -> jax.Array:
    return probe_sequences(probe_key, cfg.data, cfg.model.d_vocab)


def probe_metrics(cfg: RunConfig, params: dict, probe_key: jax.Array, edits=None) -> dict[str, jax.Array]:
    """In-context score (early minus late loss, nats), second-half loss, best layer-0
    previous-token score and best last-layer induction score (attention-based), of the model
    as it trains: under its intervention at this step (`edits`), if it has one."""
    tokens_BT = probe_batch(cfg, probe_key)
    logits_BTV, acts = model_lib.forward(cfg.model, params, tokens_BT, return_activations=True, edits=edits)
    losses = split_losses(token_losses(logits_BTV, tokens_BT), cfg.data.half_length)
    pattern_LHTS = acts.pattern_BLHTS.mean(0)
    return {
        "in_context_score": losses["loss_first_half"] - losses["loss_second_half"],
        "probe_loss_second_half": losses["loss_second_half"],
        "prev_token_score": previous_token_score(pattern_LHTS[0]).max(),
        "induction_score": induction_score(pattern_LHTS[-1], cfg.data.half_length).max(),
    }


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
    pattern = circuits.positional_qk_pattern(one, cfg.data.seq_len)
    out = {"positional_prev_token_score": circuits.positional_prev_token_score(pattern)[0]}
    return out | {k: v[0] for k, v in circuits.composition_scores(one).items()}
