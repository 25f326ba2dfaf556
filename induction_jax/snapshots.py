"""Parameter snapshots of every member during training: RUN_DIR/snapshots/step_<S>.npz.

One file per snapshot step holds the circuit-layout weights of the whole ensemble, stacked
`[E, ...]` under their own names (`W_E`, `W_Q [E, L, H, D, K]`, ...): `numpy.load` reads it
with no template. Each carries a digest of its arrays (`arrays.save_arrays`), checked by every
reader. The schedule (`TrainConfig.snapshots`) is on the probe grid, with step 0 and the last.
Training is deterministic, so a resumed run drops the snapshots after its checkpoint and
retakes them: it ends with exactly the snapshots of an uninterrupted run.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from induction_jax.arrays import load_arrays, save_arrays
from induction_jax.config import RunConfig
from induction_jax.memory import F32, n_params
from induction_jax.rundir import RunDir, RunDirError

FOLDER = "snapshots"
_NAME = re.compile(r"step_(\d+)\.npz$")


def path(run: RunDir, step: int) -> Path:
    return run.path / FOLDER / f"step_{step:08d}.npz"


def save(run: RunDir, step: int, params: dict) -> Path:
    """Write one snapshot (host arrays `[E, ...]`); the folder is the project's whole."""
    run.owned_dir(FOLDER).mkdir(exist_ok=True)
    target = path(run, step)
    save_arrays(target, params)
    return target


def steps(run: RunDir) -> list[int]:
    folder = run.path / FOLDER
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _NAME.search(p.name)))


def _available(run: RunDir) -> list[int]:
    """The snapshot steps, or the one-line error of a run that has none."""
    have = steps(run)
    if not have:
        raise RunDirError(f"{run.path}: has no snapshots; train with --snapshots log (or every:N) to save "
                          f"the parameters during training")
    return have


def drop_after(run: RunDir, step: int) -> None:
    """Remove the snapshots after `step` (a resume retakes them, bit for bit)."""
    for s in steps(run):
        if s > step:
            path(run, s).unlink()


def select(run: RunDir, spec: str) -> list[int]:
    """The snapshot steps a spec names: 'all', steps (0,100,200: each must exist) and ranges
    (0-500: the snapshots in it); one-line errors."""
    have = _available(run)
    if spec == "all":
        return have
    chosen = []
    for part in spec.split(","):
        try:
            lo, _, hi = part.strip().partition("-")
            lo, hi = int(lo), int(hi) if hi else None
        except ValueError:
            raise RunDirError(f"--snapshots {spec!r}: must be 'all', steps or ranges such as 0,100 or 0-500") from None
        if hi is None:
            if lo not in have:
                raise RunDirError(f"snapshot step {lo}: not in {run.path / FOLDER}; available: "
                                  f"{', '.join(map(str, have)) or 'none'}")
            chosen.append(lo)
        else:
            chosen += [s for s in have if lo <= s <= hi]
    chosen = sorted(set(chosen))
    if not chosen:
        raise RunDirError(f"--snapshots {spec!r}: names no snapshot of {run.path}; available: "
                          f"{', '.join(map(str, have)) or 'none'}")
    return chosen


def load(run: RunDir, which: list[int] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """`(steps [S], params {name: [S, E, ...]})` of every snapshot (or `which`), each verified;
    a run without snapshots, a missing step or a damaged file is a one-line RunDirError."""
    have = _available(run)
    which = have if which is None else list(which)
    missing = [s for s in which if s not in have]
    if missing:
        raise RunDirError(f"snapshot step {missing[0]}: not in {run.path / FOLDER}; available: "
                          f"{', '.join(map(str, have))}")
    snaps = [load_arrays(path(run, s)) for s in which]
    names = sorted(snaps[0])
    return np.asarray(which), {k: np.stack([s[k] for s in snaps]) for k in names}


def _size(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:.1f} MiB" if n_bytes >= 2**20 else f"{n_bytes / 2**10:.0f} KiB"


def describe(cfg: RunConfig, n_members: int) -> str | None:
    """One line: how many snapshots and how much disk they take (printed before training)."""
    schedule = cfg.train.snapshot_steps
    if not schedule:
        return None
    each = F32 * n_params(cfg) * n_members
    shown = schedule if len(schedule) <= 8 else schedule[:6] + ["..."] + schedule[-1:]
    return (f"snapshots: {len(schedule)} steps ({cfg.train.snapshots}: {', '.join(map(str, shown))}) of "
            f"{n_members} members, {_size(each)} each, {_size(each * len(schedule))} in all")
