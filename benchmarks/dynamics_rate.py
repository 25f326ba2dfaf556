"""The dynamics analysis' rate of two source trees side by side, in one run: models/s and peak memory.

`induction-jax dynamics` spends its time in `dynamics.trajectories.model_scores`: every score,
ablation and composition of `--batch` models (flattened members x snapshots) a chunk. Each
round runs this script's worker under tree A, then under tree B (a fresh process each, its own
package on PYTHONPATH, one JAX device per core as the command line sets up), alternating which
goes first, so both see the same machine load. A worker loads RUN_DIR's snapshots, tiles them
to MEMBERS x SNAPSHOTS models (the analysis takes no branch on the weights' values, so its
cost is that of a real run of that size), compiles on the first chunk and times the next
`--chunks` chunks. Prints each tree's models/s per round, the medians, the ratio B / A and
each worker's peak RSS; `--full` instead times all MEMBERS x SNAPSHOTS models once per tree.

    git worktree add /tmp/before <commit>
    python benchmarks/dynamics_rate.py RUN_DIR /tmp/before . [--members 32] [--snapshots 51]
        [--batch 32] [--chunks 4] [--rounds 3] [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(run_dir: str, members: int, n_snapshots: int, batch: int, chunks: int | None) -> dict:
    import induction_jax

    induction_jax.use_cpu_cores()
    import numpy as np

    from induction_jax import snapshots
    from induction_jax.dynamics.trajectories import model_scores
    from induction_jax.dynamics.run import PROBE_BATCH
    from induction_jax.rundir import RunDir

    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    _, params = snapshots.load(run)
    S, E = params["W_E"].shape[:2]
    pick_s = np.arange(n_snapshots) % S
    pick_e = np.arange(members) % E
    flat = {k: np.asarray(v)[pick_s][:, pick_e].reshape(n_snapshots * members, *v.shape[2:])
            for k, v in params.items()}
    period = cfg.task.induction_period(cfg.model)
    total = n_snapshots * members
    n_chunks = -(-total // batch) if chunks is None else chunks + 1
    take = lambda i: {k: v[(i * batch) % total:(i * batch) % total + batch] for k, v in flat.items()}  # noqa: E731
    tic = time.perf_counter()
    model_scores(take(0), period, batch, PROBE_BATCH)
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    for i in range(1, n_chunks):
        model_scores(take(i), period, batch, PROBE_BATCH)
    secs = time.perf_counter() - tic
    timed = sum(len(take(i)["W_E"]) for i in range(1, n_chunks))
    if chunks is None:       # --full: the whole analysis, the compiling chunk included
        timed, secs = total, secs + first
    return {"models_per_s": timed / secs, "seconds": secs, "models": timed, "first_chunk_s": first,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}


def measure(tree: Path, args) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree), INDUCTION_JAX_CACHE_DIR="off")
    cmd = [sys.executable, str(Path(__file__).resolve()), args.run_dir, str(tree), str(tree), "--worker",
           "--members", str(args.members), "--snapshots", str(args.snapshots), "--batch", str(args.batch),
           "--chunks", str(args.chunks), *(["--full"] if args.full else [])]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory with snapshots (any size: they are tiled)")
    parser.add_argument("tree_a", type=Path, help="source tree A (e.g. a worktree of the commit before)")
    parser.add_argument("tree_b", type=Path, help="source tree B (e.g. this checkout)")
    parser.add_argument("--members", type=int, default=32)
    parser.add_argument("--snapshots", type=int, default=51)
    parser.add_argument("--batch", type=int, default=32, help="models a chunk (`induction-jax dynamics --batch`)")
    parser.add_argument("--chunks", type=int, default=4, help="timed chunks per worker, after the compiling one")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--full", action="store_true", help="time every model once per tree (one round)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.run_dir, args.members, args.snapshots, args.batch,
                                None if args.full else args.chunks)))
        return
    rounds = 1 if args.full else args.rounds
    what = "every model" if args.full else f"{args.chunks} chunks after the compiling one"
    print(f"{args.members} members x {args.snapshots} snapshots, {args.batch} models a chunk, {what}; "
          f"{rounds} round(s), A = {args.tree_a}, B = {args.tree_b}", flush=True)
    rates = {"A": [], "B": []}
    for r in range(rounds):
        order = [("A", args.tree_a), ("B", args.tree_b)][:: 1 if r % 2 == 0 else -1]
        for name, tree in order:
            res = measure(tree, args)
            rates[name].append(res["models_per_s"])
            print(f"round {r + 1} {name}: {res['models_per_s']:.2f} models/s ({res['models']} models in "
                  f"{res['seconds']:.1f} s; first chunk {res['first_chunk_s']:.1f} s; peak RSS "
                  f"{res['peak_rss_gib']:.2f} GiB)", flush=True)
    ratios = [b / a for a, b in zip(rates["A"], rates["B"])]
    print(f"median models/s: A {statistics.median(rates['A']):.2f}, B {statistics.median(rates['B']):.2f}; "
          f"B / A {statistics.median(rates['B']) / statistics.median(rates['A']):.2f}x "
          f"(per round {min(ratios):.2f}-{max(ratios):.2f}x)")


if __name__ == "__main__":
    main()
