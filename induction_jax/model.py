"""Attention-only transformer with parameters in circuit layout (TransformerLens convention).

Row-vector convention: residual `x [B,T,D]`; per layer and head `W_Q, W_K, W_V [D,Dh]`,
`W_O [Dh,D]`, stacked as `[L,H,D,Dh]` / `[L,H,Dh,D]`, so `QK = W_Q @ W_K^T` and
`OV = W_V @ W_O` need no reshaping. Optional MLPs and LayerNorms exist for controls.
Shape suffixes: B batch, T positions (query), S positions (key), L layers, H heads,
D d_model, K d_head, V vocab, M d_mlp.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from induction_jax.config import ModelConfig

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


def attention(x_BTD, W_Q, W_K, W_V, W_O, head_mask_H=None, *, return_heads: bool = False):
    """One attention layer. Returns (output [B,T,D], pattern [B,H,T,S], per-head output or None)."""
    d_head = W_Q.shape[-1]
    q_BHTK = jnp.einsum("btd,hdk->bhtk", x_BTD, W_Q)
    k_BHSK = jnp.einsum("bsd,hdk->bhsk", x_BTD, W_K)
    v_BHSK = jnp.einsum("bsd,hdk->bhsk", x_BTD, W_V)
    scores_BHTS = jnp.einsum("bhtk,bhsk->bhts", q_BHTK, k_BHSK) / jnp.sqrt(jnp.float32(d_head))
    T = x_BTD.shape[1]
    scores_BHTS = jnp.where(causal_mask(T), scores_BHTS, jnp.finfo(scores_BHTS.dtype).min)
    pattern_BHTS = jax.nn.softmax(scores_BHTS, axis=-1)
    z_BHTK = jnp.einsum("bhts,bhsk->bhtk", pattern_BHTS, v_BHSK)
    if head_mask_H is not None:
        z_BHTK = z_BHTK * head_mask_H[None, :, None, None]
    if return_heads:
        heads_BTHD = jnp.einsum("bhtk,hkd->bthd", z_BHTK, W_O)
        return heads_BTHD.sum(2), pattern_BHTS, heads_BTHD
    return jnp.einsum("bhtk,hkd->btd", z_BHTK, W_O), pattern_BHTS, None


class Transformer(nn.Module):
    """`apply({'params': p}, tokens_BT) -> logits_BTV` (and `Activations` on request).

    `tokens_BT` is int `[B,T]`, or float `[B,T,V]` one-hot (or soft) token vectors.
    """

    cfg: ModelConfig

    def setup(self):
        c = self.cfg
        init = nn.initializers.normal(c.weight_std)
        L, H, D, K, V = c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_vocab
        self.W_E = self.param("W_E", init, (V, D))
        self.W_pos = self.param("W_pos", init, (c.n_ctx, D))
        self.W_Q = self.param("W_Q", init, (L, H, D, K))
        self.W_K = self.param("W_K", init, (L, H, D, K))
        self.W_V = self.param("W_V", init, (L, H, D, K))
        self.W_O = self.param("W_O", init, (L, H, K, D))
        self.W_U = self.param("W_U", init, (D, V))
        if not c.attn_only:
            self.W_in = self.param("W_in", init, (L, D, c.d_mlp))
            self.W_out = self.param("W_out", init, (L, c.d_mlp, D))
        if c.layer_norm:
            ones, zeros = nn.initializers.ones, nn.initializers.zeros
            self.ln1_w = self.param("ln1_w", ones, (L, D))
            self.ln1_b = self.param("ln1_b", zeros, (L, D))
            self.lnf_w = self.param("lnf_w", ones, (D,))
            self.lnf_b = self.param("lnf_b", zeros, (D,))
            if not c.attn_only:
                self.ln2_w = self.param("ln2_w", ones, (L, D))
                self.ln2_b = self.param("ln2_b", zeros, (L, D))

    def __call__(self, tokens_BT: jax.Array, *, head_mask_LH: jax.Array | None = None,
                 return_activations: bool = False):
        c = self.cfg
        T = tokens_BT.shape[1]
        # Integer tokens are looked up; float [B,T,V] inputs are (soft) one-hot token vectors,
        # so gradients with respect to the input exist (causality tests, attribution).
        embed_BTD = tokens_BT @ self.W_E if jnp.issubdtype(tokens_BT.dtype, jnp.floating) \
            else self.W_E[tokens_BT]
        x_BTD = embed_BTD + self.W_pos[:T]
        patterns, heads, resids = [], [], []
        for layer in range(c.n_layers):
            resids.append(x_BTD)
            h_BTD = layer_norm(x_BTD, self.ln1_w[layer], self.ln1_b[layer]) if c.layer_norm else x_BTD
            mask_H = None if head_mask_LH is None else head_mask_LH[layer]
            out_BTD, pattern_BHTS, heads_BTHD = attention(
                h_BTD, self.W_Q[layer], self.W_K[layer], self.W_V[layer], self.W_O[layer], mask_H,
                return_heads=return_activations)
            x_BTD = x_BTD + out_BTD
            patterns.append(pattern_BHTS)
            heads.append(heads_BTHD)
            if not c.attn_only:
                h_BTD = layer_norm(x_BTD, self.ln2_w[layer], self.ln2_b[layer]) if c.layer_norm else x_BTD
                x_BTD = x_BTD + jax.nn.gelu(h_BTD @ self.W_in[layer]) @ self.W_out[layer]
        final_BTD = layer_norm(x_BTD, self.lnf_w, self.lnf_b) if c.layer_norm else x_BTD
        logits_BTV = final_BTD @ self.W_U
        if not return_activations:
            return logits_BTV
        return logits_BTV, Activations(
            pattern_BLHTS=jnp.stack(patterns, 1), head_out_BLTHD=jnp.stack(heads, 1),
            resid_pre_BLTD=jnp.stack(resids, 1), resid_final_BTD=final_BTD)


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
    """Fresh parameters (a plain dict of arrays in circuit layout) from one key."""
    dummy_BT = jnp.zeros((1, cfg.n_ctx), dtype=jnp.int32)
    return Transformer(cfg).init(key, dummy_BT)["params"]


def forward(cfg: ModelConfig, params: dict, tokens_BT: jax.Array, **kwargs):
    return Transformer(cfg).apply({"params": params}, tokens_BT, **kwargs)
