"""How the LLC's SGLD defaults were chosen: step size and localisation, by measurement.

On a run with snapshots at the default settings, for a few members at initialisation, in the
middle of the phase change and at the end of training, the LLC is estimated over a grid of
step sizes (one compiled sweep per snapshot, common random numbers) at each localisation
strength gamma. A setting is usable when its estimate is stable by `slt.diagnostics.stability`
(no flagged chain or drift at eps/2, eps, 2 eps; those three estimates within 10%). The
default is the largest stable eps (the fastest mixing) at the smallest gamma at which every
probed snapshot is stable.

    python experiments/llc_calibration.py RUN_DIR [--members 0,1] [--steps 0,190,2000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from induction_jax import snapshots, use_cpu_cores
from induction_jax.rundir import RunDir
from induction_jax.slt.diagnostics import eps_sensitivity, stability
from induction_jax.slt.run import DEFAULT_N, TrainingLoss, llc_dataset
from induction_jax.slt.sampler import SGLDConfig

CENTER = 3e-4
FACTORS = tuple(2.0 ** k for k in range(-4, 5))       # eps from 1.9e-5 to 4.8e-3, a factor 2 apart
GAMMAS = (100.0, 1000.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--members", default="0,1")
    parser.add_argument("--steps", default="0,190,2000", help="snapshot steps (the nearest existing ones)")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--burn-in", type=int, default=100)
    args = parser.parse_args()
    use_cpu_cores()
    run = RunDir(Path(args.run_dir))
    cfg = run.read_config().replace(compute_dtype="float32")
    have = np.asarray(snapshots.steps(run))
    steps = sorted({int(have[np.abs(have - int(s)).argmin()]) for s in args.steps.split(",")})
    members = [int(m) for m in args.members.split(",")]
    _, params = snapshots.load(run, steps)
    loss = TrainingLoss(cfg)
    results = []
    for gamma in GAMMAS:
        for s, step in enumerate(steps):
            for e in members:
                w = {k: jnp.asarray(v[s, e]) for k, v in params.items()}
                data = llc_dataset(cfg, int(run.members().data_seed[e]), DEFAULT_N)
                sgld = SGLDConfig(eps=CENTER, gamma=gamma, chains=args.chains, draws=args.draws,
                                  burn_in=args.burn_in, batch_size=64)
                tic = time.perf_counter()
                sweep = eps_sensitivity(jax.random.PRNGKey(0), loss, w, data, sgld, factors=FACTORS)
                seconds = time.perf_counter() - tic
                # every interior step size judged by its own eps/2, eps, 2eps
                for c in range(1, len(FACTORS) - 1):
                    ok, why = stability(sweep.eps, sweep.llc_mean, sweep.llc_se, sweep.flag_counts, sweep.drifting,
                                        sweep.chains, c)
                    results.append({"gamma": gamma, "step": step, "member": e, "eps": float(sweep.eps[c]),
                                    "llc": float(sweep.llc_mean[c]), "se": float(sweep.llc_se[c]), "stable": ok,
                                    "warning": why})
                print(f"gamma {gamma:g}, step {step}, member {e} ({seconds:.0f} s): " + ", ".join(
                    f"{r['eps']:.1e}: {r['llc']:.1f}{'' if r['stable'] else '!'}" for r in results[-len(FACTORS) + 2:]),
                    flush=True)
    Path(args.run_dir, "llc_calibration.json").write_text(json.dumps(results, indent=1))
    for gamma in GAMMAS:
        grid = sorted({r["eps"] for r in results})
        ok = [eps for eps in grid if all(r["stable"] for r in results if r["gamma"] == gamma and r["eps"] == eps)]
        print(f"gamma {gamma:g}: stable at every probed snapshot for eps in {[f'{x:.1e}' for x in ok] or 'none'}")


if __name__ == "__main__":
    main()
