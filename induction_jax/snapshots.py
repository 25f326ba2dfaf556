"""Parameter snapshots of every member during training: RUN_DIR/snapshots/step_<S>.npz.

One file per snapshot step holds the circuit-layout weights of the whole ensemble, stacked
`[E, ...]` under their own names (`W_E`, `W_Q [E, L, H, D, K]`, ...): `numpy.load` reads it
with no template. Each carries a digest of its arrays (`arrays.save_arrays`), checked by every
reader. The schedule (`TrainConfig.snapshots`) is on the probe grid, with step 0 and the last.
Training is deterministic, so a resumed run drops the snapshots after its checkpoint and
retakes them: it ends with exactly the snapshots of an uninterrupted run. The snapshots it keeps
are verified first: a damaged one is moved aside to RUN_DIR/snapshots_broken/, and a missing or
damaged one is re-made from the checkpoints where they allow (the runner); one that cannot be
stays missing, and `dynamics` / `llc` name every scheduled step that is missing.

The schedule a run was trained with is recorded in config.json (`snapshot_steps`): a resume
with another --steps changes the schedule of the steps still to come only.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from induction_jax.arrays import load_arrays, save_arrays
from induction_jax.config import ModelConfig, RunConfig
from induction_jax.files import RunDirError
from induction_jax.rundir import RunDir

FOLDER = "snapshots"
BROKEN = "snapshots_broken"        # damaged snapshots moved aside by a resume
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


def scheduled(run: RunDir, cfg: RunConfig | None = None) -> list[int]:
    """The steps the run was scheduled to snapshot: config.json's record (`snapshot_steps`,
    which a resume with another --steps keeps for the steps already trained), else its config's."""
    recorded = run.read_meta().get("snapshot_steps")
    if isinstance(recorded, list) and all(isinstance(s, int) for s in recorded):
        return sorted(recorded)
    return (cfg or run.read_config()).train.snapshot_steps


def resume_schedule(run: RunDir, cfg: RunConfig, start: int, trained_with: dict | None = None) -> list[int]:
    """The schedule of a run resumed at checkpoint `start` with `cfg`: what it was scheduled to
    take up to `start` (config.json's record, else the schedule of the config `trained_with`, a
    checkpoint's record), then `cfg`'s for the steps still to come."""
    recorded = run.read_meta().get("snapshot_steps")
    if isinstance(recorded, list) and all(isinstance(s, int) for s in recorded):
        before = recorded
    else:
        try:
            before = RunConfig.from_dict(trained_with["config"]).train.snapshot_steps
        except Exception:  # noqa: BLE001 - no usable record: the config's own schedule
            before = cfg.train.snapshot_steps
    return sorted({s for s in before if s <= start} | {s for s in cfg.train.snapshot_steps if s > start})


def verify(run: RunDir, upto: int) -> dict[int, str]:
    """Read and check the digest of every snapshot at or before `upto`: `{step: one-line reason}`
    of those that cannot be used (empty when all are good)."""
    bad = {}
    for s in steps(run):
        if s <= upto:
            try:
                load_arrays(path(run, s))
            except RunDirError as e:
                bad[s] = str(e)
    return bad


def move_aside(run: RunDir, step: int) -> Path:
    """Move a damaged snapshot to RUN_DIR/snapshots_broken/ (never deleted: the user may want it)."""
    aside = run.owned_dir(BROKEN)
    aside.mkdir(exist_ok=True)
    target = aside / path(run, step).name
    n = 1
    while target.exists():
        target = aside / f"{path(run, step).stem}.{n}.npz"
        n += 1
    path(run, step).rename(target)
    return target


def _trained_to(run: RunDir, have: list[int]) -> int:
    """The last step the run is known to have trained: its newest checkpoint or snapshot."""
    ckpts = [int(p.name) for p in run.checkpoints.iterdir() if p.name.isdigit()] if run.checkpoints.is_dir() else []
    return max(ckpts + have, default=0)


def missing(run: RunDir, cfg: RunConfig | None = None, spec: str = "all") -> list[int]:
    """The scheduled steps (up to the run's last trained step, within what `spec` names) that
    have no snapshot file: deleted, moved aside as damaged, or never re-made after a resume."""
    have = steps(run)
    upto = _trained_to(run, have)
    ranges = _parse(spec)
    return [s for s in scheduled(run, cfg) if s <= upto and s not in have
            and any(lo <= s <= (lo if hi is None else hi) for lo, hi in ranges)]


def missing_message(run: RunDir, gap: list[int], have: list[int]) -> str:
    """One line naming the scheduled snapshots that are missing (the analysis spans the gap)."""
    return (f"induction-jax: {run.path / FOLDER}: scheduled snapshot step{'s' if len(gap) > 1 else ''} "
            f"{', '.join(map(str, gap))} {'are' if len(gap) > 1 else 'is'} missing (deleted, or damaged and not "
            f"re-made); analysing the {len(have)} there are, across the gap")


def drop_after(run: RunDir, step: int) -> None:
    """Remove the snapshots after `step` (a resume retakes them, bit for bit)."""
    for s in steps(run):
        if s > step:
            path(run, s).unlink()


def _parse(spec: str) -> list[tuple[int, int | None]]:
    """A --snapshots spec as `(lo, hi)` ranges (`hi` None: the one step `lo`); one-line errors."""
    if spec == "all":
        return [(0, 2**63)]
    out = []
    for part in spec.split(","):
        try:
            lo, _, hi = part.strip().partition("-")
            lo, hi = int(lo), int(hi) if hi else None
        except ValueError:
            raise RunDirError(f"--snapshots {spec!r}: must be 'all', steps or ranges such as 0,100 or 0-500") from None
        if hi is not None and hi < lo:
            raise RunDirError(f"--snapshots {spec!r}: range {part.strip()} is empty (end before start)")
        out.append((lo, hi))
    return out


def select(run: RunDir, spec: str) -> list[int]:
    """The snapshot steps a spec names: 'all', steps (0,100,200: each must exist) and ranges
    (0-500: the snapshots in it); one-line errors."""
    ranges = _parse(spec)
    have = _available(run)
    if spec == "all":
        return have
    chosen = []
    for lo, hi in ranges:
        if hi is None:
            if lo not in have:
                why = ("missing (scheduled, but deleted, or damaged and not re-made)" if lo in missing(run)
                       else f"not in {run.path / FOLDER}")
                raise RunDirError(f"--snapshots {spec!r}: snapshot step {lo}: {why}; available: "
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


def n_floats(m: ModelConfig) -> int:
    """The floats one member's snapshot holds: every parameter, in the model's layout (`model.py`
    declares the same shapes; tests/test_layers.py checks the two agree). Computed here so that
    the run directory's modules need nothing of the trainer."""
    L, H, D, K, V, M = m.n_layers, m.n_heads, m.d_model, m.d_head, m.d_vocab, m.d_mlp
    weights = V * D + m.n_ctx * D + 4 * L * H * D * K + D * V + (0 if m.attn_only else 2 * L * D * M)
    norms = 2 * (L * D + D + (0 if m.attn_only else L * D)) if m.layer_norm else 0
    return weights + norms


def describe(cfg: RunConfig, n_members: int) -> str | None:
    """One line: how many snapshots and how much disk they take (printed before training)."""
    schedule = cfg.train.snapshot_steps
    if not schedule:
        return None
    each = np.dtype(np.float32).itemsize * n_floats(cfg.model) * n_members
    shown = schedule if len(schedule) <= 8 else schedule[:6] + ["..."] + schedule[-1:]
    return (f"snapshots: {len(schedule)} steps ({cfg.train.snapshots}: {', '.join(map(str, shown))}) of "
            f"{n_members} members, {_size(each)} each, {_size(each * len(schedule))} in all")
