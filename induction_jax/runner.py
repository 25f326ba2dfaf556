"""`train_run(cfg, out)` and `resume_run(out)`: train an ensemble and write a run directory.

Everything that can be refused (config, devices, memory) is checked before the directory is
touched; the directory is then locked for this process alone. Checkpoints (async Orbax saves
of the whole stacked state, the first at step 0) record how many bytes of metrics.csv belonged
to them and the config they were trained with, so a resume truncates the table to exactly that
point, refuses a config.json edited since, and re-computes the rest: a resumed run ends with
the numbers of an uninterrupted one. SIGINT / SIGTERM stop the run between chunks with a
checkpoint and a message on how to resume.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

from induction_jax import (__version__, distributed, ensemble, interventions, memory, plots, shards, signals, snapshots,
                           tracking)
from induction_jax.checkpoint import CheckpointError, Checkpoints, restore_latest_good
from induction_jax.config import RunConfig
from induction_jax.members import Members
from induction_jax.metrics import NullTables, RunTables, metric_matrix, read_curves, read_metrics
from induction_jax.probes import weight_probes_apply
from induction_jax.progress import ProgressBar
from induction_jax.rundir import RESUMABLE_CHANGES, RunDir, RunDirError, json_safe, write_json_atomic
from induction_jax.training import divergence_limit, shared_arrays

FINAL_WINDOW = 50   # steps averaged into the summary's final losses


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def device_description() -> dict:
    devices = jax.devices()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "device_count": len(devices), "process_count": jax.process_count()}


def summarize(cfg: RunConfig, members: Members, table: dict, diverged_step: np.ndarray) -> dict:
    """Per member: losses averaged over the last FINAL_WINDOW logged steps, last probes, divergence."""
    E = len(members)
    rows = [{"member": i, "label": members.label(i), **{k: v[i] for k, v in members.table().items()},
             "diverged_step": int(diverged_step[i]) if diverged_step[i] >= 0 else None} for i in range(E)]
    step_metrics = cfg.task.step_metric_names()
    for k in step_metrics + cfg.task.probe_metric_names():
        window = FINAL_WINDOW if k in step_metrics else 1
        _, values = metric_matrix(table, k, E)
        for i, row in enumerate(rows):
            v = values[i][np.isfinite(values[i])][-window:]
            row[f"final_{k}"] = float(v.mean()) if len(v) else None
    diverged = [r["member"] for r in rows if r["diverged_step"] is not None]
    return {"steps": int(cfg.train.steps), "final_window_steps": min(FINAL_WINDOW, int(cfg.train.steps)),
            "n_members": E, "n_diverged": len(diverged), "diverged_members": diverged,
            "divergence_rule": f"training loss not finite or above {cfg.train.divergence_loss:g} x ln V = "
                               f"{divergence_limit(cfg):.1f} nats",
            "members": rows}


def _plan(cfg: RunConfig, members: Members) -> tuple[list, int]:
    """Devices and member-group size, or a one-line ResourceError: before anything is written."""
    devices = ensemble.select_devices(cfg.train.devices)
    ensemble.ensemble_sharding(len(members), devices)
    interventions.build(members.arm, cfg)          # every arm parses for this model and run length
    shared_arrays(cfg)                             # the task's shared inputs (a corpus) load, or are refused
    tracking.check_available(cfg.track.log)
    group = memory.plan_groups(cfg, len(members), devices, log=_log, measured=ensemble.measured_member_bytes)
    return devices, group


def _checkpoint_meta(cfg: RunConfig, members: Members, step: int, tables) -> dict:
    return {"step": step, "table_bytes": tables.sizes(), "version": __version__, "config": cfg.to_dict(),
            "members": members.table()}


def _snapshot(run: RunDir, state, step: int) -> None:
    """Every process gathers the params (a collective); process 0 writes the file."""
    params = distributed.host_copy(state.params)
    if distributed.is_writer():
        snapshots.save(run, step, params)


def _train_loop(cfg: RunConfig, run: RunDir, ckpt: Checkpoints, members: Members, state, start: int,
                tables, progress: bool, group: int):
    """Train from `start`, checkpointing every `checkpoint_every` steps and on a signal, and
    taking the snapshots of the schedule."""
    t = cfg.train
    bar = ProgressBar(t.steps, start=start, members=len(members), metric=cfg.task.progress_metric) if progress else None
    snapshot_steps = set(t.snapshot_steps)
    stops = [s for s in range((start // t.checkpoint_every + 1) * t.checkpoint_every, t.steps, t.checkpoint_every)]
    stops += [s for s in snapshot_steps if s > start]

    def save(state, step: int) -> None:
        ckpt.save(step, state, _checkpoint_meta(cfg, members, step, tables))

    def on_chunk(state, result: ensemble.ChunkResult) -> None:
        tables.write(result)
        step = int(result.steps[-1])
        if step in snapshot_steps:
            _snapshot(run, state, step)
        if bar is not None:
            bar.update(step, float(np.nanmean(result.metrics[cfg.task.progress_metric][:, -1])))
        if step % t.checkpoint_every == 0 or step == t.steps:
            save(state, step)
        if signals.caught() is not None and step < t.steps:
            if step not in ckpt.steps():
                save(state, step)
            ckpt.wait()
            if bar is not None:
                bar.close()
            signals.check(f"at step {step} of {t.steps}; checkpoint saved. Resume with: induction-jax train "
                          f"--resume {run.path}")

    state = ensemble.train(cfg, state, start, on_chunk, group=group, stops=stops,
                           on_compile=bar.compiling if bar is not None else None)
    if bar is not None:
        bar.close()
    return state


def _tables(cfg: RunConfig, run: RunDir, members: Members, truncate_to: dict | None = None):
    """The tables (a resumed run's cut back to its checkpoint `truncate_to`), with the trackers attached."""
    if not distributed.is_writer():
        return NullTables()
    tables = RunTables(run, cfg.task, members, heads=weight_probes_apply(cfg) or bool(cfg.task.head_probe_metrics),
                       append=truncate_to is not None)
    if truncate_to is not None:
        tables.truncate(truncate_to)
    tables.attach(tracking.open_trackers(cfg, run, members))
    return tables


def finish_run(cfg: RunConfig, run: RunDir, members: Members, state) -> RunDir:
    """summary.json and plots/loss.png from metrics.csv and the final state (training's end, or a merge's)."""
    diverged = ensemble.diverged_steps(state)
    distributed.barrier("finish")
    if not distributed.is_writer():
        return run
    table = read_metrics(run.metrics_csv)
    write_json_atomic(run.output("summary.json"), json_safe(summarize(cfg, members, table, diverged)))
    E = len(members)
    curves = {name: metric_matrix(table, name, E) for name in cfg.task.plot_metrics}
    steps = next(iter(curves.values()))[0]
    plots.loss_plot(steps, {name: values for name, (_, values) in curves.items()}, cfg.model.d_vocab,
                    run.output("plots/loss.png"))
    if cfg.task.curve_probe_metrics and run.path.joinpath("curve_metrics.csv").is_file():
        for name, (_, step, positions, values) in read_curves(run.path / "curve_metrics.csv").items():
            at = np.unique(step)
            mean = np.stack([values[step == s].mean(0) for s in at])          # over the members
            plots.curve_plot(positions, at, mean, run.output(f"plots/{name}.png"), name, E)
    return run


def _writer_lock(run: RunDir):
    """Process 0 writes the run directory and holds its lock; the others write only checkpoints."""
    import contextlib

    return run.lock() if distributed.is_writer() else contextlib.nullcontext(run)


def train_run(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, members: Members | None = None,
              progress: bool = True, shard: tuple[int, int] | None = None) -> RunDir:
    """Train `members` (default: the config's seeds) and write the run directory `out`; with
    `shard=(I, N)`, only slice I of N of them, recorded as such (`shards.py`)."""
    run = RunDir(Path(out))
    members = members or Members.from_config(cfg)
    slice_record = None
    if shard is not None:
        slice_record = shards.record(cfg, members, *shard)
        members, _ = shards.select(members, *shard)
    # What cannot work fails before anything is written (it compiles the step to measure it: interruptible).
    devices, group = signals.run(_plan, cfg, members, what="before training started; nothing was written")
    if distributed.is_writer():
        run.create()
    with _writer_lock(run):
        if distributed.is_writer():
            kept = run.prepare_new(overwrite)
            if kept:
                _log(f"induction-jax: --overwrite kept {len(kept)} file(s) it did not write: {', '.join(kept[:5])}")
            described = snapshots.describe(cfg, len(members))   # after the lock: a refused writer says one line
            if described:
                _log(described)
        distributed.barrier("prepared")
        if distributed.is_writer():
            run.write_config(cfg, members, {"jax_version": jax.__version__, "device": device_description(),
                                            "snapshot_steps": cfg.train.snapshot_steps})
            if slice_record is not None:
                shards.write(run, slice_record)
        signals.check(f"before training started; {run.path} holds only its config: start again with --overwrite")
        ensemble.enable_compilation_cache()
        state = ensemble.init_ensemble(cfg, members, devices, group)
        tables = _tables(cfg, run, members)
        failed = True
        try:                                # the trackers' files and runs are closed whatever happens
            tables.write(ensemble.initial_probe(cfg, state, group))
            if 0 in cfg.train.snapshot_steps:
                _snapshot(run, state, 0)
            with Checkpoints(run.owned_dir("checkpoints"), max_to_keep=cfg.train.keep_checkpoints) as ckpt:
                ckpt.save(0, state, _checkpoint_meta(cfg, members, 0, tables))
                if signals.caught() is not None:
                    ckpt.wait()
                    signals.check(f"at step 0 of {cfg.train.steps}; checkpoint saved. Resume with: induction-jax "
                                  f"train --resume {run.path}")
                state = _train_loop(cfg, run, ckpt, members, state, 0, tables, progress, group)
            failed = False
        finally:
            tables.close(failed)
        return finish_run(cfg, run, members, state)


def check_resume_overrides(cfg: RunConfig, overrides: dict) -> RunConfig:
    """A resumed run keeps its config; only RESUMABLE_CHANGES may differ."""
    flat = {k: v for section in cfg.to_dict().values() for k, v in section.items()}
    for key, value in overrides.items():
        if key not in RESUMABLE_CHANGES and flat[key] != value:
            raise RunDirError(f"--{key.replace('_', '-')} {value}: differs from the run's {key}={flat[key]}; a "
                              f"resumed run keeps its config (may change: {', '.join(RESUMABLE_CHANGES)})")
    return cfg.replace(**{k: v for k, v in overrides.items() if k in RESUMABLE_CHANGES})


def _check_snapshots(run: RunDir, schedule: list[int], start: int) -> list[int]:
    """Verify the snapshots a resume keeps (at or before its checkpoint `start`): each damaged one
    is moved aside to RUN_DIR/snapshots_broken/ with a one-line message. Returns the scheduled
    steps up to `start` that have no good file now (to re-make)."""
    bad = snapshots.verify(run, start)
    distributed.barrier("snapshots verified")
    if distributed.is_writer():
        for step, reason in bad.items():
            _log(f"induction-jax: {reason}; moved it to {snapshots.move_aside(run, step)}")
    have = set(snapshots.steps(run)) - set(bad)
    return [s for s in schedule if s <= start and s not in have]


class _Remade(Exception):
    """Ends a re-training once it has written its last snapshot."""


def _remake_snapshots(cfg: RunConfig, run: RunDir, ckpt: Checkpoints, restore, todo: list[int], start: int,
                      group: int, place) -> list[int]:
    """Re-make the snapshots `todo` (steps at or before the resume checkpoint `start`): one at a
    checkpoint's step from that checkpoint, one between checkpoints by re-training from the
    latest kept checkpoint before it (bitwise what training wrote: training is deterministic
    whatever the chunking). Tables, checkpoints and the other snapshots are not touched; one
    state is in memory at a time. Returns the steps that stay missing."""
    kept = [c for c in ckpt.steps() if c <= start]
    todo, made, lost = sorted(todo), [], []
    while todo:
        base = max((c for c in kept if c <= todo[0]), default=None)
        if base is None:
            lost.append(todo.pop(0))
            continue
        end = min((c for c in kept if c > base), default=start + 1)
        batch = [s for s in todo if s < end]
        try:
            state, _ = restore(base)
        except CheckpointError as e:
            if distributed.is_writer():
                _log(f"induction-jax: checkpoint step {base} cannot be used to re-make snapshots: {e}")
            kept.remove(base)
            continue
        state = place(state)
        if base in batch:
            _snapshot(run, state, base)
            made.append(base)
        rest = [s for s in batch if s > base]
        if rest:
            if distributed.is_writer():
                _log(f"induction-jax: re-training from checkpoint step {base} to step {rest[-1]} to re-make "
                     f"snapshot step{'s' if len(rest) > 1 else ''} {', '.join(map(str, rest))}")

            def on_chunk(state, result: ensemble.ChunkResult) -> None:
                step = int(result.steps[-1])
                if step in rest:
                    _snapshot(run, state, step)
                    made.append(step)
                if step >= rest[-1]:
                    raise _Remade
                signals.check(f"at step {step} while re-making snapshots; the run's checkpoints are as they were. "
                              f"Resume with: induction-jax train --resume {run.path}")

            try:
                ensemble.train(cfg, state, base, on_chunk, group=group, stops=rest)
            except _Remade:
                pass
        del state
        lost += [s for s in batch if s not in made]
        todo = [s for s in todo if s not in batch]
    if distributed.is_writer() and made:
        _log(f"induction-jax: re-made snapshot step{'s' if len(made) > 1 else ''} {', '.join(map(str, made))} "
             f"from the checkpoints")
    if distributed.is_writer() and lost:
        _log(f"induction-jax: snapshot step{'s' if len(lost) > 1 else ''} {', '.join(map(str, lost))} "
             f"{'are' if len(lost) > 1 else 'is'} missing and cannot be re-made (no good checkpoint at or before "
             f"{'them' if len(lost) > 1 else 'it'}; kept: {', '.join(map(str, kept)) or 'none'}): "
             f"{'they stay' if len(lost) > 1 else 'it stays'} missing, recorded in config.json (snapshots_missing)")
    return lost


def resume_run(out: str | Path, overrides: dict | None = None, progress: bool = True) -> RunDir:
    """Continue a run from its latest good checkpoint (falling back past broken ones)."""
    run = RunDir(Path(out))
    cfg = check_resume_overrides(run.read_config(), overrides or {})
    # the task's input files (a corpus) as they were when the run started, before anything is
    # touched: compiled programs this process already holds would not read them again
    cfg.task.verify_inputs()
    members = run.members()
    devices, group = _plan(cfg, members)
    with _writer_lock(run):
        if not run.checkpoints.is_dir():
            raise RunDirError(f"{run.path}: no checkpoints/ to resume from")
        if distributed.is_writer() and not run.metrics_csv.is_file():
            raise RunDirError(f"{run.metrics_csv}: missing; a resumed run would lack the rows up to its "
                              f"checkpoint. Restore the file or start a new run")
        ensemble.enable_compilation_cache()
        template = ensemble.abstract_state(cfg, members)

        def restore(step: int):
            run.check_trained_with(ckpt.read_meta(step), may_differ=RESUMABLE_CHANGES)
            return ckpt.restore_state(step, template)

        with Checkpoints(run.checkpoints, max_to_keep=cfg.train.keep_checkpoints) as ckpt:
            state, ckpt_meta = restore_latest_good(ckpt, run.path, restore)
            start = int(ckpt_meta["step"])
            if start >= cfg.train.steps:
                raise RunDirError(f"{run.path}: already trained to step {start}; pass --steps N with N > {start} "
                                  f"to train further")

            def place(state):
                if group >= len(members):
                    return jax.device_put(state, ensemble.ensemble_sharding(len(members), devices))
                return jax.device_get(state)

            schedule = snapshots.resume_schedule(run, cfg, start, ckpt_meta)
            todo, lost = _check_snapshots(run, schedule, start), []
            if todo:
                del state                       # one state in memory at a time
                lost = _remake_snapshots(cfg, run, ckpt, restore, todo, start, group, place)
                state, _ = restore(start)
            state = place(state)
            tables = _tables(cfg, run, members, truncate_to=ckpt_meta["table_bytes"])
            failed = True
            try:
                if distributed.is_writer():
                    snapshots.drop_after(run, start)
                    run.write_config(cfg, members, {"jax_version": jax.__version__, "device": device_description(),
                                                    "resumed_from_step": start, "snapshot_steps": schedule,
                                                    **({"snapshots_missing": lost} if lost else {})})
                state = _train_loop(cfg, run, ckpt, members, state, start, tables, progress, group)
                failed = False
            finally:
                tables.close(failed)
        return finish_run(cfg, run, members, state)


def train_or_resume(cfg: RunConfig, out: str | Path, *, overwrite: bool = False, members: Members | None = None,
                    progress: bool = True) -> RunDir:
    """What a study script wants: train `out` if it is not a run yet (or `overwrite`), resume it if
    an earlier attempt was interrupted before `cfg`'s last step, and leave a finished run alone.
    A run trained with a different config or members is refused, never reused silently."""
    run = RunDir(Path(out))
    if overwrite or not run.is_run():
        return train_run(cfg, out, overwrite=overwrite, members=members, progress=progress)
    have = run.read_config()
    wanted = members or Members.from_config(cfg)
    # compared as config.json records it: a task may fill in what it records (a corpus' digest)
    if have.replace(steps=cfg.train.steps) != RunConfig.from_dict(cfg.to_dict()) or \
            run.members().table() != wanted.table():
        raise RunDirError(f"{run.path}: holds a run with another config or members; pass --overwrite to retrain "
                          f"it, or another --out")
    with Checkpoints(run.checkpoints, async_save=False) as ckpt:
        done = max(ckpt.steps(), default=0)
    if done >= cfg.train.steps and (run.path / "summary.json").is_file():
        return run
    _log(f"{run.path}: trained to step {done} of {cfg.train.steps}; resuming")
    return resume_run(out, {"steps": cfg.train.steps}, progress=progress)

