"""How much of the in-context score on text do the prefix-matching heads carry? (Olsson et al.
2022, Argument 4: knocking out induction heads in small models at test time removes much of their
in-context learning; attention-only models more than models with MLPs.)

For each trained text run under `--runs` (`experiments/text_phase_change.py` trains them; each
must keep its final checkpoint), runs `induction-jax analyze` with the knock-outs
(`analysis.knockout`: every head alone, the top-k heads by prefix-matching score together, and
every k-subset of the other heads as the control; mean- and zero-ablation; the in-context score
on `--batch` held-out windows per member) and reports per architecture, over members: the
fraction of the in-context score lost by the named heads and by the controls (mean, Student-t
95% CI), the paired difference, in how many members the named heads lose more than every
control (exact 95% interval), and a figure of every head's loss against its prefix-matching
score. docs/studies/text-knockout.md.

    python experiments/text_knockout.py [--runs runs/text-knockout] [--arch "2-layer MLP+LN"] [--batch 512] [--heads 2]

A run whose analysis already holds these knock-outs (the same checkpoint step, batch and k) is
read, not analysed again (`--reanalyse` to force it).
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from induction_jax import use_cpu_cores
from induction_jax.analysis.knockout import MODES
from induction_jax.analysis.run import analyze_run
from induction_jax.phase.stats import mean_ci
from induction_jax.report.findings import exact_ci
from induction_jax.rundir import RunDir, json_safe, write_json_atomic, write_text_atomic


def read_knockouts(analysis: Path) -> dict:
    """knockout.csv as arrays per member: the single heads' (layer, head, prefix score, fraction
    lost per mode) and, per k, the named set's and the controls' fractions lost."""
    import csv

    rows = list(csv.DictReader((analysis / "knockout.csv").open()))
    E = 1 + max(int(r["member"]) for r in rows)
    out = {"clean": np.zeros(E), "single": [[] for _ in range(E)], "named": {}, "controls": {}}
    for r in rows:
        e, k = int(r["member"]), int(r["k"])
        out["clean"][e] = float(r[[c for c in r if c.startswith("clean_")][0]])
        lost = {m: float(r[f"fraction_lost_{m}"]) for m in MODES}
        if r["kind"] == "single":
            layer, head = (int(x) for x in r["heads"][1:].split("H"))
            out["single"][e].append((layer, head, float(r["prefix_matching_sum"]), lost))
        elif r["kind"] == "named":
            out["named"].setdefault(k, [None] * E)[e] = (r["heads"], lost)
        else:
            out["controls"].setdefault(k, [[] for _ in range(E)])[e].append(lost)
    # k = 1: the single head with the highest prefix-matching score, the other single heads as controls
    out["named"][1], out["controls"][1] = [], []
    for e in range(E):
        best = max(range(len(out["single"][e])), key=lambda i: out["single"][e][i][2])
        layer, head, _, lost = out["single"][e][best]
        out["named"][1].append((f"L{layer}H{head}", lost))
        out["controls"][1].append([s[3] for i, s in enumerate(out["single"][e]) if i != best])
    return out


def done_analysis(run_path: Path, batch: int, k: int) -> Path | None:
    """The run's analysis directory if it already holds the knock-outs asked for: its circuit.json
    describes the run's latest checkpoint, with knock-outs on `batch` windows up to `k` heads."""
    from induction_jax.api import open_run

    circuit_path = run_path / "analysis" / "circuit.json"
    if not circuit_path.is_file() or not (run_path / "analysis" / "knockout.csv").is_file():
        return None
    circuit = json.loads(circuit_path.read_text())
    steps = open_run(run_path).checkpoint_steps()
    knocked = circuit.get("knockout") or {}
    sizes = {b["k"] for m in knocked.get("members", []) for b in m["by_k"]}
    if steps and circuit.get("checkpoint_step") == max(steps) and knocked.get("batch") == batch \
            and sizes == set(range(1, k + 1)):
        return run_path / "analysis"
    return None


def _stat(v) -> dict:
    v = np.asarray(v, float)
    ok = v[np.isfinite(v)]                 # NaN: a member with no in-context score to lose
    ci = mean_ci(ok)
    return {"mean": float(ok.mean()) if len(ok) else float("nan"), "ci95": list(ci) if ci else None,
            "min": float(ok.min()) if len(ok) else float("nan"), "max": float(ok.max()) if len(ok) else float("nan"),
            "n": len(ok), "values": v.tolist()}


def summarise(k: dict, mode: str) -> dict:
    E = len(k["clean"])
    out = {"clean": _stat(k["clean"])}
    for size in sorted(k["named"]):
        named = np.array([k["named"][size][e][1][mode] for e in range(E)])
        ctrl = [np.array([c[mode] for c in k["controls"][size][e]]) for e in range(E)]
        med = np.array([np.median(c) for c in ctrl])
        beats = int(sum(named[e] > ctrl[e].max() for e in range(E)))
        out[f"k{size}"] = {"heads": [k["named"][size][e][0] for e in range(E)], "named": _stat(named),
                           "controls_median": _stat(med), "difference": _stat(named - med),
                           "named_beats_every_control": beats, "beats_ci95": list(exact_ci(beats, E)),
                           "n_controls": len(ctrl[0])}
    return out


def layer_stats(k: dict, mode: str) -> dict:
    """The single-head knock-outs by layer: each layer's heads' mean fraction lost (mean over
    members of the per-member mean), in how many members the top prefix-matching head is the
    costliest head of its own layer (with the chance tail P(X >= count) for 1 in that layer's
    heads), and the Spearman correlation of prefix-matching score and fraction lost over that
    layer's heads, pooled across members."""
    from scipy import stats

    single = k["single"]
    E = len(single)
    layers = sorted({s[0] for member in single for s in member})
    per_layer = {}
    for layer in layers:
        v = np.array([np.mean([s[3][mode] for s in member if s[0] == layer]) for member in single])
        per_layer[layer] = {"mean": float(v.mean()), "min": float(v.min()), "max": float(v.max())}
    top_layers, costliest, pm, lost = [], 0, [], []
    for member in single:
        top = max(member, key=lambda s: s[2])
        same = [s for s in member if s[0] == top[0]]
        top_layers.append(top[0])
        costliest += int(max(same, key=lambda s: s[3][mode])[1] == top[1])
    layer = max(set(top_layers), key=top_layers.count)        # the layer the top heads are in, most often
    heads_in_layer = {s[1] for member in single for s in member if s[0] == layer}
    for member in single:
        pm += [s[2] for s in member if s[0] == layer]
        lost += [s[3][mode] for s in member if s[0] == layer]
    rho, p = stats.spearmanr(pm, lost)
    return {"per_layer": per_layer, "top_head_layers": top_layers,
            "top_is_costliest_in_its_layer": costliest, "members": E,
            "chance_tail": float(stats.binom.sf(costliest - 1, E, 1 / len(heads_in_layer))),
            "spearman_layer": layer, "spearman_rho": float(rho), "spearman_p": float(p), "spearman_n": len(pm)}


def figure(results: dict, path: Path) -> None:
    """Every head's fraction of the in-context score lost (mean-ablation, alone) against its
    prefix-matching score, one panel per architecture, colour = layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 3.8), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        for member in results[name]["knockouts"]["single"]:
            for layer, _, pm, lost in member:
                ax.scatter(pm, lost["mean"], s=14, color=f"C{layer}", alpha=0.7,
                           label=f"layer {layer}")
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        ax.legend(seen.values(), seen.keys(), fontsize=8)
        ax.axhline(0, color="gray", lw=0.6)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("prefix-matching score")
    axes[0, 0].set_ylabel("fraction of in-context score lost\n(head mean-ablated alone)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_text_atomic(path, buf.getvalue())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", default="runs/text-knockout", help="a folder of text runs (one per architecture)")
    p.add_argument("--batch", type=int, default=512, help="held-out windows per member")
    p.add_argument("--heads", type=int, default=2, help="knock out the top 1..K prefix-matching heads")
    p.add_argument("--figure", default="docs/figures/text-knockout.png")
    p.add_argument("--arch", action="append", help="only the runs of these architectures (as the report names "
                                                   "them, e.g. '2-layer MLP+LN'; default: every run under --runs)")
    p.add_argument("--reanalyse", action="store_true", help="analyse every run again, even one whose analysis "
                                                            "already holds these knock-outs")
    args = p.parse_args()
    use_cpu_cores()
    results = {}
    for run_path in sorted(Path(args.runs).iterdir()):
        if not RunDir(run_path).is_run():
            continue
        cfg = RunDir(run_path).read_config()
        name = f"{cfg.model.n_layers}-layer " + ("MLP+LN" if cfg.model.d_mlp else "attn-only+LN" if cfg.model.layer_norm
                                                 else "attn-only")
        if args.arch and name not in args.arch:
            continue
        tic = time.perf_counter()
        analysis = None if args.reanalyse else done_analysis(run_path, args.batch, args.heads)
        if analysis is None:
            analysis = analyze_run(run_path, knockout_k=args.heads, knockout_batch=args.batch)
        else:
            print(f"{run_path}: its analysis already holds these knock-outs; read, not run again")
        seconds = time.perf_counter() - tic
        circuit = json.loads((analysis / "circuit.json").read_text())
        k = read_knockouts(analysis)
        results[name] = {"run": str(run_path), "checkpoint_step": circuit["checkpoint_step"], "seconds": seconds,
                         "knockouts": k, **{mode: summarise(k, mode) for mode in MODES},
                         "by_layer": {mode: layer_stats(k, mode) for mode in MODES}}
        print(f"\n{name} ({run_path}, step {circuit['checkpoint_step']}, analysis {seconds:.0f} s; "
              f"{len(k['clean'])} members, {args.batch} held-out windows each)")
        c = results[name]["mean"]["clean"]
        print(f"  clean in-context score: mean {c['mean']:.3f} (range {c['min']:.3f}..{c['max']:.3f})")
        for mode in MODES:
            s = results[name][mode]
            for size in sorted(s):
                if not size.startswith("k"):
                    continue
                e = s[size]
                ci = lambda d: "n/a" if d["ci95"] is None else f"[{d['ci95'][0]:.2f}, {d['ci95'][1]:.2f}]"
                print(f"  {mode}-ablation, top-{size[1:]} heads ({', '.join(sorted(set(e['heads'])))}): lost "
                      f"{e['named']['mean']:.2f} {ci(e['named'])}; other {size[1:]} heads (median of "
                      f"{e['n_controls']}) {e['controls_median']['mean']:.2f} {ci(e['controls_median'])}; "
                      f"difference {e['difference']['mean']:.2f} {ci(e['difference'])}; named above every control "
                      f"in {e['named_beats_every_control']} of {len(e['heads'])} "
                      f"[{e['beats_ci95'][0]:.0%}, {e['beats_ci95'][1]:.0%}]")
        b = results[name]["by_layer"]["mean"]
        print("  mean-ablation, single heads by layer: " + "; ".join(
            f"layer {layer} mean {v['mean']:.2f} (per member {v['min']:.2f}..{v['max']:.2f})"
            for layer, v in b["per_layer"].items()))
        print(f"  the top prefix-matching head is the costliest of its layer in {b['top_is_costliest_in_its_layer']} "
              f"of {b['members']} (by chance P(that many or more) = {b['chance_tail']:.3f}); Spearman of prefix "
              f"matching and fraction lost over layer {b['spearman_layer']}'s {b['spearman_n']} heads: "
              f"{b['spearman_rho']:.2f} (p = {b['spearman_p']:.3f})")
    out = Path(args.runs) / "knockout_summary.json"
    write_json_atomic(out, json_safe({"args": vars(args), "architectures": results}))
    figure(results, Path(args.figure))
    print(f"\nwrote {out} and {args.figure}")


if __name__ == "__main__":
    main()
