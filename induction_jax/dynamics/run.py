"""`dynamics_run(RUN_DIR)`: the circuit's formation in the weights of every member; writes
RUN_DIR/dynamics/ (trajectories.npz, formation.csv, stats.json, figures, an animation) and
adds a section to the report.

The per-model analysis runs `--batch` models (of the S x E snapshots x members, flattened) a
chunk, each kept under dynamics/chunks/ as it finishes (`chunks`), so an interrupted run
continues where it stopped; the members' events, which need every snapshot, come last."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path


import numpy as np

from induction_jax import chunks, signals, snapshots
from induction_jax.arrays import save_arrays
from induction_jax.dynamics import figures
from induction_jax.dynamics.formation import summarize
from induction_jax.dynamics.trajectories import assemble, model_scores
from induction_jax.phase.run import phase_window
from induction_jax.rundir import RunDir, RunDirError, json_safe, write_json_atomic, write_text_atomic

# Per-head arrays kept in trajectories.npz, `[S, E, ...]`.
KEPT = ("prev_token_score", "induction_score", "positional_prev_token_score", "ov_copying_score",
        "mean_ablation_delta", "k_composition", "q_composition", "v_composition")


def _phase_window(run: RunDir) -> tuple[float, float] | None:
    """The ensemble's phase window (median onset to end of the task's primary curve) if `phase`
    has timed it."""
    medians = phase_window(run.path, run.read_config().task.primary_curve)
    if medians is None or medians["onset"] is None or medians["end"] is None:
        return None
    return medians["onset"], medians["end"]


PROBE_BATCH = 64     # reference sequences per model (`snapshot_analysis`'s default)


def _chunked(run: RunDir, params: dict, steps, period: int, batch: int, what: str) -> dict:
    """`snapshot_analysis`, its per-model part `batch` models a chunk (the slices `analyze_params`
    would take inside one call), each kept as it finishes."""
    S, E = params["W_E"].shape[:2]
    flat = {k: v.reshape(S * E, *v.shape[2:]) for k, v in params.items()}
    n_chunks = -(-S * E // batch)
    models = lambda i: {k: v[i * batch:(i + 1) * batch] for k, v in flat.items()}     # noqa: E731
    settings = {"steps": np.asarray(steps).tolist(), "members": E, "batch": batch, "period": period,
                "probe_batch": PROBE_BATCH}
    store = chunks.ChunkStore(run.path, "dynamics", settings)
    parts = chunks.run_chunks(store, n_chunks, lambda i: model_scores(models(i), period, batch, PROBE_BATCH), models,
                              plan=f"{E} members x {S} snapshots = {S * E} models, {batch} a chunk", what=what)
    return signals.run(assemble, params, parts, period, batch, PROBE_BATCH, what=what)


def dynamics_run(run_dir: str | Path, member: int = 0, batch: int = 32) -> Path:
    """Analyse every snapshot of every member (`batch` models a chunk, kept), time each
    sub-circuit's formation per member, and summarise orders and lags across members."""
    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    members = run.members()
    if not 0 <= member < len(members):
        raise RunDirError(f"--member {member}: out of range; this run has members 0..{len(members) - 1}")
    if batch < 1:
        raise RunDirError(f"--batch {batch}: must be >= 1")
    with run.lock():
        interrupted = (f"during the dynamics analysis; the run is intact and finished chunks are kept: run again "
                       f"'induction-jax dynamics {run.path}' to continue")
        signals.run(run.check_config, what=interrupted)        # Orbax: a second on a busy machine
        steps, params = snapshots.load(run)
        if params["W_E"].shape[1] != len(members):
            raise RunDirError(f"{run.path / snapshots.FOLDER}: snapshots hold {params['W_E'].shape[1]} members, the "
                              f"run has {len(members)}")
        if len(steps) < 3:
            raise RunDirError(f"{run.path / snapshots.FOLDER}: {len(steps)} snapshots; timing a formation needs at "
                              f"least 3 (train with --snapshots log)")
        gap = snapshots.missing(run, cfg)          # scheduled steps with no file: named, not skipped silently
        if gap:
            print(snapshots.missing_message(run, gap, steps.tolist()), file=sys.stderr)
        signals.check(interrupted)
        result = _chunked(run, params, steps, cfg.task.induction_period(cfg.model), batch, interrupted)
        signals.check(interrupted)
        labels = [members.label(e) for e in range(len(members))]
        stats, formed = summarize(steps, result["events"], labels)
        stats |= {"snapshot_steps": steps.tolist(), "events": list(result["events"]),
                  "weight_based_not_applicable": result["not_applicable"], "phase_window": _phase_window(run),
                  "animation_member": member, "final_circuits": result["final_circuits"],
                  "missing_snapshot_steps": gap}
        out = run.output_dir("dynamics")
        save_arrays(out / "trajectories.npz", {"steps": steps, **{f"event_{k}": v for k, v in result["events"].items()},
                                               **{k: result["scores"][k] for k in KEPT if k in result["scores"]}})
        buf = io.StringIO()
        rows = stats["members"]
        fields = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(out / "formation.csv", buf.getvalue())
        write_json_atomic(out / "stats.json", json_safe(stats))
        figures.trajectories(steps, result["events"], formed, stats["phase_window"], out / "trajectories.png")
        figures.order_chart(formed, labels, out / "order.png")
        k = result["scores"].get("k_composition")
        figures.animation(steps, result["patterns"][:, member],
                          None if k is None or k.shape[2] < 2 else k[:, member, 0, :, 1, :], member,
                          out / "animation.gif",
                          cfg.task.induction_period(cfg.model))
    return out.path
