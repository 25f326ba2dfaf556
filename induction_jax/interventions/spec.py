"""What is done to a member during training, written as text and held as arrays.

An *arm* is `none`, or interventions joined with `+`, each optionally limited to a window of
steps `@START-STOP` (active while START <= step < STOP; `@START-` runs to the end):

    clamp:prev:L0H0:1.0      pull L0H0's attention pattern towards the previous-token pattern, a = 1.0
    clamp:induction:L1H*:0.5 every layer-1 head halfway towards the induction pattern of the sequence
    ablate:L1H2              zero L1H2's output
    freeze:W_pos             no update of W_pos (weight decay included); also W_E, W_U, a layer
                             (freeze:L0), one head's QK or OV weights (freeze:L0H1:QK, freeze:L0H1:OV)
    cut:K:L0H1               remove L0H1's write from the key input of every later layer (Q, K or V;
                             cut:K:L0H1:L1 for one later layer); the residual stream elsewhere keeps it
    ablate:L1H1+ablate:L1H2@0-500

Each kind is one `Kind` in one table (`KINDS`, `register`): its word, how its text becomes
entries of per-member arrays, and what those arrays do at a step (`Edit`s on the forward
pass, or masks on the update). The parser, the arrays and `active` only read the table.

An ensemble's arms become one `Intervention`: per array (a *slot*) a `Window` of arrays
(value, start, stop) with a leading ensemble axis, so every arm of a sweep runs in one
compiled program; a slot no member uses is None and costs nothing, and a slot some member
uses is computed only where some member uses it (`Intervention.sites`: which layers, which
cut paths).

Nothing here reads the data section of the config: sizes come from `cfg.model`, the run
length from `cfg.train.steps`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NamedTuple

import jax
import numpy as np

from induction_jax.config import ConfigError, RunConfig


class InterventionError(ConfigError):
    """An arm that cannot be run (one line naming the problem and what is allowed)."""


class Window(NamedTuple):
    """An intervention's strength per element and the steps [start, stop) it is active in."""

    value: np.ndarray
    start: np.ndarray
    stop: np.ndarray


class Entry(NamedTuple):
    """One element an arm sets: `value` at `index` of the array `slot` (`(slot, name)` for an
    array inside a group of them, e.g. one parameter's freeze mask)."""

    slot: str | tuple[str, str]
    index: tuple = ()
    value: float = 1.0


class Kind:
    """One kind of intervention: how it is written and what it does. Subclass and `register`.

    - `word`: the first field of its text (`ablate` in `ablate:L1H2`); `syntax` for messages.
    - `slots(model)`: the per-member arrays it fills, slot -> shape (the slots' names are
      the keys of the `Intervention`, hence of checkpoints: `slot_names` lists them, in order).
    - `parse(fields, cfg, arm)`: the text after the word, split at `:`, as `Entry`s; one-line
      `InterventionError`s.
    - `sites(slot, indices)`: where in the pass the entries of one slot act, static (default:
      their layers, `index[0]`); the compiled pass computes the slot only there.
    - `edits(active, sites)`: the `functional.Edit`s of the slots at one step (`active`: slot ->
      its values, zero outside their windows; only the slots some member uses).
    - `freeze(active)`: parameter name -> mask (1 = no update) at one step.
    """

    word: str = ""
    syntax: str = ""
    slot_names: tuple[str, ...] = ()

    def slots(self, model) -> dict:
        raise NotImplementedError

    def parse(self, fields: list[str], cfg: RunConfig, arm: str) -> list[Entry]:
        raise NotImplementedError

    def sites(self, slot: str, indices) -> tuple:
        return tuple(sorted({index[0] for index in indices}))

    def edits(self, active: Mapping, sites: Mapping) -> tuple:
        return ()

    def freeze(self, active: Mapping) -> dict:
        return {}


KINDS: dict[str, Kind] = {}      # word -> Kind, in the order of the Intervention's slots


def register(kind: Kind) -> Kind:
    """Add `kind` to the table the parser and `active` read (its word and slots must be new)."""
    taken = {s for k in KINDS.values() for s in k.slot_names}
    if kind.word in KINDS or taken & set(kind.slot_names) or not kind.slot_names:
        raise ValueError(f"intervention kind {kind.word!r}: word or slots {kind.slot_names} already taken or empty")
    KINDS[kind.word] = kind
    return kind


def unregister(word: str) -> None:
    KINDS.pop(word)


def syntax() -> str:
    return (f"none, or {', '.join(k.syntax for k in KINDS.values())}, joined with +, each with an optional "
            f"@START-STOP")


def slot_kinds() -> dict[str, Kind]:
    """Every slot name of the table -> its kind, in order."""
    return {s: k for k in KINDS.values() for s in k.slot_names}


# ---- What the kinds' parsers share ------------------------------------------------------------

def heads(text: str, cfg: RunConfig, arm: str) -> list[tuple[int, int]]:
    """`LxHy` or `LxH*` as (layer, head) pairs of this model."""
    m = re.fullmatch(r"L(\d+)H(\d+|\*)", text)
    L, H = cfg.model.n_layers, cfg.model.n_heads
    if not m:
        raise InterventionError(f"intervention {arm!r}: {text!r} is not a head; write LxHy (e.g. L0H1) or LxH*")
    layer = int(m.group(1))
    hs = range(H) if m.group(2) == "*" else [int(m.group(2))]
    if layer >= L or any(h >= H for h in hs):
        raise InterventionError(f"intervention {arm!r}: head {text} out of range; allowed: L0H0..L{L - 1}H{H - 1}")
    return [(layer, h) for h in hs]


def layer(text: str, cfg: RunConfig, arm: str) -> int:
    """`Lx` as a layer of this model."""
    m = re.fullmatch(r"L(\d+)", text)
    if not m or int(m.group(1)) >= cfg.model.n_layers:
        raise InterventionError(f"intervention {arm!r}: {text!r} is not a layer of this model; allowed: "
                                f"L0..L{cfg.model.n_layers - 1}")
    return int(m.group(1))


def strength(text: str | None, arm: str) -> float:
    """An optional strength in [0, 1] (default 1)."""
    try:
        a = float(text) if text is not None else 1.0
    except ValueError:
        a = float("nan")
    if not 0.0 <= a <= 1.0:
        raise InterventionError(f"intervention {arm!r}: strength {text} outside [0, 1]")
    return a


# ---- Windows, parsing, building ---------------------------------------------------------------

def _window(text: str | None, steps: int, arm: str) -> tuple[int, int]:
    """[start, stop) in steps. Open-ended (no window, or @START-) runs to the end, including the
    probes after the last update: stop = steps + 1."""
    if text is None:
        return 0, steps + 1
    m = re.fullmatch(r"(\d+)-(\d*)", text)
    if not m:
        raise InterventionError(f"intervention {arm!r}: window @{text} must be @START-STOP or @START-")
    start, stop = int(m.group(1)), int(m.group(2)) if m.group(2) else steps + 1
    if not 0 <= start < stop <= steps + 1 or (m.group(2) and stop > steps):
        raise InterventionError(f"intervention {arm!r}: window @{text} outside the run; allowed: 0 <= START < "
                                f"STOP <= {steps} (steps)")
    return start, stop


class Part(NamedTuple):
    """One parsed element of an arm: an `Entry` and the steps [start, stop) it is active in."""

    slot: str | tuple[str, str]
    index: tuple
    value: float
    span: tuple[int, int]


def parse(arm: str, cfg: RunConfig) -> list[Part]:
    """An arm as a list of `Part`s; one-line errors."""
    arm = arm.strip()
    if arm == "none":
        return []
    if not arm:
        raise InterventionError(f"intervention '': empty; allowed: {syntax()}")
    parts = [p.strip() for p in arm.split("+")]
    if "none" in parts:
        raise InterventionError(f"--intervention {arm!r}: 'none' stands alone (the arm with no intervention) and "
                                f"cannot be combined with +; allowed: {syntax()}")
    repeated = next((p for i, p in enumerate(parts) if p in parts[:i]), None)
    if repeated is not None:
        raise InterventionError(f"--intervention {arm!r}: {repeated!r} appears twice in one arm; each part may appear "
                                f"once (different heads, kinds or windows combine, e.g. ablate:L0H0+ablate:L0H1)")
    out = []
    owner = {}                      # (slot, index) -> the part that set it: one window each
    for part in parts:
        body, _, window = part.partition("@")
        span = _window(window or None, cfg.train.steps, arm)
        word, *fields = body.split(":")
        if word not in KINDS:
            raise InterventionError(f"intervention {arm!r}: unknown kind {word!r}; allowed: {syntax()}")
        for e in KINDS[word].parse(fields, cfg, arm):
            other = owner.setdefault((e.slot, tuple(e.index)), part)
            if other != part:
                raise InterventionError(f"--intervention {arm!r}: {part!r} sets what {other!r} already sets (one "
                                        f"strength and window per head or weight and kind); name it once")
            out.append(Part(e.slot, tuple(e.index), e.value, span))
    return out


class Intervention:
    """Everything done to the members, stacked on a leading ensemble axis.

    `windows`: every slot of the table (`slot_kinds`) -> its `Window` (or a group of them,
    name -> `Window`), None where no member uses it; a pytree whose keys are the slots'
    names (`.clamp_prev.value`: what checkpoints store and their digests cover, as in earlier
    versions). `sites` (static, not an array): slot -> where any member acts at all, so the
    compiled step computes each slot only there: an ensemble pays for what its arms do, not
    for every head of every layer."""

    def __init__(self, windows: dict, sites: tuple = ()):
        self.windows = dict(windows)
        self.sites = tuple(sites)

    def __getattr__(self, name):
        windows = self.__dict__.get("windows", {})
        if name in windows:
            return windows[name]
        raise AttributeError(name)

    def __repr__(self):
        return f"Intervention({self.windows!r}, sites={self.sites!r})"


def _flatten(iv: Intervention):
    return [(jax.tree_util.GetAttrKey(k), w) for k, w in iv.windows.items()], (tuple(iv.windows), iv.sites)


jax.tree_util.register_pytree_with_keys(
    Intervention, _flatten, lambda aux, children: Intervention(dict(zip(aux[0], children)), aux[1]))


def build(arms, cfg: RunConfig) -> Intervention | None:
    """The stacked `Intervention` of every member's arm (None when every arm is `none`)."""
    parsed = [parse(a, cfg) for a in arms]
    if not any(parsed):
        return None
    E = len(arms)
    kinds = slot_kinds()
    used = {p.slot if isinstance(p.slot, str) else p.slot[0] for ps in parsed for p in ps}
    windows: dict = {s: None for s in kinds}
    for kind in dict.fromkeys(kinds.values()):
        for slot, shape in kind.slots(cfg.model).items():
            top = slot if isinstance(slot, str) else slot[0]
            if top not in used:
                continue
            w = Window(np.zeros((E, *shape), np.float32), np.zeros((E, *shape), np.int32),
                       np.zeros((E, *shape), np.int32))
            if isinstance(slot, str):
                windows[slot] = w
            else:
                windows[top] = (windows[top] or {}) | {slot[1]: w}
    for e, ps in enumerate(parsed):
        for p in ps:
            w = windows[p.slot] if isinstance(p.slot, str) else windows[p.slot[0]][p.slot[1]]
            index = (e, *p.index)
            w.value[index], w.start[index], w.stop[index] = p.value, *p.span
    sites = tuple((s, kinds[s].sites(s, sorted({p.index for ps in parsed for p in ps if p.slot == s})))
                  for s in kinds if isinstance(windows[s], Window))
    return Intervention(windows, sites)
