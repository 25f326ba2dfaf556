"""How precisely is each member's phase change timed, and at what cost in training time?

The same ensemble is trained twice with the same seeds (so identically) and probed every 2
steps on two independent probe batches (`probe_seed` 0 and 1; probes never touch training).
Each way of timing a member is then judged by two errors:
- test-retest: the two probe batches time the same member; sd(m_A - m_B) / sqrt(2) is the
  error that comes from the probe batch;
- against the reference (every 2 steps, a 3-point moving average, the mean of both batches):
  the error that comes from sampling the curve more sparsely and from smoothing it.
Their combination, against the spread across members, says whether that spread is resolved
(reliability = 1 - error^2 / spread^2).

Ways compared (the in-context score's timings unless said otherwise): probes every 2, 4, 10
and 20 steps (subsampled from the every-2 record) with moving averages over 0 to 40 steps;
probes concentrated in the transition (every 2 inside the window found by a first pass at 20,
every 20 elsewhere); and the per-step training loss (loss_second_half, no probes), whose two
measurements are its even and odd steps (each with its own batches).

    python experiments/timing_precision.py [--seeds 16] [--steps 600] [--out runs/timing-precision]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from induction_jax import use_cpu_cores
from induction_jax.config import RunConfig
from induction_jax.metrics import metric_matrix, read_metrics
from induction_jax.phase.detect import detect, window_points
from induction_jax.runner import train_or_resume
from induction_jax.rundir import RunDir
from induction_jax.tasks import Repeated

CURVE = "in_context_score"
TIMINGS = ("onset", "midpoint", "end")


def times(steps, values, metric, smooth_steps) -> dict:
    interval = float(np.median(np.diff(steps)))
    t = detect(steps, values, Repeated.metric(metric), window=window_points(interval, smooth_steps))
    return {k: getattr(t, k) for k in TIMINGS}


def judge(a: dict, b: dict, ref: dict | None) -> dict:
    """Test-retest error, error against the reference, and spread, per timing."""
    out = {}
    for k in TIMINGS:
        retest = float(np.nanstd(a[k] - b[k], ddof=1) / np.sqrt(2))
        mean = (a[k] + b[k]) / 2
        row = {"retest_sd": retest, "spread_sd": float(np.nanstd(mean, ddof=1))}
        if ref is not None:
            diff = mean - ref[k]
            total = float(np.sqrt(np.nanvar(diff, ddof=1) + retest ** 2))
            row |= {"bias": float(np.nanmean(diff)), "error_sd": total,
                    "reliability": float(1 - total ** 2 / np.nanvar(ref[k], ddof=1))}
        out[k] = row
    return out


def train_twice(args) -> list[dict]:
    cfg = RunConfig().replace(seeds=args.seeds, steps=args.steps, eval_every=2, chunk_steps=200,
                              checkpoint_every=args.steps)
    tables = []
    for probe_seed in (0, 1):
        out = Path(args.out) / f"probe-seed-{probe_seed}"
        if args.overwrite or not (out / "summary.json").is_file():
            print(f"training {args.seeds} members x {args.steps} steps (probes every 2 steps on probe seed "
                  f"{probe_seed}); about {args.seeds * args.steps / 55 / 60:.0f} min on a 2-core CPU", flush=True)
            tic = time.perf_counter()
            train_or_resume(cfg.replace(probe_seed=probe_seed), out, overwrite=args.overwrite, progress=False)
            print(f"  trained in {time.perf_counter() - tic:.0f} s", flush=True)
        tables.append(read_metrics(RunDir(out).metrics_csv))
    return tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", default="runs/timing-precision")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if the two runs exist")
    args = parser.parse_args()
    use_cpu_cores()
    tables = train_twice(args)
    E = args.seeds
    steps, a = metric_matrix(tables[0], CURVE, E)
    _, b = metric_matrix(tables[1], CURVE, E)
    loss_steps, loss = metric_matrix(tables[0], "loss_second_half", E)
    np.testing.assert_array_equal(loss, metric_matrix(tables[1], "loss_second_half", E)[1])  # same training
    ra, rb = times(steps, a, CURVE, 4), times(steps, b, CURVE, 4)
    ref = {k: (ra[k] + rb[k]) / 2 for k in TIMINGS}
    rows = {}
    for every in (2, 4, 10, 20):
        keep = steps % every == 0
        for span in sorted({0, every * 2, 40}):
            name = f"probes every {every}, smoothed over {span} steps"
            rows[name] = judge(times(steps[keep], a[:, keep], CURVE, span),
                               times(steps[keep], b[:, keep], CURVE, span), ref)
            rows[name]["probes_per_1000_steps"] = 1000 / every
    coarse = steps % 20 == 0
    first = detect(steps[coarse], a[:, coarse], Repeated.metric(CURVE), window=1)
    lo, hi = np.nanmin(first.onset) - 40, np.nanmax(first.end) + 40
    keep = coarse | ((steps >= lo) & (steps <= hi))
    name = "concentrated: every 2 in the window, 20 elsewhere"
    rows[name] = judge(times(steps[keep], a[:, keep], CURVE, 4), times(steps[keep], b[:, keep], CURVE, 4), ref)
    rows[name]["probes_per_1000_steps"] = 1000 * keep.sum() / (steps[-1] - steps[0])
    even, odd = loss_steps % 2 == 0, loss_steps % 2 == 1
    for span in (24, 50, 100):
        name = f"per-step training loss, smoothed over {span} steps (split half)"
        rows[name] = judge(times(loss_steps[even], loss[:, even], "loss_second_half", span),
                           times(loss_steps[odd], loss[:, odd], "loss_second_half", span), None)
        rows[name]["probes_per_1000_steps"] = 0
    print(f"\nreference: probes every 2 steps, smoothed over 4 steps; spread of the midpoint across "
          f"{E} members {np.nanstd(ref['midpoint'], ddof=1):.1f} steps")
    print(f"{'':64s} {'probes/1000':>11s} | midpoint: retest  bias  error reliab. | onset: bias  error | end: error")
    for name, r in rows.items():
        m, o, e = r["midpoint"], r["onset"], r["end"]
        fmt = lambda row, k, f: f"{row[k]:{f}}" if k in row else " " * len(f"{0:{f}}")  # noqa: E731
        print(f"{name:64s} {r['probes_per_1000_steps']:11.0f} | {m['retest_sd']:14.2f} {fmt(m, 'bias', '+5.1f')} "
              f"{fmt(m, 'error_sd', '5.2f')} {fmt(m, 'reliability', '7.4f')} | {fmt(o, 'bias', '+5.1f')} "
              f"{fmt(o, 'error_sd', '5.2f')} | {fmt(e, 'error_sd', '5.2f')}")
    Path(args.out, "precision.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {Path(args.out, 'precision.json')}")


if __name__ == "__main__":
    main()
