"""`phase_run(RUN_DIR)`: time the phase change in every member, write RUN_DIR/phase/."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from induction_jax.phase import figures
from induction_jax.phase.detect import TIMINGS, PhaseError, Timing, detect
from induction_jax.phase.stats import formation_order, summarize
from induction_jax.metrics import metric_matrix, read_metrics
from induction_jax.rundir import RunDir, json_safe, write_json_atomic, write_text_atomic

CURVES = ("in_context_score", "induction_score", "prev_token_score")


def time_curves(table: dict, n_members: int, window: int = 5) -> dict[str, Timing]:
    out = {}
    for name in CURVES:
        if name not in table:
            raise PhaseError(f"metrics.csv has no probe metric {name!r}: this run was trained without "
                             f"in-training probes; retrain with induction-jax >= 0.1")
        if not np.isfinite(table[name]).any():
            raise PhaseError(f"metrics.csv: probe metric {name!r} has no finite value (did every member "
                             f"diverge at once?); nothing to time")
        steps, values = metric_matrix(table, name, n_members)
        out[name] = detect(steps, values, name, window=window)
    return out


def phase_stats(timings: dict[str, Timing], eval_every: int, members) -> dict:
    stats = {name: {k: summarize(getattr(t, k)) for k in TIMINGS} for name, t in timings.items()}
    # By onset and by peak slope as well as by midpoint: a curve that jumps and then creeps up
    # (the previous-token score here) has a late midpoint though it forms with the other.
    stats["formation_order"] = {
        k: formation_order(getattr(timings["prev_token_score"], k), getattr(timings["induction_score"], k),
                           eval_every) for k in ("onset", "peak_slope", "midpoint")}
    lag = timings["in_context_score"].midpoint - timings["induction_score"].midpoint
    lag = lag[np.isfinite(lag)]
    stats["in_context_minus_induction_midpoint"] = {
        "median": float(np.median(lag)) if len(lag) else None, "n": int(len(lag)),
        "per_member": (timings["in_context_score"].midpoint - timings["induction_score"].midpoint).tolist()}
    lrs = members.lr
    if len(np.unique(lrs)) > 1:
        stats["by_lr"] = {f"{lr:g}": summarize(timings["in_context_score"].midpoint[lrs == lr])
                          for lr in np.unique(lrs)}
    return stats


def phase_run(run_dir: str | Path, window: int = 5) -> Path:
    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    members = run.members()
    E = len(members)
    with run.lock():
        run.check_config()
        table = read_metrics(run.metrics_csv)
        timings = time_curves(table, E, window)
        out = run.output_dir("phase")
        rows = [r for t in timings.values() for r in t.as_rows(members)]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(out / "timings.csv", buf.getvalue())
        stats = phase_stats(timings, cfg.train.eval_every, members)
        stats["censored"] = {name: [{"member": e, "reason": t.reason[e]} for e in range(E) if t.censored[e]]
                             for name, t in timings.items()}
        last = int(np.nanmax(table["step"])) if len(table["step"]) else 0
        stats["last_step"], stats["steps"] = last, cfg.train.steps
        write_json_atomic(out / "stats.json", json_safe(stats))
        write_phase_figures(run, table, timings, members, out)
        from induction_jax.analysis.report import write_report
        write_report(run)
    return out.path


def write_phase_figures(run: RunDir, table, timings, members, out) -> dict[str, Path]:
    ic = timings["in_context_score"]
    E = len(members)
    figs = {
        "in_context_score": figures.curves_with_marks(
            ic, metric_matrix(table, "in_context_score", E)[1], out / "in_context_score.png", "nats"),
        "induction_score": figures.curves_with_marks(
            timings["induction_score"], metric_matrix(table, "induction_score", E)[1],
            out / "induction_score.png", "attention"),
        "midpoint_distribution": figures.midpoint_distribution(ic.midpoint, out / "midpoint_distribution.png"),
        "prev_vs_induction": figures.prev_vs_induction(
            timings["prev_token_score"].midpoint, timings["induction_score"].midpoint,
            out / "prev_vs_induction.png"),
    }
    steps, loss = metric_matrix(table, "loss", E)
    window = None
    if np.isfinite(ic.onset).any():
        window = (float(np.nanmedian(ic.onset)), float(np.nanmedian(ic.end)))
    figs["loss_bump"] = figures.loss_bump(steps, loss, window, out / "loss_bump.png")
    lrs = members.lr
    if len(np.unique(lrs)) > 1:
        groups = {lr: ic.midpoint[lrs == lr] for lr in np.unique(lrs)}
        figs["timing_by_lr"] = figures.timing_by_group(groups, out / "timing_by_lr.png", "learning rate")
    return figs

