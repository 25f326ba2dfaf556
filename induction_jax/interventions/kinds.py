"""The kinds of intervention, each one class: its text, its arrays and its edit of the pass.

Registered in this order, which is the order of the `Intervention`'s slots (checkpoints keep
it): clamp (clamp_prev, clamp_induction), ablate, cut, freeze.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp

from induction_jax import layout
from induction_jax.functional import (Edit, Site, induction_target, previous_token_target, previous_token_values,
                                      where_used)
from induction_jax.interventions.spec import Entry, InterventionError, Kind, heads, layer, register, strength


# ---- clamp: pull a head's pattern towards a target pattern --------------------------------------

def _previous_token(at: Site):
    """The previous-token target: `(pattern [T, S], rows that have one (None: all), pattern @ v)`."""
    return previous_token_target(at.tokens_BT.shape[1]), None, previous_token_values


def _induction(at: Site):
    """The induction target of each sequence `[B, T, S]`: rows without an earlier copy have none."""
    target_BTS, has_BT = induction_target(at.tokens_BT)
    return target_BTS, has_BT, lambda v_BHSK: jnp.einsum("bts,bhsk->bhtk", target_BTS.astype(v_BHSK.dtype), v_BHSK)


CLAMP_TARGETS: dict[str, Callable] = {"prev": _previous_token, "induction": _induction}


@dataclasses.dataclass(frozen=True)
class ClampPattern(Edit):
    """A' = (1 - a) A + a A* on the rows that have a target A*, and the output A' v: per head a
    strength `a_LH`, towards `CLAMP_TARGETS[target]`. A branch per member, taken where some
    strength of the layer is non-zero."""

    a_LH: jax.Array
    target: str = dataclasses.field(default="prev")
    layers: tuple[int, ...] | None = None
    site = "pattern"

    def __call__(self, value, at: Site):
        z_BHTK, pattern_BHTS = value
        a_H = self.a_LH[at.layer]
        target, has_BT, values = CLAMP_TARGETS[self.target](at)

        def clamp():
            w_BHT1 = a_H[None, :, None, None] * (1.0 if has_BT is None else has_BT[:, None, :, None])
            w_BHT1 = w_BHT1.astype(z_BHTK.dtype)
            target_BHTS = target[None, None] if target.ndim == 2 else target[:, None]
            return (z_BHTK + w_BHT1 * (values(at.v_BHSK) - z_BHTK),
                    pattern_BHTS + w_BHT1.astype(pattern_BHTS.dtype) * (target_BHTS - pattern_BHTS))

        return where_used(jnp.any(a_H != 0), clamp, (z_BHTK, pattern_BHTS))


class Clamp(Kind):
    word = "clamp"
    syntax = "clamp:prev|induction:LxHy:a"
    slot_names = tuple(f"clamp_{t}" for t in CLAMP_TARGETS)

    def slots(self, model):
        return {s: (model.n_layers, model.n_heads) for s in self.slot_names}

    def parse(self, fields, cfg, arm):
        if len(fields) not in (2, 3) or fields[0] not in CLAMP_TARGETS:
            raise InterventionError(f"intervention {arm!r}: write clamp:prev|induction:LxHy[:a]")
        a = strength(fields[2] if len(fields) == 3 else None, arm)
        return [Entry(f"clamp_{fields[0]}", head, a) for head in heads(fields[1], cfg, arm)]

    def edits(self, active, sites):
        return tuple(ClampPattern(active[s], s.removeprefix("clamp_"), sites[s])
                     for s in self.slot_names if s in active)


# ---- ablate: zero a head's output ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ZeroHeads(Edit):
    """Each head's output times 1 - `a_LH` (1: zeroed)."""

    a_LH: jax.Array
    layers: tuple[int, ...] | None = None
    site = "z"

    def __call__(self, z_BHTK, at: Site):
        return z_BHTK * (1.0 - self.a_LH[at.layer])[None, :, None, None]


class Ablate(Kind):
    word = "ablate"
    syntax = "ablate:LxHy"
    slot_names = ("ablate",)

    def slots(self, model):
        return {"ablate": (model.n_layers, model.n_heads)}

    def parse(self, fields, cfg, arm):
        if len(fields) != 1:
            raise InterventionError(f"intervention {arm!r}: write ablate:LxHy")
        return [Entry("ablate", head) for head in heads(fields[0], cfg, arm)]

    def edits(self, active, sites):
        return (ZeroHeads(active["ablate"], sites["ablate"]),) if "ablate" in active else ()


# ---- cut: remove an earlier head's write from one input of a later layer ------------------------

PATHS = "QKV"


@dataclasses.dataclass(frozen=True)
class CutWrite(Edit):
    """The input `qkv` of layer t reads the residual stream without what the cut heads of
    earlier layers wrote (`cut_LHLC[source layer, head, t, qkv]` = 1), normalised again
    (the cut defines the input: it replaces the value it receives).
    `paths`: the (source layer, target layer, input) some member cuts (None: every one). One
    product per source layer, of the size of its own output projection, with the uncut heads'
    rows of W_O zeroed; a branch per member, taken where it cuts something here."""

    cut_LHLC: jax.Array
    paths: tuple[tuple[int, int, int], ...] | None = None
    site = "attn_in"

    @property
    def layers(self):
        return None if self.paths is None else tuple(sorted({t for _, t, _ in self.paths}))

    def __call__(self, x_in_BTD, at: Site):
        """The input as this cut defines it (None where it cuts nothing: the plain input)."""
        c = at.qkv
        sources = (list(range(at.layer)) if self.paths is None
                   else [s for s, t, c_ in self.paths if t == at.layer and c_ == c])
        if not sources:
            return x_in_BTD

        def cut():
            total = 0.0
            for src in sources:
                write = at.writes[src]
                m_H = self.cut_LHLC[src, :, at.layer, c].astype(write.z_BHTK.dtype)
                if write.heads_BTHD is None:
                    W_O_HKD = at.params["W_O"][src]
                    total = total + jnp.einsum("bhtk,hkd->btd", write.z_BHTK, W_O_HKD * m_H[:, None, None])
                else:       # an edit changed the heads' writes: remove what they wrote
                    total = total + jnp.einsum("bthd,h->btd", write.heads_BTHD, m_H)
            return at.norm(at.resid_BTD - total)

        # The plain branch normalises the residual itself, as the cut branch does: the input is
        # the cut's own (an edit before it at this input is replaced), and its LayerNorm's
        # gradient reaches the residual on its own, in the order of float sums earlier
        # versions had (bitwise the same training).
        return where_used(jnp.any(self.cut_LHLC[jnp.asarray(sources), :, at.layer, c] != 0), cut,
                          at.norm(at.resid_BTD))


class Cut(Kind):
    word = "cut"
    syntax = "cut:Q|K|V:LxHy[:Lz]"
    slot_names = ("cut",)

    def slots(self, model):
        L, H = model.n_layers, model.n_heads
        return {"cut": (L, H, L, len(PATHS))}

    def parse(self, fields, cfg, arm):
        if len(fields) not in (2, 3) or fields[0] not in PATHS:
            raise InterventionError(f"intervention {arm!r}: write cut:Q|K|V:LxHy[:Lz]")
        out = []
        for head in heads(fields[1], cfg, arm):
            targets = ([layer(fields[2], cfg, arm)] if len(fields) == 3
                       else list(range(head[0] + 1, cfg.model.n_layers)))
            if not targets or min(targets) <= head[0]:
                raise InterventionError(f"intervention {arm!r}: L{head[0]}H{head[1]} has no later layer to cut "
                                        f"its write from; a cut reads from an earlier layer into a later one")
            out += [Entry("cut", (*head, t, PATHS.index(fields[0]))) for t in targets]
        return out

    def sites(self, slot, indices):
        return tuple(sorted({(s, t, c) for s, _, t, c in indices}))

    def edits(self, active, sites):
        return (CutWrite(active["cut"], sites["cut"]),) if "cut" in active else ()


# ---- freeze: no update of a group of weights ----------------------------------------------------

def freeze_groups(model) -> dict[str, tuple]:
    """The parameters a freeze can name and each one's mask shape after the ensemble axis
    (per head, per layer or whole: `layout.mask_shape`)."""
    return {p.name: layout.mask_shape(p, model) for p in layout.present(layout.features(model))}


class Freeze(Kind):
    word = "freeze"
    syntax = "freeze:W_E|W_pos|W_U|Lx|LxHy:QK|LxHy:OV"
    slot_names = ("freeze",)

    def slots(self, model):
        return {("freeze", name): shape for name, shape in freeze_groups(model).items()}

    def parse(self, fields, cfg, arm):
        groups = freeze_groups(cfg.model)
        L = cfg.model.n_layers
        whole = [n for n, s in groups.items() if s in ((), (L,))]
        if len(fields) == 1 and fields[0] in whole:
            return [Entry(("freeze", fields[0]))]
        if len(fields) == 1 and re.fullmatch(r"L\d+", fields[0]):
            i = layer(fields[0], cfg, arm)
            return [Entry(("freeze", name), (i,)) for name, shape in groups.items() if shape]
        if len(fields) == 2 and fields[1] in ("QK", "OV"):
            names = ("W_Q", "W_K") if fields[1] == "QK" else ("W_V", "W_O")
            return [Entry(("freeze", name), head) for head in heads(fields[0], cfg, arm) for name in names]
        allowed = ", ".join(n for n in whole if not layout.BY_NAME[n].per_layer)
        allowed += ", Lx (a layer), LxHy:QK, LxHy:OV" + "".join(f", {n}" for n in whole if layout.BY_NAME[n].per_layer)
        raise InterventionError(f"intervention {arm!r}: cannot freeze {':'.join(fields)!r} in this model; allowed: "
                                f"{allowed}")

    def freeze(self, active):
        return dict(active["freeze"]) if "freeze" in active else {}


class PerHead(Kind):
    """A kind with one number per head (`[L, H]`, slot `word`), written `word:LxHy`, or
    `word:LxHy:a` with a strength a in [0, 1] (default 1); its edit is one function at one
    site (`per_head`)."""

    def __init__(self, word: str, site: str, fn: Callable, strength: bool = False):
        self.word, self.site, self.fn, self.takes_strength = word, site, fn, strength
        self.syntax = f"{word}:LxHy" + (":a" if strength else "")
        self.slot_names = (word,)

    def slots(self, model):
        return {self.word: (model.n_layers, model.n_heads)}

    def parse(self, fields, cfg, arm):
        if len(fields) not in ((1, 2) if self.takes_strength else (1,)):
            raise InterventionError(f"intervention {arm!r}: write {self.word}:LxHy" + ("[:a]" if self.takes_strength else ""))
        a = strength(fields[1] if len(fields) == 2 else None, arm)
        return [Entry(self.word, head, a) for head in heads(fields[0], cfg, arm)]

    def edits(self, active, sites):
        if self.word not in active:
            return ()
        return (PerHeadEdit(active[self.word], self.fn, self.site, sites[self.word]),)


@dataclasses.dataclass(frozen=True)
class PerHeadEdit(Edit):
    """`fn(value, a_LH[layer], at)` at `site`, on `layers`."""

    a_LH: jax.Array
    fn: Callable
    site: str = ""
    layers: tuple[int, ...] | None = None

    def __call__(self, value, at: Site):
        return self.fn(value, self.a_LH[at.layer], at)


def per_head(word: str, site: str, *, strength: bool = False):
    """Register a kind of intervention in one function, as a decorator:

        @per_head("scale", "z", strength=True)      # scale:LxHy:a in an arm
        def scale(z_BHTK, a_H, at):                  # at layers some member names, every step
            return z_BHTK * (1.0 - 0.5 * a_H)[None, :, None, None]

    One number per head; the function gets the value at `site` (`functional.SITES`), the
    layer's numbers `a_H` at this step (zero outside the window, where it must leave the
    value unchanged) and the `functional.Site`. Returns the registered `Kind`
    (`unregister(word)` removes it)."""
    return lambda fn: register(PerHead(word, site, fn, strength))


for _kind in (Clamp(), Ablate(), Cut(), Freeze()):
    register(_kind)
