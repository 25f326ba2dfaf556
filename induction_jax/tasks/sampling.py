"""Drawing from categorical distributions by inverting the CDF at one uniform number per draw:
the law of `jax.random.categorical`, without its one Gumbel number per class per draw. With
many classes (the bursty task's K = 2048) or a draw at every position of a sequence (the
trigger task's chains) those Gumbel numbers were most of a training step
(benchmarks/bursty_sampler.py, docs/performance.md)."""

from __future__ import annotations


def cdf_table(logits):
    """`(cdf [..., K], last [...])`: the CDF of `softmax(logits)` along the last axis, and the
    largest class with a finite logit (a draw within rounding of the total lands there)."""
    import jax
    import jax.numpy as jnp

    cdf = jnp.cumsum(jax.nn.softmax(logits, axis=-1), axis=-1)
    last = jnp.max(jnp.where(jnp.isfinite(logits), jnp.arange(logits.shape[-1]), 0), axis=-1)
    return cdf, last


def invert_cdf(cdf, last, u):
    """The class at uniform number(s) `u` in [0, 1) of the CDF `cdf` (`[K]` shared by every draw,
    or `[..., K]` one per draw), clipped to `last`."""
    import jax.numpy as jnp

    u = u * cdf[..., -1]
    if cdf.ndim == 1:
        idx = jnp.searchsorted(cdf, u, side="right")
    else:                           # a distribution per draw: count the CDF entries at or below u
        idx = (cdf <= u[..., None]).sum(-1)
    return jnp.minimum(idx, last).astype(jnp.int32)


def draw_classes(key, logits, shape):
    """Classes drawn from `softmax(logits)` (`[K]`, or `[..., K]` broadcasting against `shape`),
    one uniform number per draw."""
    import jax

    cdf, last = cdf_table(logits)
    return invert_cdf(cdf, last, jax.random.uniform(key, shape))
