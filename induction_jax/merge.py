"""`induction-jax merge DIR... --out DIR`: the slices of one spec (`--shard I/N`) as one run.

The slices must be every slice of one spec (same spec digest, same config, one of each index
0..N-1, each holding the members `shards.select` gives it) and finished; anything else is a
one-line error before a byte is written. The merged run is what training the spec in one
process writes: metrics.csv and head_metrics.csv are step-major (every member's row of a step,
then the next step), so interleaving the slices' rows step by step, with each slice's member ids
moved to their place in the spec, gives the one-process file byte for byte; every checkpoint
and snapshot step the slices share is their states concatenated along the member axis; the
summary and loss plot are computed as training's end computes them. `analyze`, `phase`,
`dynamics`, `llc` and `report` then read it as any run.

`--out` must not exist, except as a merge of the same slices that was stopped: that one is
continued (the checkpoints and snapshots it holds are kept, the rest written). A run trained
with `--log` gets its trackers' files from the merged metrics.csv, written afresh into the
merged run as one run of the whole ensemble (the slices' own files stay in the slices).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import jax
import numpy as np

from induction_jax import ensemble, shards, signals, snapshots, tracking
from induction_jax.checkpoint import Checkpoints
from induction_jax.config import RunConfig
from induction_jax.files import RunDirError, write_json_atomic, write_text_atomic
from induction_jax.members import Members
from induction_jax.progress import ProgressBar
from induction_jax.rundir import RunDir
from induction_jax.runner import finish_run

MARKER = "merge.json"


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _first_difference(a: dict, b: dict) -> str:
    for section in sorted(set(a) | set(b)):
        for name in sorted(set(a.get(section, {})) | set(b.get(section, {}))):
            if a.get(section, {}).get(name) != b.get(section, {}).get(name):
                return f"{section}.{name} {b.get(section, {}).get(name)!r} vs {a.get(section, {}).get(name)!r}"
    return "the config"


def read_slices(dirs: list[str | Path]) -> tuple[RunConfig, Members, list[tuple[RunDir, dict, Members]]]:
    """The spec's config, its whole members table and the slices in index order; a set of
    directories that is not every finished slice of one spec is a one-line RunDirError."""
    slices = []
    for d in dirs:
        run = RunDir(Path(d))
        cfg = run.read_config()
        shard = shards.read(run)
        if shard is None:
            raise RunDirError(f"{run.path}: not a slice (no {shards.SHARD_FILE}); merge takes the run directories "
                              f"written by 'induction-jax sweep --shard I/N' (or train --shard)")
        slices.append((run, cfg, shard))
    run0, cfg0, shard0 = slices[0]
    for run, cfg, shard in slices[1:]:
        if shard["spec_digest"] != shard0["spec_digest"] or shard["count"] != shard0["count"]:
            raise RunDirError(f"{run.path}: a slice of another spec (digest {shard['spec_digest'][:12]}, "
                              f"{shard['count']} slices) than {run0.path} (digest {shard0['spec_digest'][:12]}, "
                              f"{shard0['count']} slices); merge takes the slices of one sweep")
        if cfg.to_dict() != cfg0.to_dict():
            raise RunDirError(f"{run.path}: config differs from {run0.path}'s ({_first_difference(cfg0.to_dict(), cfg.to_dict())}); "
                              f"merge takes the slices of one sweep, trained to the same step")
    by_index: dict[int, RunDir] = {}
    for run, _, shard in slices:
        if shard["index"] in by_index:
            raise RunDirError(f"{run.path} and {by_index[shard['index']].path}: both are slice {shard['index']} of "
                              f"{shard['count']}; each slice may be given once")
        by_index[shard["index"]] = run
    count = shard0["count"]
    missing = [i for i in range(count) if i not in by_index]
    if missing:
        raise RunDirError(f"slice{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} of {count} "
                          f"missing (given: {', '.join(map(str, sorted(by_index)))}); merge needs every slice "
                          f"0..{count - 1} of the sweep")
    whole = Members.from_table(shard0["spec_members"], cfg0.task)
    out = []
    for index in range(count):
        run = by_index[index]
        members = run.members()
        if members.table() != shards.select(whole, index, count)[0].table():
            raise RunDirError(f"{run.path}: its members table is not slice {index} of {count} of the spec; "
                              f"merge takes the slices as training wrote them")
        _check_finished(run, cfg0)
        out.append((run, shards.read(run), members))
    return cfg0, whole, out


def _check_finished(run: RunDir, cfg: RunConfig) -> None:
    with Checkpoints(run.checkpoints, async_save=False) as ckpt:
        done = max(ckpt.steps(), default=0)
    if done < cfg.train.steps or not run.summary_json.is_file():
        raise RunDirError(f"{run.path}: not finished (trained to step {done} of {cfg.train.steps}); finish it "
                          f"with 'induction-jax train --resume {run.path}' and merge again")


def merge_table(paths: list[Path], firsts: list[int]) -> tuple[bytes, dict[int, int]]:
    """The slices' step-major tables interleaved step by step, member ids moved by `firsts`;
    and for every step the bytes up to and including its rows (a checkpoint's `table_bytes`)."""
    header, per_step = None, {}
    for path, first in zip(paths, firsts):
        lines = path.read_bytes().splitlines(keepends=True)
        if header is None:
            header = lines[0]
            at = header.decode().rstrip("\n").split(",").index("step")
        elif lines[0] != header:
            raise RunDirError(f"{path}: its columns differ from the other slices'; merge takes slices of one sweep")
        for line in lines[1:]:
            parts = line.split(b",", at + 1)
            step = int(parts[at])
            parts[0] = str(first + int(parts[0])).encode()
            per_step.setdefault(step, []).append(b",".join(parts))
    chunks, sizes, total = [header], {}, len(header)
    for step in sorted(per_step):        # slices in index order within a step: the spec's member order
        chunks += per_step[step]
        total += sum(len(b) for b in per_step[step])
        sizes[step] = total
    return b"".join(chunks), sizes


def _bytes_at(sizes: dict[int, int], header: int, step: int) -> int:
    return max((b for s, b in sizes.items() if s <= step), default=header)


def _prepare_out(out: RunDir, marker: dict) -> bool:
    """A new directory (False), or a stopped merge of the same slices, to continue (True);
    refuse anything else."""
    if out.path.exists():
        try:
            previous = json.loads((out.path / MARKER).read_text())
        except (OSError, ValueError):
            previous = None
        if previous != marker or out.is_run():
            raise RunDirError(f"{out.path}: exists; merge writes a new run directory and never into one it did not "
                              f"create (or has finished); choose another --out")
        return True
    out.create()
    return False


def _size(paths) -> int:
    return sum(f.stat().st_size for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())


def merge_runs(dirs: list[str | Path], out: str | Path) -> RunDir:
    """Check the slices, then write the merged run `out` (config.json last: until then it is no run)."""
    if len(dirs) < 1:
        raise RunDirError("merge: give the slice directories, e.g. induction-jax merge runs/s0 runs/s1 --out runs/all")
    cfg, whole, slices = read_slices(dirs)
    out = RunDir(Path(out))
    marker = {"kind": "induction-jax merge", "spec_digest": slices[0][1]["spec_digest"],
              "slices": [str(run.path.resolve()) for run, _, _ in slices]}
    with contextlib.ExitStack() as locks:
        for run, _, _ in slices:          # no slice changes while it is read
            locks.enter_context(run.lock())
        continuing = _prepare_out(out, marker)
        locks.enter_context(out.lock())
        write_json_atomic(out.output(MARKER), marker)
        ckpt_steps = sorted(set.intersection(*(set(_ckpt_steps(run)) for run, _, _ in slices)))
        snap_steps = sorted(set.intersection(*(set(snapshots.steps(run)) for run, _, _ in slices)))
        have_ckpt = set(_ckpt_steps(out)) if continuing and out.checkpoints.is_dir() else set()
        have_snap = set(snapshots.steps(out)) if continuing else set()
        todo_ckpt = [s for s in ckpt_steps if s not in have_ckpt]
        todo_snap = [s for s in snap_steps if s not in have_snap]
        to_read = _size([run.checkpoints / str(s) for run, _, _ in slices for s in todo_ckpt]
                        + [snapshots.path(run, s) for run, _, _ in slices for s in todo_snap])
        logs = tracking.backends(cfg.track.log)
        _log(f"merge: {len(slices)} slices, {len(whole)} members -> {out.path}: metrics, "
             f"{len(ckpt_steps)} checkpoint(s), {len(snap_steps)} snapshot(s)"
             + (f", then the metrics into {'+'.join(logs)}" if logs else "")
             + (f"; continuing a stopped merge ({len(have_ckpt)} checkpoint(s), {len(have_snap)} snapshot(s) "
                f"already there)" if continuing else "")
             + f"; {to_read / 2**20:.1f} MiB to read and write (the time left follows the first of them)")
        stopped = f"the merge into {out.path} stopped; run the same command again to continue it"
        firsts = [shard["first"] for _, shard, _ in slices]
        sizes = {}
        for name in ("metrics.csv", "head_metrics.csv"):
            paths = [run.path / name for run, _, _ in slices]
            if all(p.is_file() for p in paths):
                data, by_step = merge_table(paths, firsts)
                write_text_atomic(out.output(name), data)
                sizes[name.removesuffix(".csv")] = (by_step, len(data.split(b"\n", 1)[0]) + 1)
        signals.check(stopped)
        state = None
        bar = ProgressBar(len(todo_ckpt) + len(todo_snap), stream=sys.stderr, log_every=5.0, metric=None,
                          name="merge", unit="items")
        with Checkpoints(out.owned_dir("checkpoints"), max_to_keep=cfg.train.keep_checkpoints,
                         async_save=False) as ckpt:
            for step in todo_ckpt:
                state, meta = _merged_state(cfg, slices, step)
                table_bytes = {name: _bytes_at(by_step, header, step) for name, (by_step, header) in sizes.items()}
                ckpt.save(step, state, {"step": step, "table_bytes": table_bytes, "version": meta["version"],
                                        "config": meta["config"], "members": whole.table()})
                bar.update(bar.done + 1)
                signals.check(stopped)
            if ckpt_steps and ckpt_steps[-1] in have_ckpt:     # continued after the last one was written
                state, _ = ckpt.restore_state(ckpt_steps[-1], ensemble.abstract_state(cfg, whole))
                state = jax.tree.map(np.asarray, jax.device_get(state))
        for step in todo_snap:
            parts = [snapshots.load(run, [step])[1] for run, _, _ in slices]
            snapshots.save(out, step, {name: np.concatenate([p[name][0] for p in parts]) for name in parts[0]})
            bar.update(bar.done + 1)
            signals.check(stopped)
        bar.close()
        if logs:
            _log(f"merge: metrics.csv into {'+'.join(logs)} (the merged run's own, as one run of the ensemble)")
            tracking.log_table(cfg, out, whole)
            signals.check(stopped)
        first_meta = slices[0][0].read_meta()
        out.write_config(cfg, whole, {"jax_version": jax.__version__, "device": first_meta.get("device"),
                                      "snapshot_steps": first_meta.get("snapshot_steps", cfg.train.snapshot_steps),
                                      "merged_from": [{"path": str(run.path), "index": shard["index"],
                                                       "count": shard["count"]} for run, shard, _ in slices]})
        return finish_run(cfg, out, whole, state)


def _ckpt_steps(run: RunDir) -> list[int]:
    with Checkpoints(run.checkpoints, async_save=False) as ckpt:
        return ckpt.steps()


def _merged_state(cfg: RunConfig, slices, step: int):
    """The slices' states at `step`, concatenated on the member axis (host arrays), and the
    first slice's checkpoint meta."""
    parts, meta = [], None
    for run, _, members in slices:
        with Checkpoints(run.checkpoints, async_save=False) as ckpt:
            state, m = ckpt.restore_state(step, ensemble.abstract_state(cfg, members))
        parts.append(jax.tree.map(np.asarray, jax.device_get(state)))
        meta = meta or m
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts), meta
