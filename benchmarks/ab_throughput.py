"""Training throughput of two source trees side by side, in one run: a change's cost, measured.

Each round runs `benchmarks/throughput.py --worker SIZE` of tree A, then of tree B (each in a
fresh process with its own package on PYTHONPATH), alternating which goes first, so both see
the same machine load over time. Prints each tree's model-steps/s per round, the medians and
the ratio B / A with the spread of the per-round ratios.

    git worktree add /tmp/before <commit>
    python benchmarks/ab_throughput.py /tmp/before . [--size 8] [--steps 100] [--rounds 5]
        [--eval-every 10] [--overrides '{"task": "markov"}']
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path


def measure(tree: Path, size: int, steps: int, extra: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), INDUCTION_JAX_CACHE_DIR="off")
    out = subprocess.run([sys.executable, str(tree / "benchmarks" / "throughput.py"), "--worker", str(size),
                          "--steps", str(steps), *extra], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tree_a", type=Path, help="source tree A (e.g. a worktree of the commit before)")
    parser.add_argument("tree_b", type=Path, help="source tree B (e.g. this checkout)")
    parser.add_argument("--size", type=int, default=8, help="ensemble members")
    parser.add_argument("--steps", type=int, default=100, help="steps per timed chunk (median of 5 chunks)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--eval-every", type=int, help="probe cadence (default: the worker's)")
    parser.add_argument("--overrides", default="{}", help="RunConfig fields as JSON, the same for both trees "
                        "(e.g. a task and its settings)")
    args = parser.parse_args()
    extra = ["--overrides", args.overrides] + (["--eval-every", str(args.eval_every)] if args.eval_every else [])
    trees = {"A": args.tree_a.resolve(), "B": args.tree_b.resolve()}
    rates = {"A": [], "B": []}
    for r in range(args.rounds):
        order = ("A", "B") if r % 2 == 0 else ("B", "A")
        for name in order:
            rates[name].append(measure(trees[name], args.size, args.steps, extra)["model_steps_per_s"])
        print(f"round {r + 1}: A {rates['A'][-1]:.1f}, B {rates['B'][-1]:.1f} model-steps/s "
              f"(B/A {rates['B'][-1] / rates['A'][-1]:.3f})", flush=True)
    ratios = [b / a for a, b in zip(rates["A"], rates["B"])]
    print(f"A = {trees['A']}\nB = {trees['B']}")
    print(f"{args.size} members, {args.steps}-step chunks, overrides {args.overrides}, {args.rounds} rounds: median A "
          f"{statistics.median(rates['A']):.1f}, B {statistics.median(rates['B']):.1f} model-steps/s; "
          f"B/A median {statistics.median(ratios):.3f} (per round {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
