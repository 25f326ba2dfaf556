"""Trigger bigrams (Bietti et al. 2023): global bigrams first, the induction head later, and the order
in which the weight matrices acquire their associative memories.

One compiled sweep: fixed triggers (the 3 most frequent tokens) and random triggers (drawn per
sequence) crossed with 8 seeds (16 members), a 2-layer x 4-head attention-only model (d_model 64),
T = 64, V = 64, batch 32, 500 AdamW steps at lr 1e-2, probes every 10 steps; then the sweep's
analyze, phase and report. From `phase/timings.csv` it reports per setting: the midpoints of the
global-bigram loss and of the in-context accuracy (which comes first, per member, with a Wilson
95% interval), the width of each rise (onset to end), the midpoints of the three memory-recall
probes and their order per member, and the final losses against their floors (pi's own loss on the
bigram targets; 0 for the ideal copier), measured on 4096 fresh sequences per setting. Figures:
docs/figures/trigger-curves.png and docs/figures/trigger-order.png. About 20 minutes on a shared
2-core CPU. `--frozen`: the paper's training regime instead (fixed triggers; W_E, W_U, W_pos frozen
at their random init; loss on the 2nd+ outputs only; 400 steps), into runs/trigger-frozen.

    python experiments/trigger.py [--seeds 8] [--steps 500] [--out runs/trigger] [--frozen]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from induction_jax import use_cpu_cores

MEMORIES = ("wo2_recall", "wk2_recall", "wk1_recall")
SETTINGS = {1: "fixed triggers", 0: "random triggers"}


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k / n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def floors(cfg, fixed: int, n: int = 4096) -> dict:
    """The task's floors on `n` fresh sequences of one setting."""
    import jax

    task = cfg.task
    batch = task.sample(jax.random.PRNGKey(12345), {"k": task.trigger_count, "fixed_triggers": fixed}, n,
                        cfg.model.d_vocab)
    return task.baselines(batch)


def halfway_step(steps: np.ndarray, values: np.ndarray, direction: int, last: int = 5) -> float:
    """The first step, interpolated between probes, where the curve crosses half-way from its first
    value to its final level (the mean of its last `last` probes): the rule of "formation in the
    weights" (docs/tasks/trigger.md), which needs no plateau. NaN if it never does."""
    s0, s1 = values[0], values[-last:].mean()
    level = (s0 + s1) / 2
    above = direction * (values - level) >= 0 if direction * (s1 - s0) > 0 else np.zeros(len(values), bool)
    hits = np.flatnonzero(above)
    if len(hits) == 0 or hits[0] == 0:
        return float("nan")
    i = hits[0]
    v0, v1 = values[i - 1], values[i]
    return float(steps[i - 1] + (level - v0) / (v1 - v0) * (steps[i] - steps[i - 1]))


HALFWAY = {"bigram_loss": -1, "icl_accuracy": 1, "icl_loss": -1, "wo2_recall": 1, "wk2_recall": 1, "wk1_recall": 1,
           "prev_token_attention": 1, "induction_attention": 1}


def halfway_table(probes) -> "pd.DataFrame":
    import pandas as pd

    rows = []
    for member, g in probes.groupby("member"):
        g = g.sort_values("step")
        row = {"member": member, "fixed_triggers": int(g.fixed_triggers.iloc[0])}
        for c, d in HALFWAY.items():
            row[c] = halfway_step(g.step.to_numpy(float), g[c].to_numpy(float), d)
            row[c + "_rise"] = float(g[c].to_numpy(float)[-5:].mean() - g[c].iloc[0])
        rows.append(row)
    return pd.DataFrame(rows).set_index("member")


def ordered(h, a: str, b: str, members, min_rise: float = 0.2) -> tuple[int, int]:
    """(members where `a` is half-way before `b`, members where both rose by at least `min_rise`)."""
    ok = [m for m in members if abs(h.loc[m, a + "_rise"]) >= min_rise and abs(h.loc[m, b + "_rise"]) >= min_rise]
    return sum(1 for m in ok if h.loc[m, a] < h.loc[m, b]), len(ok)


def summarise(out: Path) -> dict:
    import pandas as pd

    import induction_jax as ij

    run = ij.open_run(out)
    timings = pd.read_csv(out / "phase" / "timings.csv")
    metrics = run.metrics()
    probes = metrics.dropna(subset=["icl_accuracy"])
    last = probes[probes.step == probes.step.max()].set_index("member")
    result = {"n_members": int(len(last)), "steps": int(probes.step.max()), "settings": {}}
    for fixed in sorted(timings.fixed_triggers.unique(), reverse=True):
        label = SETTINGS[fixed]
        t = timings[timings.fixed_triggers == fixed]
        members = sorted(t.member.unique())
        mid = t.pivot(index="member", columns="metric", values="midpoint")
        cens = t.pivot(index="member", columns="metric", values="censored").astype(bool)
        width = (t.pivot(index="member", columns="metric", values="end")
                 - t.pivot(index="member", columns="metric", values="onset"))
        both = ~cens["bigram_loss"] & ~cens["icl_accuracy"]
        first = int(((mid["bigram_loss"] < mid["icl_accuracy"]) & both).sum())
        n = len(members)
        setting = {"n": n, "bigram_before_icl": first, "bigram_before_icl_wilson95": wilson(first, n),
                   "midpoint_median": {m: float(mid[m][~cens[m]].median()) if (~cens[m]).any() else None
                                       for m in mid.columns},
                   "midpoint_range": {m: [float(mid[m][~cens[m]].min()), float(mid[m][~cens[m]].max())]
                                      if (~cens[m]).any() else None for m in mid.columns},
                   "width_median": {m: float(width[m][~cens[m]].median()) if (~cens[m]).any() else None
                                    for m in width.columns},
                   "n_censored": {m: int(cens[m].sum()) for m in cens.columns}}
        orders = {}
        for m in members:
            if cens.loc[m, list(MEMORIES)].any():
                key = "censored"
            else:
                key = " < ".join(sorted(MEMORIES, key=lambda c: mid.loc[m, c]))
            orders[key] = orders.get(key, 0) + 1
        setting["memory_order"] = orders
        wo2_first = sum(1 for m in members if not cens.loc[m, list(MEMORIES)].any()
                        and mid.loc[m, "wo2_recall"] < min(mid.loc[m, "wk2_recall"], mid.loc[m, "wk1_recall"]))
        setting["wo2_first"] = wo2_first
        setting["wo2_first_wilson95"] = wilson(wo2_first, n)
        final = last.loc[members]
        setting["final"] = {c: [float(final[c].min()), float(final[c].median()), float(final[c].max())]
                            for c in ("icl_loss", "icl_accuracy", "bigram_loss", "bigram_accuracy",
                                      "first_output_loss", *MEMORIES, "prev_token_attention",
                                      "induction_attention")}
        h = halfway_table(probes[probes.member.isin(members)])
        setting["halfway_median"] = {c: float(h[c].median()) for c in HALFWAY}
        setting["halfway_range"] = {c: [float(h[c].min()), float(h[c].max())] for c in HALFWAY}
        setting["rise_median"] = {c: float(h[c + "_rise"].median()) for c in HALFWAY}
        setting["halfway_order"] = {}
        for a, b in (("bigram_loss", "icl_accuracy"), ("bigram_loss", "wo2_recall"), ("wo2_recall", "wk1_recall"),
                     ("wo2_recall", "icl_accuracy"), ("wk1_recall", "icl_accuracy"), ("wo2_recall", "wk2_recall"),
                     ("wk2_recall", "wk1_recall"), ("prev_token_attention", "induction_attention")):
            k, n_ok = ordered(h, a, b, members, 0.2 if "loss" not in a + b else 0.0)
            setting["halfway_order"][f"{a} before {b}"] = {"k": k, "n": n_ok, "wilson95": wilson(k, n_ok)}
        setting["floors"] = floors(run.config, fixed)
        setting["step0"] = {c: float(probes[(probes.step == 0) & probes.member.isin(members)][c].median())
                            for c in MEMORIES}
        result["settings"][label] = setting
    return result


def figures(out: Path, figdir: Path, prefix: str = "trigger") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import induction_jax as ij

    m = ij.open_run(out).metrics().dropna(subset=["icl_accuracy"])
    curves = [("bigram_loss", "bigram loss (nats)"), ("icl_accuracy", "in-context accuracy"),
              ("wo2_recall", "W_O^2 recall"), ("wk2_recall", "W_K^2 recall"), ("wk1_recall", "W_K^1 recall")]
    settings = [(f, SETTINGS[f]) for f in sorted(m.fixed_triggers.unique(), reverse=True)]
    fig, axes = plt.subplots(len(settings), len(curves), figsize=(3.2 * len(curves), 2.8 * len(settings)),
                             sharex=True, squeeze=False)
    for row, (fixed, label) in enumerate(settings):
        sub = m[m.fixed_triggers == fixed]
        for ax, (c, title) in zip(axes[row], curves):
            for _, g in sub.groupby("member"):
                ax.plot(g.step, g[c], lw=0.7, alpha=0.6)
            ax.set_title(f"{label}: {title}", fontsize=8)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(figdir / f"{prefix}-curves.png", dpi=110)
    plt.close(fig)

    h = halfway_table(m)
    names = ["bigram_loss", "wk2_recall", "wo2_recall", "icl_accuracy", "induction_attention",
             "prev_token_attention", "wk1_recall"]
    fig, axes = plt.subplots(1, len(settings), figsize=(4.75 * len(settings), 3.6), sharey=True, sharex=True,
                             squeeze=False)
    for ax, (fixed, label) in zip(axes[0], settings):
        sub = h[h.fixed_triggers == fixed]
        for member, row in sub.iterrows():
            ax.plot([row[c] for c in names], range(len(names)), lw=0.5, color="grey", alpha=0.5)
        for i, c in enumerate(names):
            risen = sub[sub[c + "_rise"].abs() >= 0.2]
            ax.scatter(risen[c], np.full(len(risen), i) + np.random.default_rng(i).uniform(-0.15, 0.15, len(risen)),
                       s=14, zorder=3)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("half-way step (init to final level)", fontsize=8)
        ax.set_title(f"{label} (dots: members whose curve rose >= 0.2)", fontsize=8)
    fig.tight_layout()
    fig.savefig(figdir / f"{prefix}-order.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--out", default="runs/trigger")
    parser.add_argument("--figures", default="docs/figures")
    parser.add_argument("--frozen", action="store_true",
                        help="instead: the paper's training regime, fixed triggers only: W_E, W_U and W_pos frozen at "
                             "their random init, loss on the 2nd+ outputs only, 400 steps (about 15 minutes); "
                             "out runs/trigger-frozen, figures trigger-frozen-*.png")
    args = parser.parse_args()
    if args.frozen and args.out == "runs/trigger":
        args.out = "runs/trigger-frozen"
    use_cpu_cores()
    from induction_jax.cli import main as cli

    out = Path(args.out)
    if not (out / "phase" / "stats.json").is_file():
        setting = (["--trigger-loss-only", "true", "--intervention", "freeze:W_E+freeze:W_U+freeze:W_pos",
                    "--steps", "400"] if args.frozen else
                   ["--task-param", "fixed_triggers=1,0", "--steps", str(args.steps)])
        code = cli(["sweep", "--task", "trigger", "--trigger-length", "64", "--n-ctx", "64", "--trigger-count", "3",
                    "--seeds", str(args.seeds), "--batch-size", "32", "--probe-batch-size", "64", "--eval-every", "10",
                    "--lr", "1e-2", *setting, "--out", str(out), "--no-progress"])
        if code not in (0, 3):
            raise SystemExit(code)
    result = summarise(out)
    figures(out, Path(args.figures), "trigger-frozen" if args.frozen else "trigger")
    (out / "trigger_summary.json").write_text(json.dumps(result, indent=1))
    for label, s in result["settings"].items():
        lo, hi = s["bigram_before_icl_wilson95"]
        wlo, whi = s["wo2_first_wilson95"]
        print(f"{label}: bigram midpoint before in-context midpoint in {s['bigram_before_icl']} of {s['n']} "
              f"[{lo:.0%}, {hi:.0%}]; medians {({k: round(v) for k, v in s['midpoint_median'].items() if v})}; "
              f"widths {({k: round(v) for k, v in s['width_median'].items() if v})}; memory order "
              f"{s['memory_order']}; W_O^2 first in {s['wo2_first']} of {s['n']} [{wlo:.0%}, {whi:.0%}]; "
              f"final {s['final']}; floors {s['floors']}")
        print(f"  half-way steps (median): {({k: round(v, 1) for k, v in s['halfway_median'].items()})}; rises "
              f"{({k: round(v, 3) for k, v in s['rise_median'].items()})}")
        for pair, o in s["halfway_order"].items():
            print(f"  {pair}: {o['k']} of {o['n']} [{o['wilson95'][0]:.0%}, {o['wilson95'][1]:.0%}]")
    print(f"summary: {out / 'trigger_summary.json'}; report: {out / 'report.html'}")


if __name__ == "__main__":
    main()
