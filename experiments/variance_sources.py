"""Where does the spread of phase-change timing come from: the initial weights or the data order?

Crosses 8 init seeds with 8 data seeds into one compiled ensemble of 64 members, at the
default learning rate (1e-2) and at 3e-3, where transitions come later and spread more; times
every member, splits the variance of each timing into init, data and residual shares (two-way
random-effects ANOVA, crossed-bootstrap 95% CIs), correlates init-time quantities with the
midpoint, and draws the survival curves of formation.

    python experiments/variance_sources.py [--seeds 8] [--out runs/variance-sources]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from induction_jax import use_cpu_cores
from induction_jax.config import RunConfig
from induction_jax.api import open_run
from induction_jax.members import Members
from induction_jax.phase.figures import survival_and_ecdf
from induction_jax.phase.survival import censor_at_last_step
from induction_jax.phase.run import phase_run
from induction_jax.runner import train_or_resume

# (learning rate, steps): long enough for every member to finish its transition with room for
# the final plateau that the 90% threshold needs (midpoints near 190 at 1e-2, 420 at 3e-3).
SETTINGS = ((1e-2, 800), (3e-3, 1500))
MODEL_STEPS_PER_S = 85.0       # measured on the default config, 2-core CPU (docs/performance.md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8, help="init seeds and data seeds, each (seeds^2 members)")
    parser.add_argument("--out", default="runs/variance-sources")
    parser.add_argument("--overwrite", action="store_true", help="retrain even where the runs exist")
    args = parser.parse_args()
    use_cpu_cores()
    n = args.seeds
    total = sum(n * n * steps for _, steps in SETTINGS) / MODEL_STEPS_PER_S
    print(f"{len(SETTINGS)} studies of {n} x {n} = {n * n} members; estimated {total / 60:.0f} min of training "
          f"on a 2-core CPU, plus a minute of analysis each", flush=True)
    summary = {}
    for lr, steps in SETTINGS:
        cfg = RunConfig().replace(lr=lr, steps=steps, checkpoint_every=steps)
        members = Members.grid(cfg, init_seeds=range(n), data_seeds=range(n))
        out = Path(args.out) / f"lr-{lr:g}"
        tic = time.perf_counter()
        train_or_resume(cfg, out, overwrite=args.overwrite, members=members, progress=False)
        trained = time.perf_counter() - tic
        stats = json.loads((phase_run(out, variance=True) / "stats.json").read_text())
        arm = stats["arms"]["all"]
        mid = stats["in_context_score"]["midpoint"]
        row = {"steps": steps, "train_seconds": round(trained), "probe_interval": stats["in_context_score"]["probe_interval"],
               "in_context_midpoint": mid, "loss_second_half_midpoint": stats["loss_second_half"]["midpoint"],
               "variance": {curve: {k: {f: v[f] for f in ("shares", "shares_ci95", "components", "reason")}
                                    for k, v in timings.items()}
                            for curve, timings in arm["variance"].items()},
               "predictors": arm["predictors"], "survival_median_onset": _median(arm["survival"])}
        summary[f"{lr:g}"] = row
        print(f"\nlr {lr:g}: {n * n} members x {steps} steps trained in {trained:.0f} s")
        print(f"  in-context midpoint: mean {mid['mean']:.1f}, std {mid['std']:.1f} steps (probes every "
              f"{row['probe_interval']:g} steps; {mid['n']} timed, {mid['n_censored']} censored)")
        for curve in ("in_context_score", "loss_second_half"):
            for timing in ("onset", "midpoint", "end"):
                v = arm["variance"][curve][timing]
                if v["shares"] is None:
                    print(f"  {curve} {timing}: {v['reason']}")
                    continue
                print(f"  {curve} {timing}: " + ", ".join(
                    f"{k} {v['shares'][k]:.2f} [{v['shares_ci95'][k][0]:.2f}, {v['shares_ci95'][k][1]:.2f}]"
                    for k in ("init", "data", "residual")))
        print(f"  predictors: {arm['predictors']['verdict']}")
        print(f"  median onset (Kaplan-Meier): {row['survival_median_onset']}")
    Path(args.out, "summary.json").write_text(json.dumps(summary, indent=1))
    groups = {}
    for lr, steps in SETTINGS:
        onset = open_run(Path(args.out) / f"lr-{lr:g}").timings().query("metric == 'in_context_score'")
        groups[f"lr {lr:g}"] = censor_at_last_step(onset["started"].to_numpy(float), steps)
    survival_and_ecdf(groups, Path(args.out) / "survival.png", "in-context score onset step")
    print(f"\nwrote {Path(args.out, 'summary.json')} and {Path(args.out, 'survival.png')}")


def _median(km: dict):
    """The first step where the survival curve drops to 0.5 or below (None if it never does)."""
    return next((t for t, s in zip(km["steps"], km["survival"]) if s <= 0.5), None)


if __name__ == "__main__":
    main()
