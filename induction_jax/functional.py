"""The transformer as a pure function of `(params, tokens)` on plain arrays (no Flax).

Parameters in circuit layout (TransformerLens convention, row vectors): `W_E [V,D]`,
`W_pos [n_ctx,D]`, `W_Q, W_K, W_V [L,H,D,K]`, `W_O [L,H,K,D]`, `W_U [D,V]`; optional
`W_in [L,D,M]`, `W_out [L,M,D]` (MLPs) and `ln1_w, ln1_b, ln2_w, ln2_b [L,D]`,
`lnf_w, lnf_b [D]` (pre-LayerNorm). The architecture is read off the names present.
Shape suffixes: B batch, T query positions, S key positions, L layers, H heads,
D d_model, K d_head, V vocab, M d_mlp.

Anything that changes the pass (an intervention during training, an ablation in the
analysis) is an `Edit` called at one of the named sites (`Site`, `SITES`): the queries', keys'
and values' inputs, the attention pattern, each head's mixed values, each head's output.
`apply` reads like the math with a `hook` at each; an edit is a pure function of the value
there.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

LN_EPS = 1e-5


class Activations(NamedTuple):
    """What the analysis needs, returned as values: per-layer attention and head outputs."""

    pattern_BLHTS: jax.Array        # softmax attention, query T x key S
    head_out_BLTHD: jax.Array       # each head's write into the residual stream, A (x W_V) W_O
    resid_pre_BLTD: jax.Array       # residual stream entering each layer
    resid_final_BTD: jax.Array      # residual stream before the unembedding


def layer_norm(x_TD: jax.Array, w_D: jax.Array, b_D: jax.Array) -> jax.Array:
    x_TD = x_TD - x_TD.mean(-1, keepdims=True)
    return x_TD * jax.lax.rsqrt((x_TD * x_TD).mean(-1, keepdims=True) + LN_EPS) * w_D + b_D


def causal_mask(n: int) -> jax.Array:
    return jnp.tril(jnp.ones((n, n), dtype=bool))


def _attention_core_fwd(q_BHTK, k_BHSK, v_BHSK):
    """Products in the inputs' dtype; the softmax always in float32 (for a bfloat16 compute mode)."""
    T, d_head = q_BHTK.shape[-2], q_BHTK.shape[-1]
    scores_BHTS = jnp.einsum("bhtk,bhsk->bhts", q_BHTK, k_BHSK).astype(jnp.float32) / jnp.sqrt(jnp.float32(d_head))
    scores_BHTS = jnp.where(causal_mask(T), scores_BHTS, jnp.finfo(jnp.float32).min)
    pattern_BHTS = jax.nn.softmax(scores_BHTS, axis=-1).astype(q_BHTK.dtype)
    return jnp.einsum("bhts,bhsk->bhtk", pattern_BHTS, v_BHSK), pattern_BHTS


def _minor_transpose(x):
    """`x` with its last two axes swapped, materialised: the barrier stops XLA from folding
    the transpose back into the next dot's dimension numbers."""
    return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


@jax.custom_vjp
def attention_core(q_BHTK, k_BHSK, v_BHSK):
    """Causal softmax attention `(z [B,H,T,K], pattern [B,H,T,S])` with a hand-written backward.

    The math is autodiff's; only the layout differs. Autodiff's backward contracts over the
    leading (query) axis of the pattern for dK and dV, a transposed product that XLA's CPU
    backend runs through a slow generic kernel. Here those two products contract the small
    [T,K] operand transposed instead (Q^T dS and dZ^T P), so every product of the attention
    takes the fast library path (measured with `benchmarks/throughput.py`: ~8% on the train
    step on a 2-core CPU).
    """
    return _attention_core_fwd(q_BHTK, k_BHSK, v_BHSK)


def _attention_core_vjp_fwd(q_BHTK, k_BHSK, v_BHSK):
    z_BHTK, pattern_BHTS = _attention_core_fwd(q_BHTK, k_BHSK, v_BHSK)
    return (z_BHTK, pattern_BHTS), (q_BHTK, k_BHSK, v_BHSK, pattern_BHTS)


def _attention_core_vjp_bwd(residuals, cotangents):
    q_BHTK, k_BHSK, v_BHSK, pattern_BHTS = residuals
    dz_BHTK, dpattern_BHTS = cotangents
    dtype = q_BHTK.dtype
    scale = (1.0 / jnp.sqrt(jnp.float32(q_BHTK.shape[-1]))).astype(dtype)
    dpattern_BHTS = (jnp.einsum("bhtk,bhsk->bhts", dz_BHTK, v_BHSK).astype(jnp.float32)
                     + dpattern_BHTS.astype(jnp.float32))
    # softmax backward (float32); masked entries have pattern 0, hence score gradient 0
    p_BHTS = pattern_BHTS.astype(jnp.float32)
    dscores_BHTS = (p_BHTS * (dpattern_BHTS - (dpattern_BHTS * p_BHTS).sum(-1, keepdims=True))).astype(dtype)
    dq_BHTK = jnp.einsum("bhts,bhsk->bhtk", dscores_BHTS, k_BHSK) * scale
    dk_BHKS = jnp.einsum("bhkt,bhts->bhks", _minor_transpose(q_BHTK), dscores_BHTS) * scale
    dv_BHKS = jnp.einsum("bhkt,bhts->bhks", _minor_transpose(dz_BHTK), pattern_BHTS)
    return dq_BHTK, jnp.swapaxes(dk_BHKS, -1, -2), jnp.swapaxes(dv_BHKS, -1, -2)


attention_core.defvjp(_attention_core_vjp_fwd, _attention_core_vjp_bwd)


def previous_token_target(T: int) -> jax.Array:
    """The ideal previous-token pattern `[T, S]`: row i attends to i-1, row 0 to itself."""
    return jnp.eye(T, k=-1).at[0, 0].set(1.0)


def previous_token_values(v_BHSK: jax.Array) -> jax.Array:
    """`previous_token_target(T) @ v` as a shift (row i reads value i-1, row 0 its own), no product."""
    return jnp.concatenate([v_BHSK[:, :, :1], v_BHSK[:, :, :-1]], axis=2)


def induction_target(tokens_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The ideal induction pattern of each sequence `[B, T, S]` (uniform over the keys j <= i-1
    with x[j-1] == x[i]) and which rows have such a key `[B, T]`."""
    T = tokens_BT.shape[1]
    prev_BS = jnp.concatenate([jnp.full_like(tokens_BT[:, :1], -1), tokens_BT[:, :-1]], axis=1)
    hits_BTS = (prev_BS[:, None, :] == tokens_BT[:, :, None]) & jnp.tril(jnp.ones((T, T), bool), -1)
    n_BT = hits_BTS.sum(-1)
    return hits_BTS / jnp.maximum(n_BT, 1)[..., None], n_BT > 0



# ---- Sites: the named points of the pass where an edit can act -------------------------------

class Site(NamedTuple):
    """Where in the pass an edit is called, and what it may read there.

    `name` is one of `SITES`; the value an edit receives and returns there:

    - `attn_in`: the input of one of the layer's projections (`qkv`: 0 queries, 1 keys, 2
      values) `[B,T,D]`, or None until an edit sets it: the projection then reads the
      normalised residual stream, `norm(resid_BTD)`, computed once for the inputs no edit set
      (an edit that changes it computes its own, so each input's LayerNorm, and the order of
      the float sums of its gradient, are those of earlier versions).
    - `pattern`: `(z [B,H,T,K], pattern [B,H,T,S])`, the attention pattern and the values it
      mixed (`v_BHSK`), changed together.
    - `z`: each head's mixed values `[B,H,T,K]` as its output projection reads them.
    - `head_out`: each head's write into the residual stream `[B,T,H,D]` (computed per head
      only where an edit acts here or the activations are asked for).
    """

    name: str
    layer: int
    tokens_BT: jax.Array
    params: dict
    resid_BTD: jax.Array            # the residual stream entering the layer (before its LayerNorm)
    norm: Callable                  # the layer's input normalisation (the identity without LayerNorm)
    writes: tuple                   # each earlier layer's `Write`
    qkv: int | None = None          # attn_in: which input
    v_BHSK: jax.Array | None = None  # pattern: the values


SITES = ("attn_in", "pattern", "z", "head_out")


class Write(NamedTuple):
    """What one layer's heads wrote into the residual stream: `z` through that layer's `W_O`,
    or `heads_BTHD` where an edit at `head_out` changed it."""

    z_BHTK: jax.Array
    heads_BTHD: jax.Array | None


class Edit:
    """Something done to the forward pass at one named site (`Site`, `SITES`): `site` names it,
    `layers` says at which layers (static; None: every layer), and `edit(value, at)` returns
    what replaces `value` there. A new kind of intervention is one such class (frozen
    dataclass; its arrays are fields) and, to be written in an arm, one `interventions.Kind`."""

    site: str = ""
    layers: tuple[int, ...] | None = None

    def acts_at(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def __call__(self, value, at: Site):
        raise NotImplementedError


def hook(edits, at: Site, value):
    """`value` after every edit of `edits` that acts at `at` (in order): the one mechanism by
    which anything changes the pass."""
    for e in edits:
        if e.site == at.name and e.acts_at(at.layer):
            value = e(value, at)
    return value


def where_used(used, edit, plain):
    """`edit()` where this member uses the edit (`used`, a scalar), else `plain` in the edit's
    dtypes: the same numbers either way (the edit is the identity where its masks are zero).
    A real branch when an ensemble's members run one after another (`lax.map`, the CPU member
    loop), so a member whose arm does not use it skips its work, forward and backward; under
    `vmap` it becomes a select, which costs what computing it for every member does."""
    shapes = jax.eval_shape(edit)
    plain = jax.tree.map(lambda x, s: x.astype(s.dtype), plain, shapes)
    return jax.lax.cond(used, edit, lambda: plain)


# ---- The edits the analysis asks for by keyword -------------------------------------------------

@dataclasses.dataclass(frozen=True)
class HeadScale(Edit):
    """Each head's output times `mask_LH` (0 = zero-ablation)."""

    mask_LH: jax.Array
    layers: tuple[int, ...] | None = None
    site = "z"

    def __call__(self, z_BHTK, at: Site):
        return z_BHTK * self.mask_LH[at.layer][None, :, None, None]


@dataclasses.dataclass(frozen=True)
class HeadAdd(Edit):
    """`add_LBTHD` added to each head's output (mean-ablation adds a head's mean where
    `HeadScale` removed the head itself)."""

    add_LBTHD: jax.Array
    layers: tuple[int, ...] | None = None
    site = "head_out"

    def __call__(self, heads_BTHD, at: Site):
        return heads_BTHD + self.add_LBTHD[at.layer]


# ---- The pass ---------------------------------------------------------------------------------

def _mlp(params: dict, layer: int, x_BTD: jax.Array, layer_norm_on: bool) -> jax.Array:
    """The residual stream after layer `layer`'s MLP (unchanged in a model without MLPs)."""
    if "W_in" not in params:
        return x_BTD
    h_BTD = layer_norm(x_BTD, params["ln2_w"][layer], params["ln2_b"][layer]) if layer_norm_on else x_BTD
    return x_BTD + jax.nn.gelu(h_BTD @ params["W_in"][layer]) @ params["W_out"][layer]


def apply(params: dict, tokens_BT: jax.Array, *, head_mask_LH: jax.Array | None = None,
          head_replace_LBTHD: jax.Array | None = None, return_activations: bool = False, edits=(),
          logit_vocab: int | None = None, resume_at: tuple[int, jax.Array] | None = None):
    """Logits `[B,T,V]` (and `Activations`). `tokens_BT` is int `[B,T]`, or float `[B,T,V]`
    (soft) one-hot token vectors, so gradients with respect to the input exist.
    `logit_vocab`: only the logits of tokens `0..logit_vocab-1` (`[B,T,logit_vocab]`), for a loss
    that reads no others (`Task.loss_vocab`): the unembedding then costs that fraction.

    `edits`: `Edit`s applied at their sites (an intervention during training); `head_mask_LH`
    and `head_replace_LBTHD` are the analysis' ablations, `HeadScale` and `HeadAdd` edits.

    `resume_at=(layer, resid_BTD)` (static layer): the pass from the residual stream just after
    that layer's attention (before its MLP), as an edit of that layer's heads leaves it; the
    layers before it, unchanged by such an edit, are not computed again (the analysis' one-head
    ablations). No activations or edits then (edits may read the skipped layers' writes).
    """
    if resume_at is not None and (return_activations or edits or head_mask_LH is not None
                                  or head_replace_LBTHD is not None):
        raise ValueError("apply: resume_at takes no activations or edits (the layers it skips are not computed)")
    start = -1 if resume_at is None else resume_at[0]
    edits = (*(edits or ()), *(() if head_mask_LH is None else (HeadScale(head_mask_LH),)),
             *(() if head_replace_LBTHD is None else (HeadAdd(head_replace_LBTHD),)))
    n_layers = params["W_Q"].shape[0]
    layer_norm_on = "ln1_w" in params
    T = tokens_BT.shape[1]
    if resume_at is None:
        embed_BTD = (tokens_BT @ params["W_E"] if jnp.issubdtype(tokens_BT.dtype, jnp.floating)
                     else params["W_E"][tokens_BT])
        x_BTD = embed_BTD + params["W_pos"][:T]
    else:
        x_BTD = resume_at[1]
    patterns, heads, resids, writes = [], [], [], []
    for layer in range(max(start, 0), n_layers):
        if layer == start:      # resumed after this layer's attention
            x_BTD = _mlp(params, layer, x_BTD, layer_norm_on)
            continue
        resids.append(x_BTD)
        norm = ((lambda x, layer=layer: layer_norm(x, params["ln1_w"][layer], params["ln1_b"][layer]))
                if layer_norm_on else (lambda x: x))
        at = functools.partial(Site, layer=layer, tokens_BT=tokens_BT, params=params, resid_BTD=x_BTD,
                               norm=norm, writes=tuple(writes))
        inputs = [hook(edits, at("attn_in", qkv=c), None) for c in range(3)]
        x_in_BTD = norm(x_BTD) if any(x is None for x in inputs) else None
        x_q, x_k, x_v = (x_in_BTD if x is None else x for x in inputs)
        W_Q, W_K, W_V, W_O = (params[n][layer] for n in ("W_Q", "W_K", "W_V", "W_O"))
        q_BHTK = jnp.einsum("btd,hdk->bhtk", x_q, W_Q)
        k_BHSK = jnp.einsum("bsd,hdk->bhsk", x_k, W_K)
        v_BHSK = jnp.einsum("bsd,hdk->bhsk", x_v, W_V)
        z_BHTK, pattern_BHTS = hook(edits, at("pattern", v_BHSK=v_BHSK), attention_core(q_BHTK, k_BHSK, v_BHSK))
        z_BHTK = hook(edits, at("z"), z_BHTK)
        edited = any(e.site == "head_out" and e.acts_at(layer) for e in edits)
        heads_BTHD = jnp.einsum("bhtk,hkd->bthd", z_BHTK, W_O) if edited or return_activations else None
        if edited:
            heads_BTHD = hook(edits, at("head_out"), heads_BTHD)
            out_BTD = heads_BTHD.sum(2)
        else:
            # one product into the residual stream, also when the heads' outputs are returned:
            # XLA:CPU runs the sum over heads of [B,T,H,D] as a slow strided reduction (10x the
            # product's time in the probes: benchmarks/step_profile.py); unread heads are dropped
            out_BTD = jnp.einsum("bhtk,hkd->btd", z_BHTK, W_O)
        x_BTD = x_BTD + out_BTD
        patterns.append(pattern_BHTS)
        heads.append(heads_BTHD)
        writes.append(Write(z_BHTK, heads_BTHD if edited else None))
        x_BTD = _mlp(params, layer, x_BTD, layer_norm_on)
    final_BTD = layer_norm(x_BTD, params["lnf_w"], params["lnf_b"]) if layer_norm_on else x_BTD
    logits_BTV = final_BTD @ (params["W_U"] if logit_vocab is None else params["W_U"][:, :logit_vocab])
    if not return_activations:
        return logits_BTV
    return logits_BTV, Activations(
        pattern_BLHTS=jnp.stack(patterns, 1), head_out_BLTHD=jnp.stack(heads, 1),
        resid_pre_BLTD=jnp.stack(resids, 1), resid_final_BTD=final_BTD)
