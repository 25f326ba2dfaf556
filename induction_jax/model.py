"""The model as a pure Flax module: it declares the parameters in circuit layout and
delegates the computation to `functional.apply`, so the analysis can run the same
forward pass on plain arrays from any source."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from induction_jax import functional
from induction_jax.config import ModelConfig


class Transformer(nn.Module):
    """`apply({'params': p}, tokens_BT) -> logits_BTV` (and `Activations` on request).

    `tokens_BT` is int `[B,T]`, or float `[B,T,V]` one-hot (or soft) token vectors.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT: jax.Array, **kwargs):
        c = self.cfg
        init = nn.initializers.normal(c.weight_std)
        L, H, D, K, V = c.n_layers, c.n_heads, c.d_model, c.d_head, c.d_vocab
        shapes = {"W_E": (V, D), "W_pos": (c.n_ctx, D), "W_Q": (L, H, D, K), "W_K": (L, H, D, K),
                  "W_V": (L, H, D, K), "W_O": (L, H, K, D), "W_U": (D, V)}
        if not c.attn_only:
            shapes |= {"W_in": (L, D, c.d_mlp), "W_out": (L, c.d_mlp, D)}
        params = {name: self.param(name, init, shape) for name, shape in shapes.items()}
        if c.layer_norm:
            norms = {"ln1": (L, D), "lnf": (D,)} | ({} if c.attn_only else {"ln2": (L, D)})
            for name, shape in norms.items():
                params[f"{name}_w"] = self.param(f"{name}_w", nn.initializers.ones, shape)
                params[f"{name}_b"] = self.param(f"{name}_b", nn.initializers.zeros, shape)
        return functional.apply(params, tokens_BT, **kwargs)


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
    """Fresh parameters (a plain dict of arrays in circuit layout) from one key."""
    dummy_BT = jnp.zeros((1, cfg.n_ctx), dtype=jnp.int32)
    return dict(Transformer(cfg).init(key, dummy_BT)["params"])


def forward(cfg: ModelConfig, params: dict, tokens_BT: jax.Array, **kwargs):
    return Transformer(cfg).apply({"params": params}, tokens_BT, **kwargs)
