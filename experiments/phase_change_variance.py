"""How much does the timing of the induction phase change vary from seed to seed?

Trains the default configuration with 32 seeds in one compiled call, identifies the circuit
in every member, times the phase change and prints the ensemble statistics.

    python experiments/phase_change_variance.py [--seeds 32] [--out runs/phase-variance]
"""

from __future__ import annotations

import argparse
import json

from induction_jax.analysis.run import analyze_run
from induction_jax import use_cpu_cores
from induction_jax.config import RunConfig
from induction_jax.phase.run import phase_run
from induction_jax.runner import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=32)
    parser.add_argument("--out", default="runs/phase-variance")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    use_cpu_cores()
    cfg = RunConfig().replace(seeds=args.seeds)
    run = train_run(cfg, args.out, overwrite=args.overwrite)
    circuit = json.loads((analyze_run(run.path) / "circuit.json").read_text())
    stats = json.loads((phase_run(run.path) / "stats.json").read_text())
    mid = stats["in_context_score"]["midpoint"]
    print(f"induction circuit in {circuit['n_induction_circuit']} of {circuit['n_members']} members "
          f"(textbook single-induction-head form: {circuit['n_clean']})")
    print(f"in-context score midpoint over {mid['n']} members ({mid['n_censored']} censored): "
          f"mean {mid['mean']:.0f}, std {mid['std']:.0f}, CV {mid['cv']:.3f}, median {mid['median']:.0f}, "
          f"IQR {mid['iqr']:.0f}, 95% CI of the mean {mid['ci95_low']:.0f}-{mid['ci95_high']:.0f}")
    lag = stats["primary_minus_later_midpoint"]["median"]
    print(f"median lag, in-context minus induction-score midpoint: {lag} steps")
    for by, order in stats["formation_order"].items():
        print(f"previous-token head forms before / with / after the induction head, by {by}: {order['counts']}")
    print(f"report: {run.path / 'report.html'}")


if __name__ == "__main__":
    main()
