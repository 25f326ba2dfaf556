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

An ensemble's arms become one `Intervention`: per kind a `Window` of arrays (value, start,
stop) with a leading ensemble axis, so every arm of a sweep runs in one compiled program; a
kind no member uses is None and costs nothing, and a kind some member uses is computed only
where some member uses it (`Intervention.sites`: which layers, which cut paths).
"""

from __future__ import annotations

import dataclasses
import re
from typing import NamedTuple

import jax
import numpy as np

from induction_jax.config import ConfigError, RunConfig
from induction_jax.functional import Sites

KINDS = ("clamp", "ablate", "freeze", "cut")
CLAMP_TARGETS = ("prev", "induction")
PATHS = "QKV"
SYNTAX = ("none, or clamp:prev|induction:LxHy:a, ablate:LxHy, freeze:W_E|W_pos|W_U|Lx|LxHy:QK|LxHy:OV, "
          "cut:Q|K|V:LxHy[:Lz], joined with +, each with an optional @START-STOP")


class InterventionError(ConfigError):
    """An arm that cannot be run (one line naming the problem and what is allowed)."""


class Window(NamedTuple):
    """An intervention's strength per element and the steps [start, stop) it is active in."""

    value: np.ndarray
    start: np.ndarray
    stop: np.ndarray


@dataclasses.dataclass(frozen=True)
class Intervention:
    """Everything done to the members, stacked on a leading ensemble axis (None: nobody does it).

    `sites` (static, not an array) is where any member acts at all, so the compiled step
    computes each kind only there: an ensemble pays for what its arms do, not for every head
    of every layer. (Its arrays keep their layout: checkpoints of earlier versions restore.)"""

    clamp_prev: Window | None         # [E, L, H] strength a
    clamp_induction: Window | None    # [E, L, H]
    ablate: Window | None             # [E, L, H] 1 = output zeroed
    cut: Window | None                # [E, L, H, L, 3]: source layer, source head, target layer, Q/K/V
    freeze: dict | None               # param name -> Window of [E] or [E, L] or [E, L, H]
    sites: Sites = dataclasses.field(default=Sites(), metadata={"static": True})


jax.tree_util.register_dataclass(Intervention)


def _heads(text: str, cfg: RunConfig, arm: str) -> list[tuple[int, int]]:
    m = re.fullmatch(r"L(\d+)H(\d+|\*)", text)
    L, H = cfg.model.n_layers, cfg.model.n_heads
    if not m:
        raise InterventionError(f"intervention {arm!r}: {text!r} is not a head; write LxHy (e.g. L0H1) or LxH*")
    layer = int(m.group(1))
    heads = range(H) if m.group(2) == "*" else [int(m.group(2))]
    if layer >= L or any(h >= H for h in heads):
        raise InterventionError(f"intervention {arm!r}: head {text} out of range; allowed: L0H0..L{L - 1}H{H - 1}")
    return [(layer, h) for h in heads]


def _layer(text: str, cfg: RunConfig, arm: str) -> int:
    m = re.fullmatch(r"L(\d+)", text)
    if not m or int(m.group(1)) >= cfg.model.n_layers:
        raise InterventionError(f"intervention {arm!r}: {text!r} is not a layer of this model; allowed: "
                                f"L0..L{cfg.model.n_layers - 1}")
    return int(m.group(1))


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


def freeze_groups(cfg: RunConfig) -> dict[str, tuple]:
    """The parameters a freeze can name and each one's mask shape after the ensemble axis."""
    m = cfg.model
    L, H = m.n_layers, m.n_heads
    shapes = {"W_E": (), "W_pos": (), "W_U": (), "W_Q": (L, H), "W_K": (L, H), "W_V": (L, H), "W_O": (L, H)}
    if not m.attn_only:
        shapes |= {"W_in": (L,), "W_out": (L,)}
    if m.layer_norm:
        shapes |= {"ln1_w": (L,), "ln1_b": (L,), "lnf_w": (), "lnf_b": ()}
        if not m.attn_only:
            shapes |= {"ln2_w": (L,), "ln2_b": (L,)}
    return shapes


def parse(arm: str, cfg: RunConfig) -> list[tuple]:
    """An arm as a list of `(kind, target, where, strength, (start, stop))`; one-line errors."""
    arm = arm.strip()
    if arm == "none":
        return []
    if not arm:
        raise InterventionError(f"intervention '': empty; allowed: {SYNTAX}")
    out = []
    L = cfg.model.n_layers
    parts = [p.strip() for p in arm.split("+")]
    if "none" in parts:
        raise InterventionError(f"--intervention {arm!r}: 'none' stands alone (the arm with no intervention) and "
                                f"cannot be combined with +; allowed: {SYNTAX}")
    repeated = next((p for i, p in enumerate(parts) if p in parts[:i]), None)
    if repeated is not None:
        raise InterventionError(f"--intervention {arm!r}: {repeated!r} appears twice in one arm; each part may appear "
                                f"once (different heads, kinds or windows combine, e.g. ablate:L0H0+ablate:L0H1)")
    owner = {}                      # (kind, target, where) -> the part that set it: one window each
    for part in parts:
        first = len(out)
        body, _, window = part.partition("@")
        span = _window(window or None, cfg.train.steps, arm)
        fields = body.split(":")
        kind = fields[0]
        if kind not in KINDS:
            raise InterventionError(f"intervention {arm!r}: unknown kind {kind!r}; allowed: {SYNTAX}")
        if kind == "clamp":
            if len(fields) not in (3, 4) or fields[1] not in CLAMP_TARGETS:
                raise InterventionError(f"intervention {arm!r}: write clamp:prev|induction:LxHy[:a]")
            try:
                a = float(fields[3]) if len(fields) == 4 else 1.0
            except ValueError:
                a = float("nan")
            if not 0.0 <= a <= 1.0:
                raise InterventionError(f"intervention {arm!r}: strength {fields[3]} outside [0, 1]")
            out += [("clamp_" + fields[1], head, None, a, span) for head in _heads(fields[2], cfg, arm)]
        elif kind == "ablate":
            if len(fields) != 2:
                raise InterventionError(f"intervention {arm!r}: write ablate:LxHy")
            out += [("ablate", head, None, 1.0, span) for head in _heads(fields[1], cfg, arm)]
        elif kind == "cut":
            if len(fields) not in (3, 4) or fields[1] not in PATHS:
                raise InterventionError(f"intervention {arm!r}: write cut:Q|K|V:LxHy[:Lz]")
            for head in _heads(fields[2], cfg, arm):
                targets = [_layer(fields[3], cfg, arm)] if len(fields) == 4 else list(range(head[0] + 1, L))
                if not targets or min(targets) <= head[0]:
                    raise InterventionError(f"intervention {arm!r}: L{head[0]}H{head[1]} has no later layer to cut "
                                            f"its write from; a cut reads from an earlier layer into a later one")
                out += [("cut", head, (t, PATHS.index(fields[1])), 1.0, span) for t in targets]
        else:
            out += [("freeze", target, where, 1.0, span) for target, where in _freeze_targets(fields[1:], cfg, arm)]
        for kind_, target, where, *_ in out[first:]:
            other = owner.setdefault((kind_, target, where), part)
            if other != part:
                raise InterventionError(f"--intervention {arm!r}: {part!r} sets what {other!r} already sets (one "
                                        f"strength and window per head or weight and kind); name it once")
    return out


def _freeze_targets(fields: list[str], cfg: RunConfig, arm: str) -> list[tuple]:
    groups = freeze_groups(cfg)
    allowed = "W_E, W_pos, W_U, Lx (a layer), LxHy:QK, LxHy:OV" + (", W_in, W_out" if "W_in" in groups else "")
    if len(fields) == 1 and fields[0] in groups and groups[fields[0]] in ((), (cfg.model.n_layers,)):
        return [(fields[0], None)]
    if len(fields) == 1 and re.fullmatch(r"L\d+", fields[0]):
        layer = _layer(fields[0], cfg, arm)
        return [(name, (layer,)) for name, shape in groups.items() if shape and len(shape) >= 1]
    if len(fields) == 2 and fields[1] in ("QK", "OV"):
        names = ("W_Q", "W_K") if fields[1] == "QK" else ("W_V", "W_O")
        return [(name, head) for head in _heads(fields[0], cfg, arm) for name in names]
    raise InterventionError(f"intervention {arm!r}: cannot freeze {':'.join(fields)!r} in this model; allowed: "
                            f"{allowed}")


def build(arms, cfg: RunConfig) -> Intervention | None:
    """The stacked `Intervention` of every member's arm (None when every arm is `none`)."""
    parsed = [parse(a, cfg) for a in arms]
    if not any(parsed):
        return None
    E, L, H = len(arms), cfg.model.n_layers, cfg.model.n_heads
    shapes = {"clamp_prev": (L, H), "clamp_induction": (L, H), "ablate": (L, H), "cut": (L, H, L, 3)}
    used = {c[0] for p in parsed for c in p}
    windows = {k: Window(np.zeros((E, *s), np.float32), np.zeros((E, *s), np.int32), np.zeros((E, *s), np.int32))
               for k, s in shapes.items() if k in used}
    freeze = {name: Window(np.zeros((E, *s), np.float32), np.zeros((E, *s), np.int32), np.zeros((E, *s), np.int32))
              for name, s in freeze_groups(cfg).items()} if "freeze" in used else None
    for e, components in enumerate(parsed):
        for kind, target, where, value, (start, stop) in components:
            if kind == "freeze":
                w, index = freeze[target], (e,) + (where or ())
            else:
                w, index = windows[kind], (e, *target) + (where or ())
            w.value[index], w.start[index], w.stop[index] = value, start, stop
    sites = Sites(*(tuple(sorted({target[0] for p in parsed for kind_, target, *_ in p if kind_ == kind}))
                    for kind in ("clamp_prev", "clamp_induction", "ablate")),
                  tuple(sorted({(target[0], *where) for p in parsed for kind_, target, where, *_ in p if kind_ == "cut"})))
    return Intervention(windows.get("clamp_prev"), windows.get("clamp_induction"), windows.get("ablate"),
                        windows.get("cut"), freeze, sites)
