"""Burstiness B and number of classes K per member, crossed with 8 seeds in one compiled ensemble.

Reddy (2023) and Chan et al. (2022): in-context learning (ICL) is favoured by bursty contexts and
many classes, in-weights learning (IWL) by the opposite. This trains the bursty task
(docs/tasks/bursty.md) with B in {1, 4} x K in {32, 512} x 8 seeds = 32 members in one program
(`sweep --task-param`), times ICL accuracy and the induction score per member with `phase`, and
writes per setting: final ICL / swapped-label ICL / IWL accuracy (mean over seeds, 95% t
interval), members whose ICL curve rose (phase not censored; Wilson 95% interval), and per member
the ICL midpoint minus the induction-score midpoint. About 20 minutes on a loaded 2-core CPU.

    python experiments/bursty.py [--seeds 8] [--steps 500] [--out runs/bursty] [--b-values 1,4] [--k-values 32,512]

Gaussian items (Reddy's form; docs/studies/bursty.md, "Gaussian items"), about 25 minutes here:

    python experiments/bursty.py --items gaussian --seeds 8 --steps 24000 --b-values 1,4 \
        --k-values 512,2048 --out runs/bursty-gaussian --figure docs/figures/bursty-gaussian.png \
        --phase-from-step 2000 --phase-smooth-steps 1000

Writes the run directory `--out` (with `bursty_study.json`) and docs/figures/bursty-curves.png.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from induction_jax import use_cpu_cores

B_VALUES, K_VALUES = (1, 4), (32, 512)
# the member parameters crossed (name -> values; `--zipf-values` / `--eps-values` add theirs)
GRID: dict[str, tuple] = {"burstiness": B_VALUES, "n_classes": K_VALUES}
SHORT = {"burstiness": "B", "n_classes": "K", "zipf": "zipf", "epsilon": "eps"}


def settings():
    """Every crossed setting, as {name: value}."""
    import itertools

    return [dict(zip(GRID, combo)) for combo in itertools.product(*GRID.values())]


def label(setting: dict) -> str:
    return " ".join(f"{SHORT[k]}={v:g}" for k, v in setting.items())


def members_of(members: dict, setting: dict) -> list[int]:
    return [i for i in range(len(members["init_seed"])) if all(members[k][i] == v for k, v in setting.items())]
FINAL = ("icl_accuracy", "icl_swap_accuracy", "swap_iwl_fraction", "iwl_accuracy", "induction_score")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def t_interval(x) -> tuple[float, float, float]:
    from scipy import stats

    x = np.asarray(x, float)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def config(args):
    """The study's configuration: 2-layer attention-only, one head per layer (as Reddy). Token
    items: d_model 32, L = 16, K <= 512, lr 1e-2 (the first study). Gaussian items (`--items
    gaussian`, Reddy's form and defaults L = 32, N = 8, eps = 0.1): d_model 64 (Reddy's D = 63),
    E = 2 noise draws per class, 64 novel classes, lr 1e-3, probes on 192 sequences."""
    from induction_jax.config import RunConfig
    from induction_jax.tasks.bursty import Bursty

    if args.items == "gaussian":
        task = Bursty(bursty_items="gaussian", bursty_pairs=8, bursty_labels=32, bursty_max_classes=max(K_VALUES),
                      bursty_classes=max(K_VALUES), bursty_exemplars=2, bursty_novel=64, bursty_probe_copies=2,
                      bursty_fraction=1.0, bursty_epsilon=args.epsilon)
        return RunConfig().replace(task=task, d_vocab=task.vocab_needed, n_ctx=task.seq_len, n_layers=2, n_heads=1,
                                   d_model=64, batch_size=32, probe_batch_size=192, lr=1e-3, eval_every=200,
                                   seeds=args.seeds, steps=args.steps)

    task = Bursty(bursty_pairs=8, bursty_labels=16, bursty_max_classes=512, bursty_classes=512,
                  bursty_exemplars=1, bursty_novel=32, bursty_probe_copies=2, bursty_fraction=1.0)
    return RunConfig().replace(task=task, d_vocab=task.vocab_needed, n_ctx=task.seq_len, n_layers=2, n_heads=1,
                               d_model=32, batch_size=32, probe_batch_size=96, lr=1e-2, eval_every=20,
                               seeds=args.seeds, steps=args.steps)


def summarise(out: Path) -> dict:
    import pandas as pd

    members = json.loads((out / "config.json").read_text())["members"]
    m = pd.read_csv(out / "metrics.csv").dropna(subset=["icl_accuracy"])
    last = m[m.step == m.step.max()].set_index("member")
    timings = pd.read_csv(out / "phase" / "timings.csv")
    rows = []
    for setting in settings():
        idx = members_of(members, setting)
        row = {**setting, "n": len(idx)}
        for name in FINAL:
            row[name] = t_interval(last.loc[idx, name])
        for curve in ("icl_accuracy", "iwl_accuracy", "induction_score"):
            t = timings[(timings.metric == curve) & timings.member.isin(idx)]
            rose = int((~t.censored.astype(bool)).sum())
            row[f"{curve}_rose"] = [rose, len(idx), *wilson(rose, len(idx))]
            row[f"{curve}_midpoints"] = t.midpoint.round(1).tolist()
        icl = timings[(timings.metric == "icl_accuracy") & timings.member.isin(idx)].set_index("member").midpoint
        ind = timings[(timings.metric == "induction_score") & timings.member.isin(idx)].set_index("member").midpoint
        lag = (icl - ind).dropna()
        row["icl_minus_induction_midpoint"] = lag.round(1).tolist()
        rows.append(row)
    return {"settings": rows}


def trained_class_attention(out: Path, n: int = 200) -> dict:
    """Per setting, from each member's final weights: the last layer's attention from the query to
    the labels of its class's context items on sequences of the member's own training
    distribution (trained classes, own labels), and the accuracy there; beside the same on the
    probe's novel-class part. The in-training `induction_score` sees the novel part only."""
    import jax
    import jax.numpy as jnp

    import induction_jax as ij
    from induction_jax import model as model_lib, training
    from induction_jax.tasks import bursty as bt

    run = ij.open_run(out)
    cfg, table = run.config, run.members.table()
    task, rows = cfg.task, {}
    for i in range(len(table["init_seed"])):
        given = {k: (jnp.int32 if k in ("burstiness", "n_classes") else jnp.float32)(table[k][i]) for k in GRID}
        _, data_key, _ = training.member_keys(cfg, jnp.uint32(table["init_seed"][i]), jnp.uint32(table["data_seed"][i]))
        tp = training.member_task_params(cfg, data_key, given)
        params = {k: jnp.asarray(v) for k, v in run.params(member=i).items()}
        row = []
        for batch in (task.sample(jax.random.PRNGKey(7), tp, n, cfg.model.d_vocab),
                      task.probe(jax.random.PRNGKey(8), tp, 3 * n, cfg.model.d_vocab)):
            logits, acts = model_lib.forward(cfg.model, params, batch["tokens"], return_activations=True)
            att_BH = (acts.pattern_BLHTS[:, -1, :, -1, :] * bt.query_label_mask(task.item_classes(batch["tokens"]))[:, None, :]).sum(-1)
            keep = batch["kind"] == bt.NOVEL if "kind" in batch else jnp.ones(len(att_BH), bool)
            row += [float(att_BH[keep].mean(0).max()), float(bt.label_accuracy(logits, batch["answer"], task.bursty_labels)[keep].mean())]
        rows.setdefault(label({k: table[k][i] for k in GRID}), []).append(row)
    names = ("training_attention", "training_accuracy", "novel_attention", "novel_accuracy")
    return {k: {name: [round(x, 3) for x in col] for name, col in zip(names, np.asarray(v).T)} for k, v in rows.items()}


def figure(out: Path, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    m = pd.read_csv(out / "metrics.csv").dropna(subset=["icl_accuracy"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharex=True)
    palette = (["tab:blue", "tab:cyan", "tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink"])
    for ax, name in zip(axes, ("icl_accuracy", "iwl_accuracy", "induction_score")):
        for setting, colour in zip(settings(), palette):
            g = m[np.logical_and.reduce([np.isclose(m[k], v) for k, v in setting.items()])]
            for _, member in g.groupby("member"):
                ax.plot(member.step, member[name], color=colour, alpha=0.2, lw=0.7)
            mean = g.groupby("step")[name].mean()
            ax.plot(mean.index, mean.values, color=colour, lw=2, label=label(setting).replace(" ", ", "))
        ax.set_title(name)
        ax.set_xlabel("step")
    n_labels = json.loads((out / "config.json").read_text())["config"]["task"]["bursty_labels"]
    axes[0].axhline(1 / n_labels, color="k", ls=":", lw=1)
    axes[0].axhline(1 / 4, color="k", ls="--", lw=1)          # a random label of the 4 in the probe's context
    axes[0].legend(fontsize=8)
    fig.suptitle("bursty task: 8 seeds per setting (thin: members, thick: mean); dotted: chance 1/L, "
                 "dashed: a random label of the context's 4")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("runs/bursty"))
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/bursty-curves.png"))
    parser.add_argument("--b-values", default="1,4", help="burstiness values B")
    parser.add_argument("--k-values", default="32,512", help="numbers of classes K (token items: at most 512)")
    parser.add_argument("--items", choices=("tokens", "gaussian"), default="tokens",
                        help="token items (the first study) or Gaussian items (Reddy's form)")
    parser.add_argument("--epsilon", type=float, default=0.1, help="Gaussian items: within-class noise (Reddy: 0.1)")
    parser.add_argument("--zipf-values", default="", help="Zipf exponents crossed in as well (none: the task's 0)")
    parser.add_argument("--eps-values", default="", help="epsilon values crossed in as well (none: --epsilon)")
    parser.add_argument("--phase-from-step", type=float, default=0,
                        help="time transitions after this step (phase --from-step: past the fast first rise)")
    parser.add_argument("--phase-smooth-steps", type=float, default=10, help="phase --smooth-steps")
    args = parser.parse_args()
    global B_VALUES, K_VALUES
    B_VALUES = tuple(int(v) for v in args.b_values.split(","))
    K_VALUES = tuple(int(v) for v in args.k_values.split(","))
    GRID.update(burstiness=B_VALUES, n_classes=K_VALUES)
    if args.zipf_values:
        GRID["zipf"] = tuple(float(v) for v in args.zipf_values.split(","))
    if args.eps_values:
        GRID["epsilon"] = tuple(float(v) for v in args.eps_values.split(","))
    use_cpu_cores()
    import induction_jax as ij

    start = time.time()
    if not (args.out / "phase" / "timings.csv").is_file():
        run = ij.sweep(config(args), args.out, task_params={k: list(v) for k, v in GRID.items()},
                       progress=True, overwrite=True)
        run.phase(from_step=args.phase_from_step, smooth_steps=args.phase_smooth_steps)
    summary = summarise(args.out) | {"command": "python experiments/bursty.py --seeds %d --steps %d --out %s --b-values %s "
                                     "--k-values %s --items %s --epsilon %g --phase-from-step %g --phase-smooth-steps %g%s%s"
                                     % (args.seeds, args.steps, args.out, args.b_values, args.k_values, args.items,
                                        args.epsilon, args.phase_from_step, args.phase_smooth_steps,
                                        f" --zipf-values {args.zipf_values}" if args.zipf_values else "",
                                        f" --eps-values {args.eps_values}" if args.eps_values else ""),
                                     "wall_s": round(time.time() - start, 1)}
    summary["trained_class_attention"] = trained_class_attention(args.out)
    (args.out / "bursty_study.json").write_text(json.dumps(summary, indent=1))
    figure(args.out, args.figure)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
