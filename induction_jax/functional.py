"""The transformer as a pure function of `(params, tokens)` on plain arrays (no Flax).

Parameters in circuit layout (TransformerLens convention, row vectors): `W_E [V,D]`,
`W_pos [n_ctx,D]`, `W_Q, W_K, W_V [L,H,D,K]`, `W_O [L,H,K,D]`, `W_U [D,V]`; optional
`W_in [L,D,M]`, `W_out [L,M,D]` (MLPs) and `ln1_w, ln1_b, ln2_w, ln2_b [L,D]`,
`lnf_w, lnf_b [D]` (pre-LayerNorm). The architecture is read off the names present.
Shape suffixes: B batch, T query positions, S key positions, L layers, H heads,
D d_model, K d_head, V vocab, M d_mlp.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

LN_EPS = 1e-5


class Sites(NamedTuple):
    """Where an intervention can act at all: static, so the compiled pass computes nothing
    anywhere else. Built from the arms of an ensemble (some member acts there, at some step)."""

    clamp_prev: tuple[int, ...] = ()                 # layers with a head some member clamps
    clamp_induction: tuple[int, ...] = ()
    ablate: tuple[int, ...] = ()                     # layers with a head some member ablates
    cut: tuple[tuple[int, int, int], ...] = ()       # (source layer, target layer, Q/K/V) some member cuts


class Edits(NamedTuple):
    """What an intervention does to one forward pass, per layer and head (None: nothing).

    The pass applies them at three points: the inputs of each layer's queries, keys and values
    (a cut removes an earlier head's write from one of them), the attention pattern (a clamp
    pulls it towards a target pattern), and each head's output (an ablation zeroes it).
    `sites` says where they can be non-zero (None: anywhere); the pass computes them only there.
    """

    clamp_prev_LH: jax.Array | None = None        # strength a in [0, 1] towards the previous-token pattern
    clamp_induction_LH: jax.Array | None = None   # ... towards the induction pattern of the sequence
    ablate_LH: jax.Array | None = None            # 1: the head's output is zero
    cut_LHLC: jax.Array | None = None             # [source layer, source head, target layer, Q/K/V]: 1 = cut
    sites: Sites | None = None

    def at(self, n_layers: int) -> Sites:
        """The sites of these edits: `sites`, or every place their arrays cover."""
        if self.sites is not None:
            return self.sites
        every = tuple(range(n_layers))
        return Sites(*(every if a is not None else () for a in (self.clamp_prev_LH, self.clamp_induction_LH,
                                                                  self.ablate_LH)),
                     tuple((s, t, c) for t in every for s in range(t) for c in range(3))
                     if self.cut_LHLC is not None else ())


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


class Clamp(NamedTuple):
    """A pull of one layer's pattern towards a target: strengths `a_H`, the target pattern
    (`[T, S]` or per sequence `[B, T, S]`), the rows that have a target (`[B, T]` or None) and
    `values(v_BHSK)`, the target pattern applied to the values."""

    a_H: jax.Array
    target: jax.Array
    has_BT: jax.Array | None
    values: object


def _clamp(z_BHTK, pattern_BHTS, v_BHSK, c: Clamp):
    """A' = (1 - a) A + a A* on the rows that have a target, and the output A' v."""
    w_BHT1 = c.a_H[None, :, None, None] * (1.0 if c.has_BT is None else c.has_BT[:, None, :, None])
    w_BHT1 = w_BHT1.astype(z_BHTK.dtype)
    target_BHTS = c.target[None, None] if c.target.ndim == 2 else c.target[:, None]
    return (z_BHTK + w_BHT1 * (c.values(v_BHSK) - z_BHTK),
            pattern_BHTS + w_BHT1.astype(pattern_BHTS.dtype) * (target_BHTS - pattern_BHTS))


def _where_used(used, edit, plain):
    """`edit()` where this member uses the edit (`used`, a scalar), else `plain` in the edit's
    dtypes: the same numbers either way (the edit is the identity where its masks are zero).
    A real branch when an ensemble's members run one after another (`lax.map`, the CPU member
    loop), so a member whose arm does not use it skips its work, forward and backward; under
    `vmap` it becomes a select, which costs what computing it for every member does."""
    shapes = jax.eval_shape(edit)
    plain = jax.tree.map(lambda x, s: x.astype(s.dtype), plain, shapes)
    return jax.lax.cond(used, edit, lambda: plain)


def attention(x_BTD, W_Q, W_K, W_V, W_O, head_mask_H=None, head_replace_BTHD=None, *,
              return_heads: bool = False, x_qkv=(None, None, None), clamps=()):
    """One attention layer: (output [B,T,D], pattern [B,H,T,S], per-head output [B,T,H,D] or
    None, each head's mixed values z [B,H,T,K] as its output projection reads them).

    `head_mask_H` scales each head's output (0 = zero-ablation); `head_replace_BTHD` is added
    to it (mean-ablation adds the mean of the head where the mask removed the head itself).
    `x_qkv` gives the queries', keys' or values' input where it differs from `x_BTD` (a cut);
    each of `clamps` (`Clamp`) pulls the pattern towards its target.
    """
    x_q, x_k, x_v = (x_BTD if x is None else x for x in x_qkv)
    q_BHTK = jnp.einsum("btd,hdk->bhtk", x_q, W_Q)
    k_BHSK = jnp.einsum("bsd,hdk->bhsk", x_k, W_K)
    v_BHSK = jnp.einsum("bsd,hdk->bhsk", x_v, W_V)
    z_BHTK, pattern_BHTS = attention_core(q_BHTK, k_BHSK, v_BHSK)
    for clamp in clamps:
        z_BHTK, pattern_BHTS = _where_used(
            jnp.any(clamp.a_H != 0), lambda z=z_BHTK, p=pattern_BHTS, c=clamp: _clamp(z, p, v_BHSK, c),
            (z_BHTK, pattern_BHTS))
    if head_mask_H is not None:
        z_BHTK = z_BHTK * head_mask_H[None, :, None, None]
    if return_heads or head_replace_BTHD is not None:
        heads_BTHD = jnp.einsum("bhtk,hkd->bthd", z_BHTK, W_O)
        if head_replace_BTHD is not None:
            heads_BTHD = heads_BTHD + head_replace_BTHD
        return heads_BTHD.sum(2), pattern_BHTS, heads_BTHD if return_heads else None, z_BHTK
    return jnp.einsum("bhtk,hkd->btd", z_BHTK, W_O), pattern_BHTS, None, z_BHTK


def _cut_write(zs, W_O_LHKD, replace, cut_LHLC, sources, layer: int, c: int):
    """What the cut heads of the `sources` layers wrote, for input `c` (Q/K/V) of `layer`: each
    source layer's z through its output weights with the uncut heads' rows zeroed, one product
    of the size of that layer's own output projection (no per-head copy of the residual)."""
    total = 0.0
    for src in sources:
        m_H = cut_LHLC[src, :, layer, c].astype(zs[src].dtype)
        total = total + jnp.einsum("bhtk,hkd->btd", zs[src], W_O_LHKD[src] * m_H[:, None, None])
        if replace is not None:
            total = total + jnp.einsum("bthd,h->btd", replace[src], m_H)
    return total


def apply(params: dict, tokens_BT: jax.Array, *, head_mask_LH: jax.Array | None = None,
          head_replace_LBTHD: jax.Array | None = None, return_activations: bool = False,
          edits: Edits | None = None):
    """Logits `[B,T,V]` (and `Activations`). `tokens_BT` is int `[B,T]`, or float `[B,T,V]`
    (soft) one-hot token vectors, so gradients with respect to the input exist. `edits` is
    what an intervention does to this pass (training only; the analysis never passes it)."""
    n_layers = params["W_Q"].shape[0]
    layer_norm_on = "ln1_w" in params
    T = tokens_BT.shape[1]
    embed_BTD = (tokens_BT @ params["W_E"] if jnp.issubdtype(tokens_BT.dtype, jnp.floating)
                 else params["W_E"][tokens_BT])
    x_BTD = embed_BTD + params["W_pos"][:T]
    edits = edits or Edits()
    sites = edits.at(n_layers)
    clamp_kinds = []
    if sites.clamp_prev:
        clamp_kinds.append((sites.clamp_prev, edits.clamp_prev_LH, previous_token_target(T), None,
                            previous_token_values))
    if sites.clamp_induction:
        target_BTS, has_BT = induction_target(tokens_BT)
        clamp_kinds.append((sites.clamp_induction, edits.clamp_induction_LH, target_BTS, has_BT,
                            lambda v_BHSK: jnp.einsum("bts,bhsk->bhtk", target_BTS.astype(v_BHSK.dtype), v_BHSK)))
    patterns, heads, resids, zs = [], [], [], []
    for layer in range(n_layers):
        resids.append(x_BTD)
        norm = ((lambda x, layer=layer: layer_norm(x, params["ln1_w"][layer], params["ln1_b"][layer]))
                if layer_norm_on else (lambda x: x))
        mask_H = None if head_mask_LH is None else head_mask_LH[layer]
        if layer in sites.ablate:
            keep_H = 1.0 - edits.ablate_LH[layer]
            mask_H = keep_H if mask_H is None else mask_H * keep_H
        x_qkv = [None, None, None]          # the inputs a cut changes; the others read x itself
        for c in range(3):
            cut_from = [src for src, target, c_ in sites.cut if target == layer and c_ == c]
            if cut_from:
                x_qkv[c] = _where_used(
                    jnp.any(edits.cut_LHLC[jnp.asarray(cut_from), :, layer, c] != 0),
                    lambda c=c, cut_from=cut_from: norm(x_BTD - _cut_write(
                        zs, params["W_O"], head_replace_LBTHD, edits.cut_LHLC, cut_from, layer, c)),
                    norm(x_BTD))
        out_BTD, pattern_BHTS, heads_BTHD, z_BHTK = attention(
            norm(x_BTD), params["W_Q"][layer], params["W_K"][layer], params["W_V"][layer], params["W_O"][layer],
            mask_H, None if head_replace_LBTHD is None else head_replace_LBTHD[layer],
            return_heads=return_activations, x_qkv=x_qkv,
            clamps=[Clamp(a_LH[layer], target, has, values)
                    for at, a_LH, target, has, values in clamp_kinds if layer in at])
        x_BTD = x_BTD + out_BTD
        patterns.append(pattern_BHTS)
        heads.append(heads_BTHD)
        zs.append(z_BHTK)
        if "W_in" in params:
            h_BTD = layer_norm(x_BTD, params["ln2_w"][layer], params["ln2_b"][layer]) if layer_norm_on else x_BTD
            x_BTD = x_BTD + jax.nn.gelu(h_BTD @ params["W_in"][layer]) @ params["W_out"][layer]
    final_BTD = layer_norm(x_BTD, params["lnf_w"], params["lnf_b"]) if layer_norm_on else x_BTD
    logits_BTV = final_BTD @ params["W_U"]
    if not return_activations:
        return logits_BTV
    return logits_BTV, Activations(
        pattern_BLHTS=jnp.stack(patterns, 1), head_out_BLTHD=jnp.stack(heads, 1),
        resid_pre_BLTD=jnp.stack(resids, 1), resid_final_BTD=final_BTD)
