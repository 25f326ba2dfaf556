"""`phase_run(RUN_DIR)`: time the phase change in every member and explain its spread; writes
RUN_DIR/phase/ (timings.csv, stats.json, figures) and adds them to the report.

Per curve and member: onset, midpoint, end (interpolated between probe points), peak slope,
logistic fit. Across members, per arm of a sweep: the statistics with the probe interval and
a warning when the spread is not resolved; for a crossed init x data design, the variance
split into init, data and residual shares; the init-time quantities that go with the
midpoint; the survival curve of formation.
"""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats as _scipy_stats

from induction_jax.phase import figures
from induction_jax.phase.detect import TIMINGS, PhaseError, Timing, detect, window_points
from induction_jax.phase.predictors import init_quantities, predictor_table
from induction_jax.phase.stats import MIN_N_MEAN_CI, formation_order, plan_sample_size, resolution, summarize
from induction_jax.phase.survival import censor_at_last_step, kaplan_meier
from induction_jax.phase.variance import crossed_matrix, variance_decomposition
from induction_jax import signals
from induction_jax.metrics import metric_matrix, read_metrics
from induction_jax.progress import ProgressBar, fmt_seconds
from induction_jax.rundir import RunDir, json_safe, write_json_atomic, write_text_atomic

# The curves timed are the task's: its `timing_curves` (probes) and its `step_curve` (the
# training loss of every step: a second estimate of the timing at no cost in probes).
DECOMPOSED = ("onset", "midpoint", "end")
# Smoothing spans in steps, chosen by measurement (experiments/timing_precision.py, docs/studies/phase-timing.md): on
# the default run, wider windows bias every crossing (a 41-step window moved midpoints by +4.8
# steps, onsets by -8) and blur the differences between members, while the probe noise they
# average away is under half a step. The per-step training loss is far noisier per point.
SMOOTH_STEPS = 10
LOSS_SMOOTH_STEPS = 25


def phase_window(run_path: Path, curve: str) -> dict | None:
    """`curve`'s median onset, end and midpoint over the ensemble (values None where every
    member is censored), from `phase/stats.json`; None before `phase` has run."""
    path = Path(run_path) / "phase" / "stats.json"
    if not path.is_file():
        return None
    s = json.loads(path.read_text()).get(curve, {})
    return {k: s.get(k, {}).get("median") for k in ("onset", "end", "midpoint")}


def time_curves(table: dict, task, n_members: int, smooth_steps: float = SMOOTH_STEPS,
                loss_smooth_steps: float = LOSS_SMOOTH_STEPS,
                diverged_step: np.ndarray | None = None) -> dict[str, Timing]:
    """The timings of every curve the task names; members that diverged are censored with that reason."""
    out = {}
    spans = [(c, smooth_steps) for c in task.timing_curves]
    spans += [(task.step_curve, loss_smooth_steps)] if task.step_curve else []
    for name, span in spans:
        if name not in table:
            raise PhaseError(f"metrics.csv has no probe metric {name!r}: this run was trained without "
                             f"in-training probes; retrain with induction-jax >= 0.1")
        if not np.isfinite(table[name]).any():
            raise PhaseError(f"metrics.csv: probe metric {name!r} has no finite value (did every member "
                             f"diverge at once?); nothing to time")
        steps, values = metric_matrix(table, name, n_members)
        interval = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
        timing = detect(steps, values, task.metric(name), window=window_points(interval, span))
        if diverged_step is not None:
            for e in np.flatnonzero(diverged_step >= 0):
                timing.reason[e] = f"diverged at step {diverged_step[e]}"
                timing.censored[e] = True
                for field in TIMINGS:
                    getattr(timing, field)[e] = np.nan
        out[name] = timing
    return out


def _curve_stats(t: Timing, step_curve: str | None, loss_smooth_steps: float = LOSS_SMOOTH_STEPS) -> dict:
    stats = {k: summarize(getattr(t, k)) for k in TIMINGS}
    per_step = loss_smooth_steps if t.metric == step_curve else None     # recorded every step: no probes
    for k in ("onset", "midpoint", "end", "peak_slope"):
        stats[k]["resolution"] = resolution(stats[k], t.probe_interval, per_step)
    return stats | {"probe_interval": t.probe_interval}


def _crossed(members, idx) -> bool:
    try:
        crossed_matrix(members.select(idx).init_seed, members.select(idx).data_seed, np.zeros(len(idx)))
        return True
    except PhaseError:
        return False


class _Decompositions:
    """Says what the variance decompositions will do and how long they should take, shows their
    progress (a bar on a terminal, a line every 5 s in a log) and stops within one of them on a
    signal. Silent with `stream=None` (the library)."""

    def __init__(self, total: int, stream=None):
        self.total, self.done, self.stream, self.tic = total, 0, stream, time.perf_counter()
        self.bar = (ProgressBar(total, stream=stream, log_every=5.0, metric=None, name="phase",
                                unit="decompositions") if stream is not None and total else None)

    def __call__(self) -> None:
        self.done += 1
        if self.bar is not None:
            if self.done == 1 and self.total > 1:
                took = time.perf_counter() - self.tic
                self.bar.close()
                print(f"phase: the first decomposition took {took:.1f} s; the other {self.total - 1} should take "
                      f"about {fmt_seconds(took * (self.total - 1))}", file=self.stream, flush=True)
            self.bar.update(self.done)
            if self.done == self.total:
                self.bar.close()
        signals.check("while phase decomposed the timing variance; nothing was written (run it again)")


def arm_stats(cfg, members, timings: dict[str, Timing], table: dict, idx: np.ndarray, last_step: int,
              predictors: dict | None, tick=lambda: None) -> dict:
    """One arm (members sharing every setting but their seeds): timing, variance shares when
    its seeds are crossed, predictors, survival. `tick()` after each variance decomposition."""
    sub = members.select(idx)
    primary = cfg.task.primary_curve
    ic = timings[primary]
    out = {"members": idx.tolist(), "n": len(idx), "primary_curve": primary,
           "primary_midpoint": summarize(ic.midpoint[idx]), "probe_interval": ic.probe_interval}
    out["primary_midpoint"]["resolution"] = resolution(out["primary_midpoint"], ic.probe_interval)
    # how many members a study of this timing needs, from this arm as a pilot
    out["planning"] = plan_sample_size(ic.midpoint[idx]) | {"timing": f"{primary} midpoint"}
    try:
        crossed_matrix(sub.init_seed, sub.data_seed, np.zeros(len(idx)))
        out["variance"] = {name: {k: _decompose(sub, getattr(t, k)[idx], tick) for k in DECOMPOSED}
                           for name, t in timings.items()}
    except PhaseError as e:
        out["variance"] = None
        out["not_crossed"] = str(e)
    if predictors is not None:
        out["predictors"] = predictor_table({k: v[idx] for k, v in predictors.items()}, ic.midpoint[idx],
                                            sub.init_seed)
    # The survival of 'not yet started': the onset, even of a member that has not finished.
    times, observed = censor_at_last_step(ic.raw_onset[idx], last_step)
    out["survival"] = kaplan_meier(times, observed)
    return out


def _decompose(sub, values: np.ndarray, tick=lambda: None) -> dict:
    init_levels, data_levels, matrix = crossed_matrix(sub.init_seed, sub.data_seed, values)
    out = variance_decomposition(matrix)
    tick()
    return out | {"init_seeds": init_levels.tolist(), "data_seeds": data_levels.tolist(),
                                             "matrix": matrix.tolist()}


CONTROL = "none"


def arm_effects(members, timings: dict[str, Timing], primary: str, circuit: dict | None = None) -> dict | None:
    """Each intervention arm against the control arm ('none'), paired: a treated member is
    compared with the control member of the same init seed, data seed, lr, weight decay and
    task parameters. The midpoint shift of the `primary` curve (treated minus control) over the pairs where both formed,
    with a Student-t 95% CI of the mean (from 2 pairs: 1 degree of freedom, wide but with its
    coverage), the sd of the differences and the pairs a study needs to detect a shift (`plan_sample_size`), and
    how many members of each arm formed the transition (and, after `analyze`, the induction circuit)."""
    arms = list(dict.fromkeys(members.arm))
    if CONTROL not in arms or len(arms) < 2:
        return None
    mid = timings[primary].midpoint
    key = lambda i: (members.init_seed[i], members.data_seed[i], members.lr[i], members.weight_decay[i],  # noqa: E731
                     *(v[i] for v in members.task.values()))
    control = {key(i): i for i in range(len(members)) if members.arm[i] == CONTROL}
    verdicts = None if circuit is None else [r.get("induction_circuit", False) for r in circuit["members"]]
    out = {}
    for arm in arms:
        idx = [i for i in range(len(members)) if members.arm[i] == arm]
        row = {"n": len(idx), "n_timed": int(np.isfinite(mid[idx]).sum())}
        if verdicts is not None:
            row["n_induction_circuit"] = int(sum(verdicts[i] for i in idx))
        if arm != CONTROL:
            pairs = [(i, control[key(i)]) for i in idx if key(i) in control]
            d = np.array([mid[i] - mid[c] for i, c in pairs])
            d = d[np.isfinite(d)]
            row |= {"n_pairs": len(pairs), "n_pairs_timed": int(len(d))}
            if len(d):
                row |= {"mean_shift": float(d.mean()), "median_shift": float(np.median(d)),
                        "ci95_low": None, "ci95_high": None}
            if 0 < len(d) < MIN_N_MEAN_CI:
                row["ci95_note"] = (f"no interval from {len(d)} timed pair(s); a Student-t interval needs at "
                                    f"least {MIN_N_MEAN_CI} (docs/definitions.md)")
            if len(d) >= MIN_N_MEAN_CI:
                h = _scipy_stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
                row |= {"ci95_low": float(d.mean() - h), "ci95_high": float(d.mean() + h),
                        "sd_diff": float(d.std(ddof=1)),
                        "planning": plan_sample_size(np.array([mid[c] for _, c in pairs]), d)}
        out[arm] = row
    return {"control": CONTROL, "timing": f"{primary} midpoint", "arms": out}


def phase_stats(cfg, members, timings: dict[str, Timing], table: dict, last_step: int,
                predictors: dict | None = None, circuit: dict | None = None,
                loss_smooth_steps: float = LOSS_SMOOTH_STEPS, tick=lambda: None) -> dict:
    task = cfg.task
    stats = {name: _curve_stats(t, task.step_curve, loss_smooth_steps) for name, t in timings.items()}
    stats["curves"], stats["primary_curve"], stats["step_curve"] = list(timings), task.primary_curve, task.step_curve
    eval_every = timings[task.primary_curve].probe_interval
    if task.formation_order:
        # By onset and by peak slope as well as by midpoint: a curve that jumps and then creeps up
        # (the previous-token score here) has a late midpoint though it forms with the other.
        earlier, later = task.formation_order
        stats["formation_order"] = {
            k: formation_order(getattr(timings[earlier], k), getattr(timings[later], k), eval_every) | {
                "earlier": earlier, "later": later} for k in ("onset", "peak_slope", "midpoint")}
        lag = timings[task.primary_curve].midpoint - timings[later].midpoint
        finite = lag[np.isfinite(lag)]
        stats["primary_minus_later_midpoint"] = {
            "median": float(np.median(finite)) if len(finite) else None, "n": int(len(finite)),
            "per_member": lag.tolist(), "curves": [task.primary_curve, later]}
    stats["arms"] = {label: arm_stats(cfg, members, timings, table, idx, last_step, predictors, tick)
                     for label, idx in members.arms().items()}
    stats["interventions"] = arm_effects(members, timings, task.primary_curve, circuit)
    return stats


def phase_run(run_dir: str | Path, smooth_steps: float = SMOOTH_STEPS, loss_smooth_steps: float = LOSS_SMOOTH_STEPS,
              variance: bool = False, progress: bool = False, from_step: float = 0.0) -> Path:
    """Time every member of a run. `variance` demands the init x data decomposition (an error
    if no arm of the run is a crossed design); without it, crossed arms get it anyway.
    `progress`: say up front what the decompositions will do, then their progress (stdout).
    `from_step`: time the transitions after this step only (a curve with stages, e.g. a fast
    first rise then a later jump: the curves start there, so s0 is their level at that step;
    the initial-quantity predictors still read the first probe)."""
    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    members = run.members()
    E = len(members)
    if E < 2:
        raise PhaseError(f"{run.path}: has 1 member; timing statistics across members need at least 2 "
                         f"(train with --seeds 2 or more)")
    crossed = [idx for idx in members.arms().values() if _crossed(members, idx)]
    if variance and not crossed:
        idx = next(iter(members.arms().values()))
        try:
            crossed_matrix(members.select(idx).init_seed, members.select(idx).data_seed, np.zeros(len(idx)))
        except PhaseError as e:
            raise PhaseError(f"--variance: not a crossed design ({e}); train with "
                             f"'induction-jax sweep --init-seeds A-B --data-seeds C-D'") from None
    with run.lock():
        run.check_config()
        table = read_metrics(run.metrics_csv)
        last = int(np.nanmax(table["step"])) if len(table["step"]) else 0
        full = table
        if from_step:
            if not 0 < from_step < last:
                raise PhaseError(f"--from-step {from_step:g}: must be a step inside the run; allowed: 0 to "
                                 f"{last - 1} (its last probe is at step {last})")
            keep = table["step"] >= from_step
            table = {k: v[keep] for k, v in table.items()}
        summary = json.loads(run.summary_json.read_text()) if run.summary_json.is_file() else None
        diverged = (np.array([m["diverged_step"] if m["diverged_step"] is not None else -1
                              for m in summary["members"]]) if summary else None)
        timings = time_curves(table, cfg.task, E, smooth_steps, loss_smooth_steps, diverged)
        _, init_primary = metric_matrix(full, cfg.task.primary_curve, E)     # the first probe, whatever from_step
        predictors = init_quantities(cfg, members, init_primary[:, 0])
        out = run.output_dir("phase")
        rows = [r for t in timings.values() for r in t.as_rows(members)]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text_atomic(out / "timings.csv", buf.getvalue())
        circuit_path = run.path / "analysis" / "circuit.json"
        circuit = json.loads(circuit_path.read_text()) if circuit_path.is_file() else None
        n_dec = len(crossed) * len(timings) * len(DECOMPOSED)
        if progress and n_dec:
            print(f"phase: {E} members, {len(timings)} curves timed; the init x data variance decomposition of "
                  f"{n_dec} timings ({len(crossed)} crossed arm(s) x {len(timings)} curves x {len(DECOMPOSED)}: "
                  f"{', '.join(DECOMPOSED)}), each with a bootstrap interval", flush=True)
        tick = _Decompositions(n_dec, sys.stdout if progress else None)
        stats = phase_stats(cfg, members, timings, table, last, predictors, circuit, loss_smooth_steps, tick)
        stats["censored"] = {name: [{"member": e, "reason": t.reason[e]} for e in range(E) if t.censored[e]]
                             for name, t in timings.items()}
        stats["last_step"], stats["steps"] = last, cfg.train.steps
        stats["smooth_steps"], stats["loss_smooth_steps"] = smooth_steps, loss_smooth_steps
        stats["from_step"] = from_step
        figs = write_phase_figures(cfg.task, table, timings, members, stats, out)
        stats["figures"] = [Path(f).stem for f in figs.values()]
        write_json_atomic(out / "stats.json", json_safe(stats))
    return out.path


def write_phase_figures(task, table, timings, members, stats: dict, out) -> dict[str, Path]:
    """The phase figures; their names (file stems) are recorded in stats.json's `figures`."""
    primary = task.primary_curve
    ic = timings[primary]
    E = len(members)
    arms = members.arms()           # a sweep's arms (one group "all" for a plain run): every figure by arm
    # every probe curve the task times, except the earlier part of a formation order (its
    # timing is in the order figure)
    drawn = [c for c in task.timing_curves if not task.formation_order or c != task.formation_order[0]]
    figs = {name: figures.curves_with_marks(timings[name], metric_matrix(table, name, E)[1], out / f"{name}.png",
                                            task.metric(name).unit, arms) for name in drawn}
    figs["midpoint_distribution"] = figures.midpoint_distribution(ic.midpoint, out / "midpoint_distribution.png",
                                                                  groups=arms)
    if task.formation_order:
        earlier, later = task.formation_order
        figs["prev_vs_induction"] = figures.prev_vs_induction(
            timings[earlier].midpoint, timings[later].midpoint, out / "prev_vs_induction.png")
    steps, loss = metric_matrix(table, "loss", E)
    window = None
    if np.isfinite(ic.onset).any():
        window = (float(np.nanmedian(ic.onset)), float(np.nanmedian(ic.end)))
    figs["loss_bump"] = figures.loss_bump(steps, loss, window, out / "loss_bump.png")
    if len(np.unique(members.lr)) > 1:
        groups = {lr: ic.midpoint[members.lr == lr] for lr in np.unique(members.lr)}
        figs["timing_by_lr"] = figures.timing_by_group(groups, out / "timing_by_lr.png", "learning rate")
    if len(arms) > 1:
        figs["timing_by_arm"] = figures.timing_by_group({label: ic.midpoint[idx] for label, idx in arms.items()},
                                                        out / "timing_by_arm.png", "sweep arm")
    last = stats["last_step"]
    groups = {label: censor_at_last_step(ic.raw_onset[idx], last) for label, idx in arms.items()}
    figs["survival"] = figures.survival_and_ecdf(groups, out / "survival.png", f"{primary} onset step")
    for i, (label, arm) in enumerate(stats["arms"].items()):
        suffix = "" if len(arms) == 1 else f"_{i}"
        var = (arm.get("variance") or {}).get(primary, {}).get("midpoint")
        if var is not None:
            figs[f"variance{suffix}"] = figures.variance_heatmap(
                np.asarray(var["matrix"], float), np.asarray(var["init_seeds"]), np.asarray(var["data_seeds"]), var,
                out / f"variance{suffix}.png", f"{primary} midpoint ({label})")
        if arm.get("predictors"):
            figs[f"predictors{suffix}"] = figures.predictors(arm["predictors"]["rows"], out / f"predictors{suffix}.png")
    return figs
