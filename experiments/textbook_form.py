"""When does the circuit take the textbook two-head form (one previous-token head, one induction
head, every other head dispensable)?

The default run gives several redundant induction heads in every member. This sweeps what
plausibly decides it, each setting against the default: weight decay (per member, one
compiled call), the learning rate (likewise), the number of heads per layer, and the period
range of the training data. Per setting: the fraction of members with `clean_circuit` (the
textbook form) and with `induction_circuit` (the mechanism, induction work possibly shared),
the number of induction heads and the final second-half loss.

    python experiments/textbook_form.py [--seeds 4] [--out runs/textbook-form]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from induction_jax import use_cpu_cores
from induction_jax.analysis.run import analyze_run
from induction_jax.config import RunConfig
from induction_jax.members import Members
from induction_jax.runner import train_or_resume

# run name -> (config overrides, lr list or None, weight-decay list or None)
RUNS = {
    "weight-decay": ({}, None, [0.0, 0.01, 0.1, 0.3]),
    "lr": ({}, [3e-3, 3e-2], None),
    "heads-1": ({"n_heads": 1}, None, None),
    "heads-2": ({"n_heads": 2}, None, None),
    "period-5-25": ({"min_half_length": 5}, None, None),
    "period-18-25": ({"min_half_length": 18}, None, None),
    "period-25-fixed": ({"min_half_length": 25}, None, None),
}
MODEL_STEPS_PER_S = 85.0


def setting(name: str, member: dict, cfg: RunConfig) -> str:
    if name == "weight-decay":
        return f"weight decay {member['weight_decay']:g}" + (" (default)" if member["weight_decay"] == 0.01 else "")
    if name == "lr":
        return f"lr {member['lr']:g}"
    m, d = cfg.model, cfg.data
    return {"heads-1": "1 head per layer", "heads-2": "2 heads per layer",
            "period-5-25": "periods 5-25", "period-18-25": "periods 18-25",
            "period-25-fixed": "period 25 fixed (reference task)"}[name] + f" (d_head {m.d_head}, periods "\
        f"{d.min_period}-{d.half_length})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", default="runs/textbook-form")
    parser.add_argument("--overwrite", action="store_true", help="retrain even where the runs exist")
    args = parser.parse_args()
    use_cpu_cores()
    plans = []
    for name, (overrides, lrs, wds) in RUNS.items():
        cfg = RunConfig().replace(seeds=args.seeds, steps=args.steps, **overrides)
        plans.append((name, cfg, Members.grid(cfg, lrs, wds)))
    total = sum(len(m) for *_, m in plans) * args.steps / MODEL_STEPS_PER_S
    print(f"{len(plans)} runs, {sum(len(m) for *_, m in plans)} members x {args.steps} steps; about {total / 60:.0f} "
          f"min of training on a 2-core CPU", flush=True)
    rows, best = [], None
    for name, cfg, members in plans:
        out = Path(args.out) / name
        tic = time.perf_counter()
        train_or_resume(cfg, out, overwrite=args.overwrite, members=members, progress=False)
        circuit = json.loads((analyze_run(out) / "circuit.json").read_text())
        summary = json.loads((out / "summary.json").read_text())
        print(f"{name}: {time.perf_counter() - tic:.0f} s", flush=True)
        groups: dict[str, list[int]] = {}
        for m in summary["members"]:
            groups.setdefault(setting(name, m, cfg), []).append(m["member"])
        for label, idx in groups.items():
            c = [circuit["members"][i] for i in idx]
            loss = [summary["members"][i]["final_loss_second_half"] for i in idx]
            rows.append({"setting": label, "n": len(idx), "clean": sum(r["clean_circuit"] for r in c),
                         "induction": sum(r.get("induction_circuit", False) for r in c),
                         "induction_heads": float(np.mean([r.get("n_induction_heads", 0) for r in c])),
                         "loss_second_half": [min(loss), max(loss)]})
            for i, r in zip(idx, c):
                # the clearest textbook example: clean, with the largest cost of ablating its induction head
                key = (r["clean_circuit"], r.get("ablation_induction_head", 0.0))
                if best is None or key > best[0]:
                    best = (key, out, i, label)
    print(f"\n{'setting':52s} {'clean':>7s} {'induction':>9s} {'IH':>5s}  loss_second_half")
    for r in rows:
        print(f"{r['setting']:52s} {r['clean']:>3d} of {r['n']} {r['induction']:>5d} of {r['n']} "
              f"{r['induction_heads']:5.1f}  {r['loss_second_half'][0]:.3f}-{r['loss_second_half'][1]:.3f}")
    key, run, member, label = best
    is_clean = key[0]
    analyze_run(run, member)                         # its single-model figures
    shutil.copy(run / "analysis" / "attention_patterns.png", Path(args.out) / "clearest_example.png")
    print(f"\nclearest example: {label}, member {member} (clean_circuit {is_clean}): "
          f"{Path(args.out) / 'clearest_example.png'}")
    Path(args.out, "summary.json").write_text(json.dumps({"rows": rows, "clearest": [str(run), member, label]},
                                                         indent=1))


if __name__ == "__main__":
    main()
