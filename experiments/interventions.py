"""What makes the induction circuit form when it does? Interventions during training, every arm
crossed with the same seeds in one compiled call.

Arms (default settings, 8 seeds each):
- none: the control;
- clamp:prev:L0H0:1.0 from step 0: layer 0's first head is given the previous-token pattern;
- freeze:W_pos: the positional embeddings keep their initial values;
- cut:K:L0H*: no layer-0 head's write reaches layer 1's keys (K-composition impossible);
- ablate:L1H1+ablate:L1H2+ablate:L1H3: one layer-1 head left.
Per arm: how many members form the transition and the circuit, the midpoint shift against
control paired by seed (bootstrap 95% CI), and the final losses.

    python experiments/interventions.py [--seeds 8] [--steps 1500] [--out runs/interventions]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from induction_jax import use_cpu_cores
from induction_jax.analysis.run import analyze_run
from induction_jax.config import RunConfig
from induction_jax.members import Members
from induction_jax.phase.run import phase_run
from induction_jax.runner import train_or_resume

ARMS = ["none", "clamp:prev:L0H0:1.0", "freeze:W_pos", "cut:K:L0H*", "ablate:L1H1+ablate:L1H2+ablate:L1H3"]
MODEL_STEPS_PER_S = 50.0      # this mix of arms over 40 members, 2-core CPU: 50 (1195 s, a slow host) to 78 (765 s) measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--out", default="runs/interventions")
    parser.add_argument("--overwrite", action="store_true", help="retrain even if the run exists")
    args = parser.parse_args()
    use_cpu_cores()
    cfg = RunConfig().replace(seeds=args.seeds, steps=args.steps)
    members = Members.grid(cfg, arms=ARMS)
    print(f"{len(ARMS)} arms x {args.seeds} seeds = {len(members)} members x {args.steps} steps in one compiled "
          f"call; about {len(members) * args.steps / MODEL_STEPS_PER_S / 60:.0f} min on a 2-core CPU", flush=True)
    tic = time.perf_counter()
    train_or_resume(cfg, args.out, overwrite=args.overwrite, members=members, progress=False)
    trained = time.perf_counter() - tic
    analyze_run(args.out)
    stats = json.loads((phase_run(args.out) / "stats.json").read_text())
    summary = json.loads((Path(args.out) / "summary.json").read_text())
    print(f"trained in {trained:.0f} s\n")
    effects = stats["interventions"]["arms"]
    print(f"{'arm':40s} {'formed':>7s} {'circuit':>8s}  {'midpoint shift vs control (95% CI)':36s} final loss_second_half")
    for arm in ARMS:
        r = effects[arm]
        loss = [m["final_loss_second_half"] for m in summary["members"] if m["arm"] == arm]
        shift = ("(control)" if arm == "none" else
                 f"{r['mean_shift']:+7.1f} [{r['ci95_low']:+.1f}, {r['ci95_high']:+.1f}] ({r['n_pairs_timed']} pairs)"
                 if "mean_shift" in r else "no pair where both formed")
        print(f"{arm:40s} {r['n_timed']:>3d} of {r['n']} {r['n_induction_circuit']:>4d} of {r['n']}  {shift:36s} "
              f"{np.min(loss):.3f}-{np.max(loss):.3f}")
    Path(args.out, "effects.json").write_text(json.dumps({"trained_seconds": trained, "effects": effects}, indent=1))


if __name__ == "__main__":
    main()
