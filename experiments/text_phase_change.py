"""Olsson et al.'s phase change on natural text: does the in-context score jump when the
prefix-matching heads form, in 2-layer models but not in 1-layer ones?

Trains one ensemble per architecture (1-layer attention-only, 2-layer attention-only, 2-layer
with MLPs and LayerNorm; `--seeds` members each, init seed = data seed) on the text task, runs
`phase` on each, times every member's in-context score and its best head's prefix-matching
score by the study's rule (`half_rise`), and reports per architecture: how many members show
each transition (exact 95% intervals), onsets and midpoints, and the lag in-context -
prefix-matching (median over the members where both formed, bootstrap 95% CI of the median),
with a figure of every member's curves. docs/studies/text-phase-change.md.

    python experiments/text_phase_change.py [--seeds 8] [--steps 15000] [--out runs/text-phase-change]
    python experiments/text_phase_change.py --analyse-only      # the numbers again, from the runs
"""

from __future__ import annotations

import argparse
import io
import time
from pathlib import Path

import numpy as np

from induction_jax import use_cpu_cores
from induction_jax.config import RunConfig
from induction_jax.dynamics.formation import lags
from induction_jax.metrics import metric_matrix, read_metrics
from induction_jax.phase.detect import FRACTIONS, first_crossing, moving_average, window_points
from induction_jax.phase.run import phase_run
from induction_jax.report.findings import exact_ci
from induction_jax.rundir import json_safe, write_json_atomic, write_text_atomic
from induction_jax.runner import train_or_resume
from induction_jax.tasks.text import Text

ICL, PM = "in_context_score", "prefix_matching"
# Smallest change that counts as a transition, measured from `--from-step` on: the in-context
# score (nats) as the task says; the prefix-matching score of the best head (attention mass) at
# 0.01, since at this scale it rises from about 0.002 to 0.04-0.10, under the task's 0.2.
ICL_MIN_RISE, PM_MIN_RISE = 0.1, 0.01


def architectures(d_model: int) -> dict[str, dict]:
    """Every architecture `--arch` may name; the study trains the first three unless told."""
    return {"2-layer attn-only": {"n_layers": 2, "d_mlp": 0, "layer_norm": False},
            "1-layer attn-only": {"n_layers": 1, "d_mlp": 0, "layer_norm": False},
            "2-layer MLP+LN": {"n_layers": 2, "d_mlp": 4 * d_model, "layer_norm": True},
            # no MLPs, with LayerNorm: separates what the MLPs and what the LayerNorm change
            "2-layer attn-only+LN": {"n_layers": 2, "d_mlp": 0, "layer_norm": True}}


STUDY_ARCHS = ("2-layer attn-only", "1-layer attn-only", "2-layer MLP+LN")


# What this project's 2-core CPU sustained training these models, in the model FLOPs below:
# 60 GFLOP/s at d_model 64 with MLPs (1.5 steps/s of 8 members at batch 32, vocabulary 512),
# 100 at d_model 128 (0.35 steps/s at batch 64, vocabulary 1024). The estimate is within 30% of both.
CPU_FLOPS = 75e9


def train_flops(args, arch: dict) -> float:
    """Model FLOPs of the whole training of one ensemble: 6 x parameters x tokens for the matrix
    products, and 12 x T x d_model per token and layer for the attention scores and mix."""
    D, L, V, T = args.d_model, arch["n_layers"], args.d_vocab, args.n_ctx
    params = 2 * V * D + T * D + L * (4 * D * D + 2 * D * arch["d_mlp"])
    tokens = args.seeds * args.steps * args.batch_size * T
    return tokens * (6 * params + 12 * L * T * D)


def config(args, arch: dict) -> RunConfig:
    cfg = RunConfig().replace(
        task="text", corpus=args.corpus, corpus_max_bytes=args.corpus_max_bytes, tokenizer="bpe",
        text_length=args.n_ctx, d_vocab=args.d_vocab, n_ctx=args.n_ctx,
        d_model=args.d_model, n_heads=args.n_heads, batch_size=args.batch_size, probe_batch_size=args.probe_batch_size,
        seeds=args.seeds, steps=args.steps, lr=args.lr, eval_every=args.eval_every, chunk_steps=args.chunk_steps,
        checkpoint_every=args.steps, **arch)
    # the digest config.json records, so that a rerun finds its finished run equal and reuses it
    return cfg.replace(corpus_digest=cfg.task.to_dict()["corpus_digest"])


def half_rise(steps, values_EN, from_step: float, span: float, min_rise: float, direction: int) -> dict:
    """The timing rule of docs/studies/text-phase-change.md, on the curve from `from_step` on (after
    the first steps' dip, while every model learns position-dependent token statistics): smoothed over
    `span` steps, s0 = mean of its first 5%, s1 = of its last 10%; onset / midpoint / end = the
    first crossing of 10 / 50 / 90% of the way (interpolated); NaN where the rise, in the curve's
    direction, is under `min_rise` (no transition)."""
    sel = steps >= from_step
    t = steps[sel]
    s = moving_average(values_EN[:, sel], window_points(float(np.median(np.diff(t))), span))
    n = s.shape[1]
    s0, s1 = s[:, : max(1, round(0.05 * n))].mean(1), s[:, -max(1, round(0.10 * n)):].mean(1)
    formed = (s1 - s0) * direction >= min_rise
    progress = (s - s0[:, None]) / np.where(s1 != s0, s1 - s0, 1.0)[:, None]
    return {k: np.where(formed, first_crossing(t, progress, f), np.nan) for k, f in FRACTIONS.items()} | {
        "s0": s0, "s1": s1}


def bump_steps(steps, loss_EN, from_step: float, span: float, n_grid: int = 60, edge: int = 3) -> np.ndarray:
    """Per member, where the held-out loss falls fastest per log-step (Olsson et al.'s bump, in
    the rate -dL/dlog t): the curve from `from_step` on, smoothed over `span` steps, on `n_grid`
    log-spaced points; the step of the largest rate away from the `edge` points at either end
    (there the smoothing and the start of training dominate)."""
    sel = steps >= from_step
    t = steps[sel].astype(float)
    s = moving_average(loss_EN[:, sel], window_points(float(np.median(np.diff(t))), span))
    grid = np.geomspace(t[0], t[-1], n_grid)
    out = np.full(len(s), np.nan)
    for e, row in enumerate(s):
        rate = -np.gradient(np.interp(grid, t, row), np.log(grid))
        out[e] = grid[edge + int(np.argmax(rate[edge:-edge]))]
    return out


def member_results(run_path: Path, from_step: float, span: float) -> dict:
    """Per member and curve: onset / midpoint / end (`half_rise`), the first and last probe value."""
    # metrics.csv alone: a run's config names its corpus, which another machine may not hold
    # (the default corpus is the running Python's standard library)
    table = read_metrics(run_path / "metrics.csv")
    E = int(np.nanmax(table["member"])) + 1
    out = {}
    for name, min_rise in ((ICL, ICL_MIN_RISE), (PM, PM_MIN_RISE)):
        steps, values = metric_matrix(table, name, E)
        out[name] = half_rise(steps, values, from_step, span, min_rise, Text.metric(name).direction) | {
            "first": values[:, 0], "last": values[:, -1]}
    steps, loss = metric_matrix(table, "heldout_loss", E)
    out["bump_step"] = bump_steps(steps, loss, from_step, span)
    return out


def arch_summary(res: dict) -> dict:
    E = len(res[ICL]["midpoint"])
    out = {"members": E}
    for name in (ICL, PM):
        mid = res[name]["midpoint"]
        k = int(np.isfinite(mid).sum())
        lo, hi = exact_ci(k, E)
        out[name] = {"n_formed": k, "formed_ci95": [lo, hi],
                     "midpoint_median": float(np.nanmedian(mid)) if k else None,
                     "onset_median": float(np.nanmedian(res[name]["onset"])) if k else None,
                     "midpoint_range": [float(np.nanmin(mid)), float(np.nanmax(mid))] if k else None,
                     "first_median": float(np.median(res[name]["first"])),
                     "last_median": float(np.median(res[name]["last"])),
                     "last_range": [float(np.min(res[name]["last"])), float(np.max(res[name]["last"]))]}
    lag = lags({PM: res[PM]["midpoint"], ICL: res[ICL]["midpoint"]})[0]
    out["lag_icl_minus_pm"] = lag
    out["onset_lag_icl_minus_pm"] = lags({PM: res[PM]["onset"], ICL: res[ICL]["onset"]})[0]
    bump, on, end = res["bump_step"], res[PM]["onset"], res[PM]["end"]
    inside = int(np.sum((bump >= on) & (bump <= end)))
    out["bump"] = {"step_median": float(np.median(bump)), "step_range": [float(bump.min()), float(bump.max())],
                   "in_prefix_matching_window": inside, "ci95": list(exact_ci(inside, E)), "steps": bump}
    out["per_member"] = {name: {k: res[name][k] for k in ("onset", "midpoint", "end", "s0", "s1", "first", "last")}
                         for name in (ICL, PM)}
    return out


def figure(out: Path, names: list[str], from_step: float) -> Path:
    """Each member's in-context and prefix-matching curves, one column per architecture, with
    each curve's timed midpoint marked (a dot)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(names), figsize=(4.2 * len(names), 6), sharex=True, sharey="row", squeeze=False)
    for j, name in enumerate(names):
        run_path = out / name.replace(" ", "_").replace("+", "")
        table = read_metrics(run_path / "metrics.csv")
        E = int(np.nanmax(table["member"])) + 1
        res = member_results(run_path, from_step, 250)
        for i, curve in enumerate((ICL, PM)):
            steps, values = metric_matrix(table, curve, E)
            ax = axes[i, j]
            for e in range(E):
                line, = ax.plot(steps, values[e], lw=0.8, alpha=0.7)
                mid = res[curve]["midpoint"][e]
                if np.isfinite(mid):
                    ax.plot([mid], [np.interp(mid, steps, values[e])], "o", color=line.get_color(), ms=4)
            ax.axvline(from_step, color="gray", ls=":", lw=0.8)
            ax.set_title(name if i == 0 else "", fontsize=10)
            label = "in-context score (nats)" if curve == ICL else "best head's prefix matching"
            ax.set_ylabel(label if j == 0 else "")
            ax.set_xlabel("step" if i == 1 else "")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_text_atomic(out / "curves.png", buf.getvalue())
    return out / "curves.png"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--steps", type=int, default=15000)
    p.add_argument("--corpus", default="", help="'' = the standard library's source (the text task's default)")
    p.add_argument("--corpus-max-bytes", type=int, default=16_000_000)
    p.add_argument("--d-vocab", type=int, default=1024)
    p.add_argument("--n-ctx", type=int, default=128)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--probe-batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument("--chunk-steps", type=int, default=500)
    p.add_argument("--arch", action="append", choices=list(architectures(0)),
                   help="only these architectures (default: the first three)")
    p.add_argument("--out", default="runs/text-phase-change")
    p.add_argument("--overwrite", action="store_true", help="retrain even if a run exists")
    p.add_argument("--analyse-only", action="store_true", help="only analyse the runs under --out (trained before)")
    p.add_argument("--from-step", type=float, default=500, help="time the curves from this step on")
    p.add_argument("--span", type=float, default=250, help="smoothing span of the timings, in steps")
    args = p.parse_args()
    use_cpu_cores()
    archs = architectures(args.d_model)
    names = args.arch or list(STUDY_ARCHS)
    if not args.analyse_only:
        minutes = sum(train_flops(args, archs[n]) for n in names) / CPU_FLOPS / 60
        print(f"{len(names)} ensembles of {args.seeds} members x {args.steps} steps (batch {args.batch_size} x "
              f"{args.n_ctx} tokens, d_model {args.d_model}, vocabulary {args.d_vocab}); on a 2-core CPU about "
              f"{minutes:.0f} min (at {CPU_FLOPS / 1e9:.0f} GFLOP/s)", flush=True)
    out = Path(args.out)
    summary = {"args": vars(args), "architectures": {}}
    for name in names:
        run_path = out / name.replace(" ", "_").replace("+", "")
        tic = time.perf_counter()
        if not args.analyse_only:
            train_or_resume(config(args, archs[name]), run_path, overwrite=args.overwrite, progress=False)
            phase_run(run_path)
        trained = time.perf_counter() - tic
        s = arch_summary(member_results(run_path, args.from_step, args.span))
        s["seconds"], s["run"] = trained, str(run_path)
        summary["architectures"][name] = s
        lag = s["lag_icl_minus_pm"]
        print(f"\n{name} ({run_path}, {trained:.0f} s):")
        for curve in (ICL, PM):
            c = s[curve]
            lo, hi = c["formed_ci95"]
            print(f"  {curve:17s} transition in {c['n_formed']} of {s['members']} (95% CI {lo:.0%}-{hi:.0%}); "
                  f"median onset {c['onset_median'] or float('nan'):.0f}, midpoint "
                  f"{c['midpoint_median'] or float('nan'):.0f}; median first {c['first_median']:.3f} -> last "
                  f"{c['last_median']:.3f} (last range {c['last_range'][0]:.3f}..{c['last_range'][1]:.3f})")
        for what, lag in (("midpoint", lag), ("onset", s["onset_lag_icl_minus_pm"])):
            _print_lag(what, lag)
        b = s["bump"]
        print(f"  held-out loss falls fastest (bump) at step {b['step_median']:.0f} (median; "
              f"{b['step_range'][0]:.0f}-{b['step_range'][1]:.0f}), inside the prefix-matching onset-end window "
              f"in {b['in_prefix_matching_window']} of {s['members']} (95% CI {b['ci95'][0]:.0%}-{b['ci95'][1]:.0%})")
    write_json_atomic(out / "summary.json", json_safe(summary))
    print(f"\nwrote {out / 'summary.json'} and {figure(out, names, args.from_step)}")


def _print_lag(what: str, lag: dict) -> None:
    if lag.get("median_lag") is not None:
        print(f"  lag ICL - PM {what}: median {lag['median_lag']:+.0f} steps [{lag['ci95_low']:+.0f}, "
              f"{lag['ci95_high']:+.0f}] over {lag['n']} members; ICL later in "
              f"{lag['fraction_first_before_second']:.0%}")
    else:
        print(f"  lag ICL - PM {what}: undefined ({lag['n']} members with both transitions)")


if __name__ == "__main__":
    main()
