"""Interventions during training: every member carries its own as data (`spec.Intervention`),
so control and treatment arms, crossed with seeds, train in one compiled program.

Each kind is one class in one table (`spec.KINDS`; the built-in ones in `kinds`): a new kind
is one `Kind` (or, for one number per head, one function under `per_head`) and reaches the
forward pass as `functional.Edit`s at its named sites."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from induction_jax.interventions import kinds
from induction_jax.interventions.kinds import freeze_groups, per_head
from induction_jax.interventions.spec import (KINDS, Entry, Intervention, InterventionError, Kind, Window, build,
                                              parse, register, slot_kinds, unregister)

__all__ = ["Intervention", "InterventionError", "Window", "build", "parse", "active", "Kind", "Entry", "KINDS",
           "register", "unregister", "per_head", "freeze_groups", "kinds"]


def _on(w: Window, step):
    return jnp.where((w.start <= step) & (step < w.stop), w.value, jnp.zeros_like(w.value))


def active(iv: Intervention | None, step) -> tuple[tuple | None, dict | None]:
    """One member's intervention at `step`: the forward pass's edits (`functional.Edit`s) and the
    freeze masks (param name -> mask; 1 = no update; None: nothing frozen). (None, None) for a
    member of a plain run."""
    if iv is None:
        return None, None
    on = {s: jax.tree.map(lambda w: _on(w, step), ws, is_leaf=lambda x: isinstance(x, Window))
          for s, ws in iv.windows.items() if ws is not None}
    sites = dict(iv.sites)
    edits, freeze = (), {}
    for kind in dict.fromkeys(slot_kinds()[s] for s in on):
        mine = {s: on[s] for s in kind.slot_names if s in on}
        edits += kind.edits(mine, sites)
        freeze |= kind.freeze(mine)
    return edits, freeze or None
