"""`train_run(cfg, out)`: the one entry point that trains an ensemble and writes a run directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from induction_jax import ensemble, plots
from induction_jax.checkpoint import Checkpoints
from induction_jax.config import RunConfig
from induction_jax.progress import ProgressBar
from induction_jax.rundir import MetricsWriter, RunDir, chunk_rows, write_json_atomic
from induction_jax.train import STEP_METRICS


def device_description() -> dict:
    devices = jax.devices()
    return {"platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "device_count": len(devices), "process_count": jax.process_count()}


@dataclass
class History:
    """Per-step metrics `[E, n]` gathered chunk by chunk, for the summary and the plot."""

    steps: list = field(default_factory=list)
    metrics: dict = field(default_factory=lambda: {k: [] for k in STEP_METRICS})

    def add(self, result: ensemble.ChunkResult) -> None:
        if len(result.steps):
            self.steps.append(result.steps)
            for k in STEP_METRICS:
                self.metrics[k].append(result.metrics[k])

    def arrays(self) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return np.concatenate(self.steps), {k: np.concatenate(v, 1) for k, v in self.metrics.items()}


def summarize(cfg: RunConfig, members: ensemble.Members, history: History, last_probes: dict,
              diverged_step: np.ndarray) -> dict:
    """Per member: losses averaged over the last `eval_every` steps, last probes, divergence."""
    steps, m = history.arrays()
    window = min(cfg.train.eval_every, len(steps))
    rows = []
    for i in range(len(members)):
        row = {"member": i, "seed": int(members.seed[i]), "lr": float(members.lr[i]),
               "weight_decay": float(members.weight_decay[i]),
               "diverged_step": int(diverged_step[i]) if diverged_step[i] >= 0 else None}
        for k in STEP_METRICS:
            vals = m[k][i, -window:]
            row[f"final_{k}"] = float(np.mean(vals)) if np.all(np.isfinite(vals)) else None
        for k, v in last_probes.items():
            row[f"final_{k}"] = float(v[i]) if np.isfinite(v[i]) else None
        rows.append(row)
    diverged = [r["member"] for r in rows if r["diverged_step"] is not None]
    return {"steps": int(cfg.train.steps), "final_window_steps": int(window),
            "n_members": len(rows), "n_diverged": len(diverged), "diverged_members": diverged,
            "members": rows}


def train_run(cfg: RunConfig, out: str | Path, *, overwrite: bool = False,
              members: ensemble.Members | None = None, progress: bool = True) -> RunDir:
    """Train `members` (default: the config's seeds) and write the run directory `out`."""
    run = RunDir(Path(out))
    run.prepare_new(overwrite)
    members = members or ensemble.Members.from_config(cfg)
    run.write_config(cfg, members.table(), {"jax_version": jax.__version__,
                                            "device": device_description()})
    state = ensemble.init_ensemble(cfg, members)
    writer = MetricsWriter(run.metrics_csv)
    history = History()
    last_probes: dict = {}
    bar = ProgressBar(cfg.train.steps, members=len(members)) if progress else None

    def on_chunk(state, result: ensemble.ChunkResult) -> None:
        writer.write(chunk_rows(members.table(), result.steps, result.metrics, result.probe_steps,
                                result.probes, result.diverged_step))
        history.add(result)
        last_probes.update({k: v[:, -1] for k, v in result.probes.items()})
        if bar is not None and len(result.steps):
            bar.update(int(result.steps[-1]), float(np.nanmean(result.metrics["loss_second_half"][:, -1])))

    on_chunk(state, ensemble.initial_probe(cfg, state))
    with Checkpoints(run.checkpoints) as ckpt:
        state = ensemble.train(cfg, state, 0, on_chunk)
        if bar is not None:
            bar.close()
        ckpt.save(cfg.train.steps, state, {"step": cfg.train.steps})
    diverged_step = np.asarray(state.diverged_step)
    write_json_atomic(run.summary_json, summarize(cfg, members, history, last_probes, diverged_step))
    steps, losses = history.arrays()
    plots.loss_plot(steps, losses, cfg.model.d_vocab, run.plots / "loss.png")
    return run
