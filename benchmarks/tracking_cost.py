"""What `--log` costs inside training, measured side by side in one run.

Each round trains the same ensemble with `--log none`, `--log tensorboard` and `--log wandb`
(offline), each in a fresh process (`--worker ARM`: `runner.train_run`, the code `induction-jax
train` runs), the order rotating from round to round so every arm sees the same machine load
over time. Reported apart: the steady-state rate, from the end of the first training chunk
(which holds the compile) to the end of the last, so it holds every chunk's metrics.csv and
tracker writes and no compile; and the fixed cost, the whole `train_run` call's wall time
(compile, opening and closing the trackers). Prints the medians and the ratio of each arm to
`none`, with the spread of the per-round ratios.

    python benchmarks/tracking_cost.py [--seeds 8] [--steps 200] [--rounds 3]

On a host whose load drifts more than the cost (a shared machine), `--inside` measures it
within one run instead: `--log tensorboard+wandb`, timing each tracker's `write` (with the
TensorBoard flush that waits for its writer thread) against the steady-state time, so both
sides of the ratio see the same load. It leaves out what runs beside training (wandb's
service process), which the side-by-side rounds include.

    python benchmarks/tracking_cost.py --inside [--seeds 8] [--steps 200]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = ("none", "tensorboard", "wandb", "tensorboard+wandb")
ROUND_ARMS = ARMS[:3]


def worker(arm: str, seeds: int, steps: int, out: Path) -> dict:
    """Train the default model with `--log ARM`; time every metrics.csv write (one per chunk)."""
    import induction_jax as ij
    from induction_jax import metrics, runner, tracking

    ij.use_cpu_cores()
    marks = []
    write = metrics.RunTables.write

    def timed_write(self, result):
        write(self, result)
        marks.append((time.perf_counter(), int(max(result.steps.max(initial=0), result.probe_steps.max(initial=0)))))

    metrics.RunTables.write = timed_write
    inside = {}
    for klass in tracking.BACKENDS.values():
        def timed(self, columns, rows, _write=klass.write, _name=klass.__name__):
            tic = time.perf_counter()
            _write(self, columns, rows)
            inside[_name] = inside.get(_name, 0.0) + time.perf_counter() - tic
        klass.write = timed
    cfg = ij.RunConfig().replace(seeds=seeds, steps=steps, log=arm)
    tic = time.perf_counter()
    runner.train_run(cfg, out, progress=False)
    wall = time.perf_counter() - tic
    (t0, s0), (t1, s1) = marks[1], marks[-1]      # marks[0]: the step-0 probe; marks[1]: the compiled chunk
    return {"arm": arm, "steps_per_s": (s1 - s0) / (t1 - t0), "wall_s": wall, "chunks": len(marks) - 1,
            "steady_s": t1 - t0, "inside_s": inside}


def measure(arm: str, seeds: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, INDUCTION_JAX_CACHE_DIR="off", WANDB_MODE="offline", WANDB_SILENT="true",
                   WANDB_CACHE_DIR=f"{tmp}/wandb-cache", WANDB_CONFIG_DIR=f"{tmp}/wandb-config")
        out = subprocess.run([sys.executable, __file__, "--worker", arm, "--seeds", str(seeds), "--steps", str(steps),
                              "--out", f"{tmp}/run"], env=env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"--log {arm} failed:\n{out.stderr[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="ensemble members (the default model)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inside", action="store_true", help="one run; each tracker's time inside training")
    parser.add_argument("--worker", choices=ARMS, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.seeds, args.steps, args.out)))
        return
    if args.inside:
        run = measure("tensorboard+wandb", args.seeds, args.steps)
        print(f"{args.seeds} members x {args.steps} steps, --log tensorboard+wandb, {run['chunks']} chunks: "
              f"{run['steady_s']:.1f} s steady-state ({run['steps_per_s']:.3f} steps/s)")
        for name, t in run["inside_s"].items():
            print(f"{name}: {t:.2f} s inside its writes, {t / run['steady_s']:.1%} of the steady-state time; "
                  f"training without it would run {run['steady_s'] / (run['steady_s'] - t):.3f}x as fast")
        return
    runs = {a: [] for a in ROUND_ARMS}
    for r in range(args.rounds):
        for arm in ROUND_ARMS[r % 3:] + ROUND_ARMS[:r % 3]:
            runs[arm].append(measure(arm, args.seeds, args.steps))
        print(f"round {r + 1}: " + ", ".join(f"{a} {runs[a][-1]['steps_per_s']:.3f} steps/s "
                                             f"({runs[a][-1]['wall_s']:.1f} s wall)" for a in ROUND_ARMS), flush=True)
    print(f"{args.seeds} members x {args.steps} steps (default model, eval_every and chunking), {args.rounds} rounds, "
          f"{runs['none'][0]['chunks']} chunks per run")
    for arm in ROUND_ARMS[1:]:
        rate = [b["steps_per_s"] / a["steps_per_s"] for a, b in zip(runs["none"], runs[arm])]
        extra = [b["wall_s"] - a["wall_s"] for a, b in zip(runs["none"], runs[arm])]
        print(f"--log {arm}: steady-state rate / --log none: median {statistics.median(rate):.3f} (per round "
              f"{min(rate):.3f}-{max(rate):.3f}); whole train_run wall time {statistics.median(extra):+.1f} s "
              f"(per round {min(extra):+.1f} to {max(extra):+.1f})")


if __name__ == "__main__":
    main()
