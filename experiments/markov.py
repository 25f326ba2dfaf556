"""In-context Markov chains (Edelman et al. 2024; Park et al. 2025): stages, heads, prior, diversity.

Two compiled ensembles of Edelman et al.'s model (2 layers x 1 head, attention-only, d_model 16;
k = 3 states, T = 100, batch 64), each a sweep crossing a setting with 8 seeds:

- `prior`: doubly_stochastic = 0 (Dirichlet(1) rows) and 1 (Sinkhorn-projected), a fresh
  matrix every sequence. Measures: the stages uniform -> unigram -> bigram (phase timings of
  `unigram_lead` and `bigram_lead`), the heads that carry the bigram stage (per-head
  statistical-induction and previous-token attention, `analyze`'s composition scores), and the
  bigram midpoint of each seed under the two priors (paired difference with a 95% CI).
- `diversity`: n_chains = 4 (Park et al.'s finite task diversity; the same 8 seeds), whose
  fitted mixture weights show whether retrieval takes over from inference. `--diversity-values
  4,16,64,256 --diversity-steps 4000` crosses several diversities with the seeds in one
  ensemble instead, trained longer, and times Park et al.'s transience: the fresh-matrix KL
  (`kl_bigram_ood`) falling while the model infers the chain, then rising as it retrieves.

Writes runs/markov/{prior,diversity}/ (each a run directory), runs/markov/results.json and
docs/figures/markov-*.png. About 20 minutes on a shared 2-core CPU.

    python experiments/markov.py [--seeds 8] [--steps 600] [--out runs/markov]
        [--diversity-values 4] [--diversity-steps 600] [--diversity-eval-every 10] [--only diversity]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

MODEL = ["--task", "markov", "--chain-length", "100", "--n-ctx", "100", "--d-vocab", "3", "--n-states", "3",
         "--n-layers", "2", "--n-heads", "1", "--d-model", "16", "--batch-size", "64", "--eval-every", "10"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def t_interval(x: np.ndarray) -> tuple[float, float, float]:
    """Mean and 95% t interval."""
    from scipy import stats

    x = np.asarray(x, float)
    m, se = x.mean(), x.std(ddof=1) / math.sqrt(len(x))
    h = stats.t.ppf(0.975, len(x) - 1) * se
    return m, m - h, m + h


def run_sweeps(out: Path, seeds: int, steps: int, diversity: list[int], diversity_steps: int,
               diversity_eval_every: int, only: str | None) -> None:
    from induction_jax.cli import main as cli

    common = [*MODEL, "--seeds", str(seeds), "--no-progress"]
    values = ",".join(map(str, diversity))
    sweeps = {"prior": ["--steps", str(steps), "--task-param", "doubly_stochastic=0,1"],
              "diversity": ["--steps", str(diversity_steps), "--task-param", f"n_chains={values}",
                            "--max-chains", str(max(64, *diversity)), "--eval-every", str(diversity_eval_every)]}
    for name, flags in sweeps.items():
        if only in (None, name) and not (out / name / "phase" / "stats.json").is_file():
            code = cli(["sweep", *common, *flags, "--out", str(out / name)])
            if code not in (0, 3):
                raise SystemExit(code)


def timings(run: Path):
    import pandas as pd

    return pd.read_csv(run / "phase" / "timings.csv")


def crossing(steps: np.ndarray, y: np.ndarray, level: float) -> float:
    """First step where `y` reaches `level` from below, linearly interpolated between probes (NaN: never)."""
    i = np.nonzero(y >= level)[0]
    if len(i) == 0:
        return float("nan")
    i = i[0]
    if i == 0:
        return float(steps[0])
    return float(steps[i - 1] + (level - y[i - 1]) * (steps[i] - steps[i - 1]) / (y[i] - y[i - 1]))


STAGES = ("kl_uniform", "kl_unigram", "kl_bigram")


def member_stages(run: Path):
    """Per member: the sequence of closest strategies over training (argmin of the three KLs at
    each probe, repeats merged), the step the model becomes closer to unigram than to uniform
    (`unigram_lead` crosses 0), closer to bigram than to unigram (`bigram_lead` crosses 0), and
    the step its best statistical induction score reaches 0.6."""
    import pandas as pd

    m = pd.read_csv(run / "metrics.csv").dropna(subset=["kl_bigram"])
    rows = []
    for member, g in m.groupby("member"):
        g = g.sort_values("step")
        steps = g.step.to_numpy()
        closest = g[list(STAGES)].to_numpy().argmin(1)
        seq = [int(c) for i, c in enumerate(closest) if i == 0 or c != closest[i - 1]]
        rows.append({"member": int(member), "init_seed": int(g.init_seed.iloc[0]),
                     "doubly_stochastic": int(g.doubly_stochastic.iloc[0]), "n_chains": int(g.n_chains.iloc[0]),
                     "stages": [STAGES[c][3:] for c in seq],
                     "unigram_entry": crossing(steps, g.unigram_lead.to_numpy(), 0.0),
                     "bigram_entry": crossing(steps, g.bigram_lead.to_numpy(), 0.0),
                     "sis_0.6": crossing(steps, g.stat_induction_score.to_numpy(), 0.6),
                     "final_kl_bigram": float(g.kl_bigram.iloc[-1]), "final_kl_unigram": float(g.kl_unigram.iloc[-1]),
                     "final_kl_uniform": float(g.kl_uniform.iloc[-1])})
    return rows


def stage_order(run: Path) -> dict:
    """Per prior: members whose closest strategy was first uniform, then unigram, then bigram (each
    the closest for the first time in that order) and bigram at the end; and phase's plateau-rule
    timings (how many it could time)."""
    rows = member_stages(run)
    t = timings(run)
    out = {}
    for ds in (0, 1):
        g = [r for r in rows if r["doubly_stochastic"] == ds]
        n = len(g)
        # the order in which each strategy is first the closest (brief returns near a crossover are noise)
        k = sum(list(dict.fromkeys(r["stages"])) == ["uniform", "unigram", "bigram"] and r["stages"][-1] == "bigram"
                for r in g)
        kb = sum(r["stages"][-1] == "bigram" for r in g)
        ph = t[t.doubly_stochastic == ds]
        out[ds] = {"n": n, "uniform_unigram_bigram": k, "wilson": wilson(k, n), "ends_bigram": kb,
                   "ends_bigram_wilson": wilson(kb, n), "sequences": [r["stages"] for r in g],
                   "unigram_entry": [r["unigram_entry"] for r in g], "bigram_entry": [r["bigram_entry"] for r in g],
                   "sis_0.6": [r["sis_0.6"] for r in g],
                   "phase_timed": {c: int((~ph[ph.metric == c].censored).sum()) for c in ph.metric.unique()},
                   "phase_midpoints": {c: ph[(ph.metric == c) & ~ph.censored].midpoint.round(1).tolist()
                                       for c in ph.metric.unique()}}
    return out


def prior_effect(run: Path) -> dict:
    """Doubly stochastic minus Dirichlet, paired by seed: the step the model becomes closer to
    bigram than to unigram statistics, and the step its statistical induction head reaches 0.6."""
    rows = member_stages(run)
    out = {}
    for key in ("bigram_entry", "sis_0.6"):
        a = {r["init_seed"]: r[key] for r in rows if r["doubly_stochastic"] == 0}
        b = {r["init_seed"]: r[key] for r in rows if r["doubly_stochastic"] == 1}
        seeds = [s for s in a if s in b and np.isfinite(a[s]) and np.isfinite(b[s])]
        d = np.array([b[s] - a[s] for s in seeds])
        res = {"pairs": len(seeds), "dirichlet": [a[s] for s in seeds], "doubly": [b[s] for s in seeds],
               "diff_per_seed": d.tolist()}
        if len(d) >= 2:
            res["mean_diff"], res["ci_low"], res["ci_high"] = t_interval(d)
            res["doubly_earlier"] = int((d < 0).sum())
        out[key] = res
    return out


def strategy_losses(n: int = 1024) -> dict:
    """Each strategy's next-state loss on n fresh sequences of each prior (k = 3, T = 100)."""
    import jax

    from induction_jax.tasks.markov import Markov

    task = Markov(chain_length=100)
    return {ds: task.baselines(task.probe(jax.random.PRNGKey(1), {"doubly_stochastic": ds, "n_chains": 0}, n, 3))
            for ds in (0, 1)}


def heads(run: Path) -> dict:
    """Final per-head statistical induction / previous-token attention, and the composition
    scores and roles `analyze` found."""
    import pandas as pd

    h = pd.read_csv(run / "head_metrics.csv")
    last = h[h.step == h.step.max()]
    out = {}
    for metric in ("statistical_induction_score", "prev_token_attention", "k_composition_from_L0H0",
                   "positional_prev_token_score"):
        g = last[last.metric == metric]
        if len(g):
            out[metric] = {f"L{l}H{hh}": float(v) for (l, hh), v in g.groupby(["layer", "head"]).value.mean().items()}
    circuit = json.loads((run / "analysis" / "circuit.json").read_text())
    out["circuit_members"] = circuit.get("members", [])[:1]
    return out


def per_member_heads(run: Path) -> list[dict]:
    import pandas as pd

    h = pd.read_csv(run / "head_metrics.csv")
    last = h[h.step == h.step.max()].pivot_table(index="member", columns=["metric", "layer", "head"], values="value")
    rows = []
    for m in last.index:
        r = last.loc[m]
        rows.append({"member": int(m), "sis_L1": float(r[("statistical_induction_score", 1, 0)]),
                     "sis_L0": float(r[("statistical_induction_score", 0, 0)]),
                     "prev_L0": float(r[("prev_token_attention", 0, 0)]),
                     "prev_L1": float(r[("prev_token_attention", 1, 0)])})
    return rows


OOD_SMOOTH = 5          # probes in the running median of kl_bigram_ood (one probe's value is noisy)
OOD_RISE = 0.05         # nats: kl_bigram_ood's smallest change (docs/tasks/markov.md)


def unigram_level(n: int = 1024) -> float:
    """KL(in-context bigram || in-context unigram) on fresh chains (k = 3, T = 100, Dirichlet(1)):
    the fresh-matrix KL of a model that has the unigram strategy exactly. A model below it on
    unseen chains uses their transitions, which only in-context inference can do."""
    import jax
    import jax.numpy as jnp

    from induction_jax.tasks.markov import Markov, kl_to_model

    task = Markov(chain_length=100)
    own, = task.in_distribution(task.probe(jax.random.PRNGKey(2), {"n_chains": 0}, n, 3))
    p = task.strategies(own)
    return float(kl_to_model(p["bigram_inference"], jnp.log(p["unigram_inference"]), task.position_mask()))


def first_below(steps: np.ndarray, y: np.ndarray, level: float) -> float:
    """The first step at which `y` is below `level` (NaN: never)."""
    i = np.nonzero(y < level)[0]
    return float(steps[i[0]]) if len(i) else float("nan")


def transience(run: Path) -> dict:
    """Per diversity: whether retrieval takes over from inference. Per member, from the fitted
    mixture weights (bigram inference's peak against its final value, the final leader) and from
    the fresh-matrix KL, Park et al.'s OOD curve: its running median's minimum, the step of it,
    and its rise from there to the end. A member *infers* when that minimum falls below the
    unigram strategy's fresh-matrix KL (`unigram_level`), and is *transient* when it infers and
    then rises by more than OOD_RISE by the end (it had learned to infer unseen chains, then
    lost it): both rules fixed before the diversity sweep was run."""
    import pandas as pd

    m = pd.read_csv(run / "metrics.csv").dropna(subset=["w_bigram_retrieval"])
    level = unigram_level()
    out = {"unigram_level": level}
    for n_chains, gn in m.groupby("n_chains"):
        rows = []
        for member, g in gn.groupby("member"):
            g = g.sort_values("step")
            inf, ret = g.w_bigram_inference.to_numpy(), g.w_bigram_retrieval.to_numpy()
            steps = g.step.to_numpy()
            peak = int(np.argmax(inf))
            over = np.nonzero(ret > inf)[0]
            row = {"member": int(member), "seed": int(g.init_seed.iloc[0]), "peak_inference_weight": float(inf[peak]),
                   "peak_inference_step": int(steps[peak]), "final_inference_weight": float(inf[-1]),
                   "final_retrieval_weight": float(ret[-1]),
                   "retrieval_leads_from": int(steps[over[0]]) if len(over) else None,
                   "final_kl_bigram": float(g.kl_bigram.iloc[-1]),
                   "final_kl_bigram_retrieval": float(g.kl_bigram_retrieval.iloc[-1])}
            if "kl_bigram_ood" in g:
                ood = g.kl_bigram_ood.rolling(OOD_SMOOTH, center=True, min_periods=1).median().to_numpy()
                lo = int(np.argmin(ood))
                own = g.kl_bigram.rolling(OOD_SMOOTH, center=True, min_periods=1).median().to_numpy()
                row |= {"ood_min": float(ood[lo]), "ood_min_step": int(steps[lo]), "ood_final": float(ood[-1]),
                        "ood_rise": float(ood[-1] - ood[lo]),
                        "final_kl_bigram_ood": float(g.kl_bigram_ood.iloc[-1]),
                        # first probe below the unigram strategy's level: on unseen chains, on its own
                        "below_unigram_ood_step": first_below(steps, ood, level),
                        "below_unigram_own_step": first_below(steps, own, level)}
            rows.append(row)
        res = {"n": len(rows), "per_member": rows}
        k = sum(r["final_retrieval_weight"] > r["final_inference_weight"] for r in rows)
        res["retrieval_wins_final"], res["retrieval_wins_wilson"] = k, wilson(k, len(rows))
        trans = sum(r["peak_inference_weight"] > r["final_inference_weight"] + 0.1 for r in rows)
        res["inference_transient"], res["inference_transient_wilson"] = trans, wilson(trans, len(rows))
        if all("ood_rise" in r for r in rows):
            for r in rows:
                r["infers"] = r["ood_min"] < level
                r["transient"] = r["infers"] and r["ood_rise"] > OOD_RISE
            i = sum(r["infers"] for r in rows)
            t = sum(r["transient"] for r in rows)
            res["ood_infers"], res["ood_infers_wilson"] = i, wilson(i, len(rows))
            res["ood_transient"], res["ood_transient_wilson"] = t, wilson(t, len(rows))
            for r in rows:
                r["generalisation_lag"] = r["below_unigram_ood_step"] - r["below_unigram_own_step"]
            for key in ("ood_min", "ood_final", "ood_rise", "ood_min_step", "final_inference_weight",
                        "final_retrieval_weight", "below_unigram_own_step", "below_unigram_ood_step",
                        "generalisation_lag"):
                v = np.array([r[key] for r in rows], float)
                v = v[np.isfinite(v)]
                res[key + "_median_range"] = ([float(np.median(v)), float(v.min()), float(v.max()), len(v)]
                                              if len(v) else None)
        out[int(n_chains)] = res
    return out


def figures(out: Path, figdir: Path, only: str | None = None, diversity_name: str = "markov-diversity.png") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    if only != "diversity":
        prior_figures(out, figdir, plt, pd)
    if only != "prior":
        diversity_figure(out, figdir / diversity_name, plt, pd)


def prior_figures(out: Path, figdir: Path, plt, pd) -> None:
    m = pd.read_csv(out / "prior" / "metrics.csv").dropna(subset=["kl_bigram"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, ds in zip(axes, (0, 1)):
        g = m[m.doubly_stochastic == ds]
        for name, colour in (("kl_uniform", "C0"), ("kl_unigram", "C1"), ("kl_bigram", "C2")):
            for _, gm in g.groupby("member"):
                ax.plot(gm.step, gm[name], color=colour, alpha=0.35, lw=0.8)
            mean = g.groupby("step")[name].mean()
            ax.plot(mean.index, mean.values, color=colour, lw=2, label=f"KL({name[3:]} || model)")
        ax.set_title(["Dirichlet(1) rows", "doubly stochastic (Sinkhorn)"][ds] + f", {g.member.nunique()} seeds")
        ax.set_xlabel("step")
    axes[0].set_ylabel("nats (mean over positions)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figdir / "markov-stages.png", dpi=120)
    plt.close(fig)

    h = pd.read_csv(out / "prior" / "head_metrics.csv")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
    for ax, ds in zip(axes, (0, 1)):
        members = m[m.doubly_stochastic == ds].member.unique()
        for metric, (layer, colour) in (("statistical_induction_score", (1, "C3")), ("prev_token_attention", (0, "C4"))):
            g = h[(h.metric == metric) & (h.layer == layer) & h.member.isin(members)]
            for _, gm in g.groupby("member"):
                ax.plot(gm.step, gm.value, color=colour, alpha=0.4, lw=0.8)
            mean = g.groupby("step").value.mean()
            ax.plot(mean.index, mean.values, color=colour, lw=2, label=f"{metric} L{layer}H0")
        ax.set_title(["Dirichlet(1) rows", "doubly stochastic"][ds])
        ax.set_xlabel("step")
    axes[0].set_ylabel("attention mass")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figdir / "markov-heads.png", dpi=120)
    plt.close(fig)


def diversity_figure(out: Path, path: Path, plt, pd) -> None:
    d = pd.read_csv(out / "diversity" / "metrics.csv").dropna(subset=["w_bigram_retrieval"])
    values = sorted(d.n_chains.unique())
    ood = "kl_bigram_ood" in d
    fig, axes = plt.subplots(1 + ood, len(values), figsize=(4.2 * len(values), 3.2 * (1 + ood)), squeeze=False,
                             sharex=True)
    for j, n_chains in enumerate(values):
        dn = d[d.n_chains == n_chains]
        ax = axes[0, j]
        for name, colour in (("w_unigram_inference", "C1"), ("w_bigram_inference", "C2"),
                             ("w_unigram_retrieval", "C5"), ("w_bigram_retrieval", "C3")):
            for _, gm in dn.groupby("member"):
                ax.plot(gm.step, gm[name], color=colour, alpha=0.3, lw=0.8)
            mean = dn.groupby("step")[name].mean()
            ax.plot(mean.index, mean.values, color=colour, lw=2, label=name[2:].replace("_", " "))
        ax.set_title(f"n_chains = {n_chains} ({dn.member.nunique()} seeds)")
        ax.set_ylabel("fitted mixture weight") if j == 0 else None
        if ood:
            ax = axes[1, j]
            for _, gm in dn.groupby("member"):
                ax.plot(gm.step, gm.kl_bigram_ood.rolling(OOD_SMOOTH, center=True, min_periods=1).median(),
                        color="C0", alpha=0.5, lw=0.8)
            ax.plot(dn.groupby("step").kl_bigram_ood.mean(), color="C0", lw=2, label="fresh matrices (OOD)")
            ax.plot(dn.groupby("step").kl_bigram.mean(), color="C2", lw=2, ls="--", label="own chains (ID)")
            ax.set_ylabel("KL(bigram inference || model)") if j == 0 else None
            ax.set_xlabel("step")
    axes[0, 0].legend(fontsize=7)
    if ood:
        axes[1, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", default="runs/markov")
    parser.add_argument("--figures", default="docs/figures")
    parser.add_argument("--diversity-values", default="4", help="n_chains values crossed with the seeds")
    parser.add_argument("--diversity-steps", type=int, help="steps of the diversity ensemble (default --steps)")
    parser.add_argument("--diversity-eval-every", type=int, default=10)
    parser.add_argument("--only", choices=("prior", "diversity"), help="train and report one ensemble")
    parser.add_argument("--diversity-figure", default="markov-diversity.png", help="its file name in --figures")
    args = parser.parse_args()
    from induction_jax import use_cpu_cores

    use_cpu_cores()
    out = Path(args.out)
    diversity = [int(v) for v in args.diversity_values.split(",")]
    run_sweeps(out, args.seeds, args.steps, diversity, args.diversity_steps or args.steps, args.diversity_eval_every,
               args.only)
    results = {}
    if args.only in (None, "prior"):
        results |= {"strategy_losses": strategy_losses(), "stages": stage_order(out / "prior"),
                    "prior_effect": prior_effect(out / "prior"), "heads": heads(out / "prior"),
                    "heads_per_member": per_member_heads(out / "prior")}
    if args.only in (None, "diversity"):
        results["transience"] = transience(out / "diversity")
    name = "results.json" if args.only is None else f"results-{args.only}.json"
    (out / name).write_text(json.dumps(results, indent=1, default=float))
    figures(out, Path(args.figures), args.only, args.diversity_figure)
    print(json.dumps({k: v for k, v in results.items() if k != "heads"}, indent=1, default=float)[:6000])


if __name__ == "__main__":
    main()
