"""In-training probes on a member's fixed probe batch, computed inside the compiled chunk."""

from __future__ import annotations

import jax

from induction_jax import model as model_lib
from induction_jax.analysis.attention import induction_score, previous_token_score
from induction_jax.config import RunConfig
from induction_jax.data import probe_sequences
from induction_jax.losses import split_losses, token_losses

PROBE_METRICS = ("in_context_score", "probe_loss_second_half", "prev_token_score", "induction_score")


def probe_batch(cfg: RunConfig, probe_key: jax.Array) -> jax.Array:
    return probe_sequences(probe_key, cfg.data, cfg.model.d_vocab)


def probe_metrics(cfg: RunConfig, params: dict, probe_key: jax.Array) -> dict[str, jax.Array]:
    """In-context score (early minus late loss, nats), second-half loss, best layer-0
    previous-token score and best last-layer induction score (attention-based)."""
    tokens_BT = probe_batch(cfg, probe_key)
    logits_BTV, acts = model_lib.forward(cfg.model, params, tokens_BT, return_activations=True)
    losses = split_losses(token_losses(logits_BTV, tokens_BT), cfg.data.half_length)
    pattern_LHTS = acts.pattern_BLHTS.mean(0)
    return {
        "in_context_score": losses["loss_first_half"] - losses["loss_second_half"],
        "probe_loss_second_half": losses["loss_second_half"],
        "prev_token_score": previous_token_score(pattern_LHTS[0]).max(),
        "induction_score": induction_score(pattern_LHTS[-1], cfg.data.half_length).max(),
    }
