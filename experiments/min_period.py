"""The shortest training period per member, crossed with seeds in one compiled ensemble.

With a fixed period (min_period = P = 25) the earlier copy is always P-1 positions back and
attention can find it by position alone (docs/task.md); shorter periods remove that
shortcut. This sweeps the repeated task's member parameter `min_period` over 5, 10, 20, 25
with the same seeds, all members in one program (`sweep --task-param`), and reports per
value: members with the induction circuit and in the textbook form (exact 95% intervals),
the in-context midpoint, and the final second-half loss.

    python experiments/min_period.py [--seeds 6] [--values 5,10,20,25] [--out runs/min-period]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import stats as scipy_stats

from induction_jax import use_cpu_cores


def exact_interval(k: int, n: int) -> tuple[float, float]:
    ci = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return ci.low, ci.high


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--values", default="5,10,20,25")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default="runs/min-period")
    args = parser.parse_args()
    use_cpu_cores()
    from induction_jax.cli import main as cli

    out = Path(args.out)
    if not (out / "phase" / "stats.json").is_file():
        code = cli(["sweep", "--seeds", str(args.seeds), "--steps", str(args.steps), "--task-param",
                    f"min_period={args.values}", "--out", str(out), "--no-progress"])
        if code not in (0, 3):
            raise SystemExit(code)
    circuit = json.loads((out / "analysis" / "circuit.json").read_text())
    stats = json.loads((out / "phase" / "stats.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    members = json.loads((out / "config.json").read_text())["members"]
    rows = []
    for value in sorted(set(members["min_period"])):
        idx = [i for i, v in enumerate(members["min_period"]) if v == value]
        n = len(idx)
        ic = sum(circuit["members"][i]["induction_circuit"] for i in idx)
        clean = sum(circuit["members"][i]["clean_circuit"] for i in idx)
        arm = stats["arms"][f"min_period {value}"]
        mid = arm["primary_midpoint"]
        loss = [summary["members"][i]["final_loss_second_half"] for i in idx]
        n_ih = [circuit["members"][i].get("n_induction_heads") for i in idx]
        rows.append({"min_period": value, "n": n, "induction_circuit": ic,
                     "induction_circuit_ci95": exact_interval(ic, n), "clean_circuit": clean,
                     "clean_circuit_ci95": exact_interval(clean, n), "midpoint_median": mid.get("median"),
                     "midpoint_mean": mid.get("mean"), "midpoint_ci95": [mid.get("ci95_low"), mid.get("ci95_high")],
                     "n_timed": mid.get("n"), "n_censored": mid.get("n_censored"),
                     "final_loss_second_half": [float(np.min(loss)), float(np.max(loss))],
                     "n_induction_heads": n_ih})
    for r in rows:
        lo, hi = r["induction_circuit_ci95"]
        clo, chi = r["clean_circuit_ci95"]
        mid = ("no member timed" if r["midpoint_median"] is None else
               f"median {r['midpoint_median']:.0f}" + (f", mean CI {r['midpoint_ci95'][0]:.0f}-{r['midpoint_ci95'][1]:.0f}"
                                                      if r["midpoint_ci95"][0] is not None else ""))
        print(f"min_period {r['min_period']:>2}: circuit {r['induction_circuit']}/{r['n']} [{lo:.0%}, {hi:.0%}], "
              f"textbook form {r['clean_circuit']}/{r['n']} [{clo:.0%}, {chi:.0%}]; in-context midpoint {mid} "
              f"({r['n_timed']} timed, {r['n_censored']} censored); final loss_second_half "
              f"{r['final_loss_second_half'][0]:.3f}-{r['final_loss_second_half'][1]:.3f}; induction heads "
              f"{r['n_induction_heads']}")
    (out / "min_period_summary.json").write_text(json.dumps(rows, indent=1))
    print(f"report: {out / 'report.html'}")


if __name__ == "__main__":
    main()
