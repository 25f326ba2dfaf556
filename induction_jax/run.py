"""`train_run(cfg, out)` and `resume_run(out)`: train an ensemble and write a run directory.

Checkpoints (async Orbax saves of the whole stacked state) record how many bytes of
metrics.csv belonged to them, so a resume truncates the table to exactly that point and
re-computes the rest: a resumed run ends with the numbers of an uninterrupted one.
SIGINT / SIGTERM are caught between chunks: the state is checkpointed and the process
exits with a message on how to resume.
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import jax
import numpy as np

from induction_jax import __version__, distributed, ensemble, plots
from induction_jax.checkpoint import Checkpoints
from induction_jax.config import RunConfig
from induction_jax.probes import PROBE_METRICS
from induction_jax.progress import ProgressBar
from induction_jax.rundir import (MetricsWriter, RunDir, RunDirError, chunk_rows, metric_matrix, read_metrics,
                                  write_json_atomic)
from induction_jax.train import STEP_METRICS

# Fields a resumed run may change; everything else must match the run's own config.
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "keep_checkpoints")


class Interrupted(RuntimeError):
    """Training stopped by a signal after a checkpoint; the message says how to resume."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


def device_description() -> dict:
    devices = jax.devices()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "device_count": len(devices), "process_count": jax.process_count()}


FINAL_WINDOW = 50   # steps averaged into the summary's final losses


def summarize(cfg: RunConfig, members: dict, table: dict, diverged_step: np.ndarray) -> dict:
    """Per member: losses averaged over the last FINAL_WINDOW logged steps, last probes, divergence."""
    E = len(members["seed"])
    rows = []
    for i in range(E):
        row = {"member": i, "seed": int(members["seed"][i]), "lr": float(members["lr"][i]),
               "weight_decay": float(members["weight_decay"][i]),
               "diverged_step": int(diverged_step[i]) if diverged_step[i] >= 0 else None}
        rows.append(row)
    for k in STEP_METRICS + PROBE_METRICS:
        window = FINAL_WINDOW if k in STEP_METRICS else 1
        _, values = metric_matrix(table, k, E)
        for i, row in enumerate(rows):
            v = values[i][np.isfinite(values[i])][-window:]
            row[f"final_{k}"] = float(v.mean()) if len(v) else None
    diverged = [r["member"] for r in rows if r["diverged_step"] is not None]
    return {"steps": int(cfg.train.steps), "final_window_steps": min(FINAL_WINDOW, int(cfg.train.steps)),
            "n_members": E, "n_diverged": len(diverged), "diverged_members": diverged,
            "diverged_seeds": [rows[i]["seed"] for i in diverged], "members": rows}


@contextmanager
def _catch_signals():
    """Turn SIGINT / SIGTERM into a flag checked between chunks (the chunk in flight finishes)."""
    caught: list[int] = []
    handler = lambda signum, frame: caught.append(signum)  # noqa: E731
    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _plan_groups(cfg: RunConfig, members: dict) -> int:
    return ensemble.plan_groups(cfg, len(members["seed"]), ensemble.select_devices(cfg.train.devices),
                                log=lambda m: print(m, file=sys.stderr))


def _train_loop(cfg: RunConfig, run: RunDir, members: dict, state, start: int, writer: MetricsWriter,
                progress: bool, group: int):
    """Train from `start`, checkpointing every `checkpoint_every` steps and on a signal."""
    t = cfg.train
    bar = ProgressBar(t.steps, start=start, members=len(members["seed"])) if progress else None
    next_ckpt = (start // t.checkpoint_every + 1) * t.checkpoint_every
    with Checkpoints(run.checkpoints, max_to_keep=t.keep_checkpoints) as ckpt, _catch_signals() as caught:

        def save(state, step: int) -> None:
            ckpt.save(step, state, {"step": step, "metrics_bytes": writer.size(), "version": __version__})

        def on_chunk(state, result: ensemble.ChunkResult) -> None:
            nonlocal next_ckpt
            writer.write(chunk_rows(members, result.steps, result.metrics, result.probe_steps, result.probes,
                                    result.diverged_step))
            step = int(result.steps[-1])
            if bar is not None:
                bar.update(step, float(np.nanmean(result.metrics["loss_second_half"][:, -1])))
            if step >= next_ckpt or step == t.steps:
                save(state, step)
                next_ckpt = (step // t.checkpoint_every + 1) * t.checkpoint_every
            if caught and step < t.steps:
                if step not in ckpt.steps():
                    save(state, step)
                ckpt.wait()
                if bar is not None:
                    bar.close()
                name = signal.Signals(caught[0]).name
                raise Interrupted(f"interrupted by {name} at step {step} of {t.steps}; checkpoint saved. "
                                  f"Resume with: induction-jax train --resume {run.path}", caught[0])

        state = ensemble.train(cfg, state, start, on_chunk, group=group)
        if bar is not None:
            bar.close()
    return state


class NullWriter:
    """What processes other than process 0 hold instead of the metrics file."""

    def write(self, table) -> None:
        pass

    def size(self) -> int:
        return 0

    def truncate(self, n_bytes: int) -> None:
        pass


def _writer(run: RunDir, append: bool = False):
    return MetricsWriter(run.metrics_csv, append) if distributed.is_writer() else NullWriter()


def _finish(cfg: RunConfig, run: RunDir, members: dict, state) -> RunDir:
    diverged = ensemble.diverged_steps(state)
    distributed.barrier("finish")
    if not distributed.is_writer():
        return run
    table = read_metrics(run.metrics_csv)
    write_json_atomic(run.summary_json, summarize(cfg, members, table, diverged))
    E = len(members["seed"])
    steps, first = metric_matrix(table, "loss_first_half", E)
    _, second = metric_matrix(table, "loss_second_half", E)
    plots.loss_plot(steps, {"loss_first_half": first, "loss_second_half": second}, cfg.model.d_vocab,
                    run.plots / "loss.png")
    return run


def train_run(cfg: RunConfig, out: str | Path, *, overwrite: bool = False,
              members: ensemble.Members | None = None, progress: bool = True) -> RunDir:
    """Train `members` (default: the config's seeds) and write the run directory `out`."""
    run = RunDir(Path(out))
    devices = ensemble.select_devices(cfg.train.devices)   # a device count that cannot work fails first
    members = members or ensemble.Members.from_config(cfg)
    ensemble.ensemble_sharding(len(members), devices)
    table = members.table()
    group = _plan_groups(cfg, table)            # a member group that cannot work fails before writing
    if distributed.is_writer():
        run.prepare_new(overwrite)
    distributed.barrier("prepared")
    if distributed.is_writer():
        run.write_config(cfg, table, {"jax_version": jax.__version__, "device": device_description()})
    ensemble.enable_compilation_cache()
    state = ensemble.init_ensemble(cfg, members, devices)
    writer = _writer(run)
    init = ensemble.initial_probe(cfg, state, group)
    writer.write(chunk_rows(table, init.steps, init.metrics, init.probe_steps, init.probes, init.diverged_step))
    state = _train_loop(cfg, run, table, state, 0, writer, progress, group)
    return _finish(cfg, run, table, state)


def check_resume_overrides(cfg: RunConfig, overrides: dict) -> RunConfig:
    """A resumed run keeps its config; only RESUMABLE_CHANGES may differ."""
    flat = {k: v for section in cfg.to_dict().values() for k, v in section.items()}
    for key, value in overrides.items():
        if key not in RESUMABLE_CHANGES and flat[key] != value:
            raise RunDirError(f"--{key.replace('_', '-')} {value}: differs from the run's {key}={flat[key]}; a "
                              f"resumed run keeps its config (may change: {', '.join(RESUMABLE_CHANGES)})")
    return cfg.replace(**{k: v for k, v in overrides.items() if k in RESUMABLE_CHANGES})


def resume_run(out: str | Path, overrides: dict | None = None, progress: bool = True) -> RunDir:
    """Continue a run from its latest readable checkpoint (falling back past broken ones)."""
    run = RunDir(Path(out))
    meta = run.read_meta()
    if str(meta.get("version", "")).split(".")[:1] != __version__.split(".")[:1]:
        raise RunDirError(f"{run.path}: written by induction-jax {meta.get('version')}, which this version "
                          f"({__version__}) cannot resume; allowed: {__version__.split('.')[0]}.x")
    cfg = check_resume_overrides(run.read_config(), overrides or {})
    table = run.members()
    members = ensemble.Members(np.asarray(table["seed"]), np.asarray(table["lr"]),
                               np.asarray(table["weight_decay"]))
    ensemble.enable_compilation_cache()
    template = jax.eval_shape(lambda: ensemble.init_ensemble(cfg, members))
    if not run.checkpoints.is_dir():
        raise RunDirError(f"{run.path}: no checkpoints/ to resume from")
    broken = []
    with Checkpoints(run.checkpoints, max_to_keep=cfg.train.keep_checkpoints) as ckpt:
        steps = ckpt.steps()
        state = ckpt_meta = None
        for step in reversed(steps):
            try:
                state, ckpt_meta = ckpt.restore_state(step, template)
                break
            except Exception as e:  # noqa: BLE001 - any failure to read means "not a good checkpoint"
                print(f"induction-jax: checkpoint step {step} in {run.checkpoints} is unreadable "
                      f"({type(e).__name__}); trying the previous one", file=sys.stderr)
                broken.append(step)
        if state is None:
            raise RunDirError(f"{run.path}: no readable checkpoint (tried steps {steps or 'none'})")
    # Keep broken checkpoints for inspection, out of the way of the steps about to be re-saved.
    for step in broken:
        aside = run.path / "checkpoints_broken"
        aside.mkdir(exist_ok=True)
        (run.checkpoints / str(step)).rename(aside / str(step))
        print(f"induction-jax: moved the unreadable checkpoint to {aside / str(step)}", file=sys.stderr)
    start = int(ckpt_meta["step"])
    if start >= cfg.train.steps:
        raise RunDirError(f"{run.path}: already trained to step {start}; pass --steps N with N > {start} to "
                          f"train further")
    state = jax.device_put(state, ensemble.ensemble_sharding(len(members), ensemble.select_devices(cfg.train.devices)))
    writer = _writer(run, append=True)
    writer.truncate(int(ckpt_meta["metrics_bytes"]))
    if distributed.is_writer():
        run.write_config(cfg, table, {"jax_version": jax.__version__, "device": device_description(),
                                      "resumed_from_step": start})
    state = _train_loop(cfg, run, table, state, start, writer, progress, _plan_groups(cfg, table))
    return _finish(cfg, run, table, state)
