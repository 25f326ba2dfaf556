"""Scores that run the model: attention-pattern scores on probe batches, head ablations,
direct logit attribution. Every function takes stacked params `[E, ...]` (any number of
models: members, or members x snapshots) and maps over them inside one `jit` (and, for
ablations, over the heads): no Python loop over models or heads. The models are mapped as
an ensemble's members train (`memory.member_loop`'s rule): on a CPU sharded over the cores,
each core scoring its models one after another (`ensemble.map_traced`); on an accelerator
`vmap`ped, `batch` at a time (`lax.map` across batches) to bound memory, None = all at once."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from induction_jax.analysis import attention as att
from induction_jax.ensemble import map_traced
from induction_jax.functional import apply
from induction_jax.losses import token_losses
from induction_jax.memory import member_loop
from induction_jax.tasks.repeated import repeated_sequences, split_losses


def over_models(fn, xs, batch: int | None):
    """`fn` mapped over the leading axis of the pytree `xs`: one model at a time per device
    (`map`, the CPU rule), or `vmap`, `batch` models at a time."""
    if member_loop() == "map" and jax.process_count() == 1:
        return map_traced("map", fn, xs)
    if batch is None or batch >= jax.tree.leaves(xs)[0].shape[0]:
        return jax.vmap(fn)(xs)
    return jax.lax.map(fn, xs, batch_size=batch)


def probe_tokens(key: jax.Array, batch: int, period: int, d_vocab: int, repeats: int = 2):
    """Reference repeated sequences (period P) for the pattern scores and ablations."""
    return repeated_sequences(key, batch, period, d_vocab, True, repeats)


@functools.partial(jax.jit, static_argnames=("period", "prefix_period", "batch"))
def pattern_scores(params: dict, tokens_BT: jax.Array, prefix_tokens_BT: jax.Array,
                   period: int, prefix_period: int, batch: int | None = None) -> dict[str, jax.Array]:
    """Every attention-pattern score of every head, `[E, L, H]` each."""

    def member(p):
        _, acts = apply(p, tokens_BT, return_activations=True)
        pattern_BLHTS = acts.pattern_BLHTS
        mean_LHTS = pattern_BLHTS.mean(0)
        per_layer = jax.vmap(lambda A: {                              # over layers, A [B, H, T, S]
            # token equality, "rows with a target" (ours)
            "induction_score_tokens": att.induction_score_by_tokens(A, tokens_BT),
            "duplicate_score_tokens": att.duplicate_token_score_by_tokens(A, tokens_BT),
            "prev_token_score_tokens": att.previous_token_score_by_tokens(A, tokens_BT),
            # TransformerLens' detect_head ("mul"): all rows, per sequence, its shifted induction mask
            "induction_score_tl": att.induction_score_tl(A, tokens_BT),
            "duplicate_score_tl": att.duplicate_token_score_tl(A, tokens_BT),
            "prev_token_score_tl": att.previous_token_score_tl(A, tokens_BT),
        }, in_axes=1)(pattern_BLHTS)
        _, prefix_acts = apply(p, prefix_tokens_BT, return_activations=True)
        prefix = jax.vmap(lambda A: att.prefix_matching_score(A, prefix_tokens_BT, prefix_period),
                          in_axes=1)(prefix_acts.pattern_BLHTS)
        return {"prev_token_score": att.previous_token_score(mean_LHTS),
                "induction_score": att.induction_score(mean_LHTS, period),
                "duplicate_token_score": att.duplicate_token_score(mean_LHTS, period),
                "prefix_matching_score": prefix, **per_layer}

    return over_models(member, params, batch)


@functools.partial(jax.jit, static_argnames=("batch",))
def mean_patterns(params: dict, tokens_BT: jax.Array, batch: int | None = None) -> jax.Array:
    """Batch-mean attention patterns `[E, L, H, T, S]` (for the figures)."""
    return over_models(lambda p: apply(p, tokens_BT, return_activations=True)[1].pattern_BLHTS.mean(0),
                       params, batch)


def _second_half(logits_BTV, tokens_BT, period):
    return split_losses(token_losses(logits_BTV, tokens_BT), period)["loss_second_half"]


def _second_half_loss(p, tokens_BT, period, **kwargs):
    return _second_half(apply(p, tokens_BT, **kwargs), tokens_BT, period)


def _clean_pass(p, tokens_BT, period):
    """One clean pass: loss_second_half and the activations (every head's output, the residual
    stream entering each layer), for the ablations that compare against it."""
    logits, acts = apply(p, tokens_BT, return_activations=True)
    return _second_half(logits, tokens_BT, period), acts


def _mean_ablated_loss(p, tokens_BT, period, heads_LH, mean_LHD):
    """loss_second_half with the heads marked in `heads_LH` replaced by their mean output."""
    L, H, D = mean_LHD.shape
    B, T = tokens_BT.shape
    replace_LBTHD = jnp.broadcast_to((heads_LH[..., None] * mean_LHD)[:, None, None], (L, B, T, H, D))
    return _second_half_loss(p, tokens_BT, period, head_mask_LH=1.0 - heads_LH,
                             head_replace_LBTHD=replace_LBTHD)


def _mean_head_outputs(p, tokens_BT):
    """Each head's output averaged over batch and positions, `[L, H, D]`."""
    return apply(p, tokens_BT, return_activations=True)[1].head_out_BLTHD.mean((0, 2))


@functools.partial(jax.jit, static_argnames=("period", "batch"))
def ablations(params: dict, tokens_BT: jax.Array, period: int, batch: int | None = None) -> dict[str, jax.Array]:
    """Increase of loss_second_half when one head's output is replaced by zero, or by its mean
    over batch and positions, `[E, L, H]`; plus the clean loss `[E]`.

    One clean pass gives the loss, every head's output and the residual stream entering each
    layer; an ablation of a head of layer l changes nothing before it, so the ablated pass
    resumes from that layer's residual stream with the head's write removed (or replaced by
    its mean) and runs only the layers after it (`apply(resume_at=...)`): the same numbers as
    running the whole pass with the head masked, to float rounding."""

    def member(p):
        clean, acts = _clean_pass(p, tokens_BT, period)
        heads_BLTHD = acts.head_out_BLTHD
        mean_LHD = heads_BLTHD.mean((0, 2))
        L, H = mean_LHD.shape[:2]

        def layer_deltas(layer):
            pre_BTD, heads_BTHD = acts.resid_pre_BLTD[:, layer], heads_BLTHD[:, layer]

            def ablate(onehot_H):
                zero_BTD = pre_BTD + jnp.sum(heads_BTHD * (1.0 - onehot_H)[:, None], 2)
                mean_BTD = zero_BTD + onehot_H @ mean_LHD[layer]
                loss = lambda x: _second_half_loss(p, tokens_BT, period, resume_at=(layer, x))   # noqa: E731
                return loss(zero_BTD) - clean, loss(mean_BTD) - clean

            return jax.lax.map(ablate, jnp.eye(H))

        zero, mean = (jnp.stack(d) for d in zip(*[layer_deltas(layer) for layer in range(L)]))
        return {"zero_ablation_delta": zero, "mean_ablation_delta": mean, "clean_loss_second_half": clean}

    return over_models(member, params, batch)


@functools.partial(jax.jit, static_argnames=("period", "batch"))
def direct_logit_attribution(params: dict, tokens_BT: jax.Array, period: int,
                             batch: int | None = None) -> jax.Array:
    """Each head's output dotted with W_U[:, correct token], mean over second-half predictions
    (positions P..T-2 predicting targets P+1..T-1), `[E, L, H]`."""

    def member(p):
        _, acts = apply(p, tokens_BT, return_activations=True)
        heads_BLTHD = acts.head_out_BLTHD[:, :, period:-1]
        correct_BTD = jnp.swapaxes(p["W_U"], 0, 1)[tokens_BT[:, period + 1:]]
        return jnp.einsum("blthd,btd->lh", heads_BLTHD, correct_BTD) / (
            heads_BLTHD.shape[0] * heads_BLTHD.shape[2])

    return over_models(member, params, batch)


def to_numpy(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in tree.items()}


@functools.partial(jax.jit, static_argnames=("period", "batch"))
def joint_mean_ablation(params: dict, tokens_BT: jax.Array, period: int, heads_ELH: jax.Array,
                        batch: int | None = None):
    """Increase of loss_second_half when every head marked in `heads_ELH` (per member) is
    mean-ablated at once, `[E]` (for circuits whose work is shared by redundant heads)."""

    def member(args):
        p, heads_LH = args
        clean, acts = _clean_pass(p, tokens_BT, period)     # the clean loss and mean outputs at once
        return _mean_ablated_loss(p, tokens_BT, period, heads_LH, acts.head_out_BLTHD.mean((0, 2))) - clean

    return over_models(member, (params, heads_ELH), batch)
