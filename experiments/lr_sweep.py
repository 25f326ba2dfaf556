"""Phase-change timing against learning rate: lr x seeds as one vmapped ensemble.

    python experiments/lr_sweep.py [--lr 3e-3,5e-3,1e-2,2e-2] [--seeds 8] [--out runs/lr-sweep]
"""

from __future__ import annotations

import argparse
import json

from induction_jax.analysis.run import analyze_run
from induction_jax import use_cpu_cores
from induction_jax.config import RunConfig
from induction_jax.members import Members
from induction_jax.phase.run import phase_run
from induction_jax.runner import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", default="3e-3,5e-3,1e-2,2e-2")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--out", default="runs/lr-sweep")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    use_cpu_cores()
    lrs = [float(x) for x in args.lr.split(",")]
    cfg = RunConfig().replace(seeds=args.seeds)
    run = train_run(cfg, args.out, overwrite=args.overwrite, members=Members.grid(cfg, lrs, [cfg.train.weight_decay]))
    analyze_run(run.path)
    stats = json.loads((phase_run(run.path) / "stats.json").read_text())
    # phase groups members into arms by every setting that varies but the seeds: here the lr
    for arm, a in stats["arms"].items():
        s = a["primary_midpoint"]
        timed = (f"mean {s['mean']:.0f}" + (f", std {s['std']:.0f}" if s["std"] is not None else "")
                 if s["n"] else "no member timed")
        print(f"{arm}: {a['primary_curve']} midpoint {timed} ({s['n']} timed, {s['n_censored']} censored)")
    print(f"report: {run.path / 'report.html'}")


if __name__ == "__main__":
    main()
