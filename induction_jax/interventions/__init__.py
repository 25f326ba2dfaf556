"""Interventions during training: every member carries its own as data (`spec.Intervention`),
so control and treatment arms, crossed with seeds, train in one compiled program."""

from __future__ import annotations

import jax.numpy as jnp

from induction_jax.functional import Edits
from induction_jax.interventions.spec import Intervention, InterventionError, Window, build, parse

__all__ = ["Intervention", "InterventionError", "Window", "build", "parse", "active"]


def _on(w: Window, step):
    return jnp.where((w.start <= step) & (step < w.stop), w.value, jnp.zeros_like(w.value))


def active(iv: Intervention | None, step) -> tuple[Edits | None, dict | None]:
    """One member's intervention at `step`: the forward pass's `Edits` and the freeze masks
    (param name -> mask; 1 = no update). (None, None) for a member of a plain run."""
    if iv is None:
        return None, None
    edits = Edits(*(None if w is None else _on(w, step)
                    for w in (iv.clamp_prev, iv.clamp_induction, iv.ablate, iv.cut)), sites=iv.sites)
    freeze = None if iv.freeze is None else {k: _on(w, step) for k, w in iv.freeze.items()}
    return edits, freeze
