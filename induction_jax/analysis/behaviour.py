"""Scores that run the model: attention-pattern scores on probe batches, head ablations,
direct logit attribution. Every function takes stacked params `[E, ...]` (any number of
models: members, or members x snapshots) and maps over them inside one `jit` (and, for
ablations, over the heads): no Python loop over models or heads. `batch` bounds memory: the
models run `batch` at a time (`vmap` within a batch, `lax.map` across batches); None = all
at once."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from induction_jax.analysis import attention as att
from induction_jax.functional import apply
from induction_jax.losses import token_losses
from induction_jax.tasks.repeated import repeated_sequences, split_losses


def over_models(fn, xs, batch: int | None):
    """`fn` mapped over the leading axis of the pytree `xs`: `vmap`, or `batch` models at a time."""
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


def _second_half_loss(p, tokens_BT, period, **kwargs):
    logits = apply(p, tokens_BT, **kwargs)
    return split_losses(token_losses(logits, tokens_BT), period)["loss_second_half"]


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
    over batch and positions, `[E, L, H]`; plus the clean loss `[E]`."""

    def member(p):
        clean = _second_half_loss(p, tokens_BT, period)
        mean_LHD = _mean_head_outputs(p, tokens_BT)
        L, H = mean_LHD.shape[:2]
        eye = jnp.eye(L * H).reshape(L * H, L, H)

        def ablate(onehot_LH):
            zero = _second_half_loss(p, tokens_BT, period, head_mask_LH=1.0 - onehot_LH)
            mean = _mean_ablated_loss(p, tokens_BT, period, onehot_LH, mean_LHD)
            return zero - clean, mean - clean

        zero, mean = jax.lax.map(ablate, eye)
        return {"zero_ablation_delta": zero.reshape(L, H), "mean_ablation_delta": mean.reshape(L, H),
                "clean_loss_second_half": clean}

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
        clean = _second_half_loss(p, tokens_BT, period)
        return _mean_ablated_loss(p, tokens_BT, period, heads_LH, _mean_head_outputs(p, tokens_BT)) - clean

    return over_models(member, (params, heads_ELH), batch)
