"""In what order do the pieces of the induction circuit form, and is it the same in every seed?

Trains the default configuration with snapshots (log-spaced, dense early), times the phase
change, then follows every member's sub-circuits through its snapshots (`dynamics`): the
formation step of each, the order per member, how often each order occurs, and the median lag
between each pair with its CI.

    python experiments/formation_order.py [--seeds 16] [--out runs/formation-order]
"""

from __future__ import annotations

import argparse
import json
import time

from induction_jax import use_cpu_cores
from induction_jax.config import RunConfig
from induction_jax.dynamics.run import dynamics_run
from induction_jax.phase.run import phase_run
from induction_jax.runner import train_or_resume

MODEL_STEPS_PER_S = 85.0       # the default config on a 2-core CPU (docs/performance.md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default="runs/formation-order")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if the run exists")
    args = parser.parse_args()
    use_cpu_cores()
    cfg = RunConfig().replace(seeds=args.seeds, steps=args.steps, snapshots="log")
    print(f"{args.seeds} members x {args.steps} steps with {len(cfg.train.snapshot_steps)} snapshots; about "
          f"{args.seeds * args.steps / MODEL_STEPS_PER_S / 60:.0f} min of training and a few of analysis on a "
          f"2-core CPU", flush=True)
    tic = time.perf_counter()
    train_or_resume(cfg, args.out, overwrite=args.overwrite, progress=False)
    trained = time.perf_counter() - tic
    phase_run(args.out)
    tic = time.perf_counter()
    stats = json.loads((dynamics_run(args.out) / "stats.json").read_text())
    analysed = time.perf_counter() - tic
    n = len(stats["members"])
    print(f"trained in {trained:.0f} s; dynamics of {n} members x {len(stats['snapshot_steps'])} snapshots in "
          f"{analysed:.0f} s")
    print("median formation step (members formed):")
    for event, step in stats["median_step"].items():
        print(f"  {event:28s} {'n/a' if step is None else f'{step:6.0f}'}  ({stats['n_formed'][event]} of {n})")
    print("orders:")
    for o in stats["order_counts"]:
        print(f"  {o['n']:3d} of {n}: {o['order']}")
    print("median lag second - first (95% CI), and how often the first came first:")
    for r in stats["lags"]:
        if r.get("n"):
            print(f"  {r['first']:26s} -> {r['second']:26s} {r['median_lag']:+7.1f} [{r['ci95_low']:+.1f}, "
                  f"{r['ci95_high']:+.1f}]  first earlier in {r['fraction_first_before_second']:.0%} of {r['n']}")


if __name__ == "__main__":
    main()
