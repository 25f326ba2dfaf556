"""The model as a pure Flax module: it declares the parameters in circuit layout and
delegates the computation to `functional.apply`, so the analysis can run the same
forward pass on plain arrays from any source. The parameters, their shapes and their order
(which key initialises which weight) are `layout.LAYOUT`'s."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from induction_jax import functional, layout
from induction_jax.config import ModelConfig


class Transformer(nn.Module):
    """`apply({'params': p}, tokens_BT) -> logits_BTV` (and `Activations` on request).

    `tokens_BT` is int `[B,T]`, or float `[B,T,V]` one-hot (or soft) token vectors.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BT: jax.Array, **kwargs):
        init = {"normal": nn.initializers.normal(self.cfg.weight_std), "ones": nn.initializers.ones,
                "zeros": nn.initializers.zeros}
        params = {p.name: self.param(p.name, init[p.init], p.shape(layout.sizes(self.cfg)))
                  for p in layout.present(layout.features(self.cfg))}
        return functional.apply(params, tokens_BT, **kwargs)


def init_params(cfg: ModelConfig, key: jax.Array) -> dict:
    """Fresh parameters (a plain dict of arrays in circuit layout) from one key."""
    dummy_BT = jnp.zeros((1, cfg.n_ctx), dtype=jnp.int32)
    return dict(Transformer(cfg).init(key, dummy_BT)["params"])


def forward(cfg: ModelConfig, params: dict, tokens_BT: jax.Array, **kwargs):
    return Transformer(cfg).apply({"params": params}, tokens_BT, **kwargs)
