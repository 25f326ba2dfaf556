"""The parameter layout, described once.

`LAYOUT` names every parameter the transformer can have, its shape in terms of the model's
sizes, its initialiser, the optional parts of the architecture it belongs to, and its
TransformerLens name. Everything that depends on the layout reads it from here: the
initial weights (`model.init_params`, in this order, so the same keys go to the same
weights), the groups a freeze can name (`interventions`), the parameter count
(`memory.n_params`), the TransformerLens interop, and the guards of what holds only for the
attention-only model without LayerNorm (`extras`).

Sizes: n_layers L, n_heads H, d_model D, d_head K, d_vocab V, n_ctx, d_mlp M.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import NamedTuple

SIZES = ("d_vocab", "n_ctx", "n_layers", "n_heads", "d_model", "d_head", "d_mlp")
# The optional parts of the architecture and what a message calls them.
FEATURES = {"mlp": "MLPs", "layer_norm": "LayerNorm"}


class Param(NamedTuple):
    """One parameter: `dims` are size names (`SIZES`); a leading `n_layers` makes it per layer,
    and `n_layers, n_heads` per head. `needs`: the optional parts it belongs to (all of them
    must be on). `tl`: its TransformerLens name (`{layer}` for each layer's slice)."""

    name: str
    dims: tuple[str, ...]
    init: str = "normal"            # normal(weight_std), ones or zeros
    needs: tuple[str, ...] = ()
    tl: str = ""

    @property
    def per_layer(self) -> bool:
        return self.dims[:1] == ("n_layers",)

    @property
    def per_head(self) -> bool:
        return self.dims[:2] == ("n_layers", "n_heads")

    def shape(self, sizes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(sizes[d] for d in self.dims)


_LD = ("n_layers", "d_model")
LAYOUT: tuple[Param, ...] = (
    Param("W_E", ("d_vocab", "d_model"), tl="embed.W_E"),
    Param("W_pos", ("n_ctx", "d_model"), tl="pos_embed.W_pos"),
    *(Param(f"W_{x}", ("n_layers", "n_heads", "d_model", "d_head"), tl=f"blocks.{{layer}}.attn.W_{x}") for x in "QKV"),
    Param("W_O", ("n_layers", "n_heads", "d_head", "d_model"), tl="blocks.{layer}.attn.W_O"),
    Param("W_U", ("d_model", "d_vocab"), tl="unembed.W_U"),
    Param("W_in", ("n_layers", "d_model", "d_mlp"), needs=("mlp",), tl="blocks.{layer}.mlp.W_in"),
    Param("W_out", ("n_layers", "d_mlp", "d_model"), needs=("mlp",), tl="blocks.{layer}.mlp.W_out"),
    Param("ln1_w", _LD, "ones", ("layer_norm",), "blocks.{layer}.ln1.w"),
    Param("ln1_b", _LD, "zeros", ("layer_norm",), "blocks.{layer}.ln1.b"),
    Param("lnf_w", ("d_model",), "ones", ("layer_norm",), "ln_final.w"),
    Param("lnf_b", ("d_model",), "zeros", ("layer_norm",), "ln_final.b"),
    Param("ln2_w", _LD, "ones", ("mlp", "layer_norm"), "blocks.{layer}.ln2.w"),
    Param("ln2_b", _LD, "zeros", ("mlp", "layer_norm"), "blocks.{layer}.ln2.b"),
)
BY_NAME = {p.name: p for p in LAYOUT}
# The parameter whose presence shows each optional part (the first one that needs only it).
MARKER = {f: next(p.name for p in LAYOUT if p.needs == (f,)) for f in FEATURES}


def features(model) -> tuple[str, ...]:
    """The optional parts a `ModelConfig` has, in `FEATURES` order."""
    on = {"mlp": model.d_mlp > 0, "layer_norm": bool(model.layer_norm)}
    return tuple(f for f in FEATURES if on[f])


def present(on: Iterable[str] = ()) -> tuple[Param, ...]:
    """The parameters of a model with the optional parts `on`, in initialisation order."""
    on = set(on)
    return tuple(p for p in LAYOUT if on.issuperset(p.needs))


def sizes(model) -> dict[str, int]:
    """The sizes of a `ModelConfig` (or anything with those attributes)."""
    return {s: getattr(model, s) for s in SIZES}


def shapes(model) -> dict[str, tuple[int, ...]]:
    """Each parameter of a `ModelConfig`'s model and its shape, in initialisation order."""
    return {p.name: p.shape(sizes(model)) for p in present(features(model))}


def n_params(model) -> int:
    """How many numbers the parameters of a `ModelConfig`'s model hold."""
    return sum(math.prod(s) for s in shapes(model).values())


def mask_shape(p: Param, model) -> tuple[int, ...]:
    """The shape of a per-member mask over `p` (e.g. a freeze): one entry per head for a
    per-head parameter, per layer for a per-layer one, else one for the whole parameter."""
    n = 2 if p.per_head else 1 if p.per_layer else 0
    return p.shape(sizes(model))[:n]


def extras(names: Iterable[str]) -> dict[str, str]:
    """The optional parts that parameter names show: part -> the marker parameter present
    (`{"mlp": "W_in"}`, `{"layer_norm": "ln1_w"}`); empty for the attention-only model
    without LayerNorm, the one the weight-based analysis and the TransformerLens export take."""
    names = set(names)
    return {f: MARKER[f] for f in FEATURES if MARKER[f] in names}


def sizes_of(single: Mapping) -> dict[str, int]:
    """The sizes read off one model's circuit-layout weights (no ensemble axis): d_vocab and
    d_model from W_E, n_ctx from W_pos, n_layers, n_heads, d_head from W_Q, d_mlp from W_in."""
    V, D = single["W_E"].shape
    L, H, _, K = single["W_Q"].shape
    M = single["W_in"].shape[-1] if "W_in" in single else 0
    return {"d_vocab": V, "n_ctx": single["W_pos"].shape[0], "n_layers": L, "n_heads": H, "d_model": D,
            "d_head": K, "d_mlp": M}
