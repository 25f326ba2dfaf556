"""Is the phase change on text as reproducible across seeds as on repeated random tokens? The
same members (the same model shape and init seeds, so the same initial weights) trained on the
two tasks; per task, every member's in-context-score transition timed, and the spread across
members compared in log-steps (scale-free: the two tasks change at different times).

- text: a run of `experiments/text_phase_change.py` (its timing rule: from `--from-step` on,
  smoothed over `--span` steps, midpoint = first crossing of half the way; the in-context score
  and the best head's prefix-matching score);
- repeated: a run of the repeated task with the same model and seeds, timed by `induction-jax
  phase` (its plateau rule: docs/definitions.md), on the same two curves' counterparts (its
  in-context score and best induction score).

Reports per task and curve: the midpoints, their mean and standard deviation of log10(step)
with bootstrap 95% CIs, the ratio text / repeated of that standard deviation (bootstrap over
members, each task resampled on its own), and the Spearman correlation of the members' timings
across the two tasks (is a member that is early on one early on the other?), with a
permutation p-value; and, for the repeated members at their last checkpoint, where the last
layer's sharpest head and layer 0 attend (is it the textbook induction attention?), and
through which input (queries, keys, values) the earlier layers' heads carry the copy (does it
K-compose, as the textbook circuit does?).
docs/studies/text-phase-change.md ("Variance of the timing").

    python experiments/text_timing_variance.py --text runs/text-knockout/2-layer_MLPLN \\
        --repeated runs/repeated-text-model-p25 --out runs/timing_variance_p25.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from induction_jax.phase.run import phase_run
from induction_jax.rundir import RunDir, json_safe, write_json_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
import text_phase_change as tpc  # noqa: E402  (the text study's timing rule)


def repeated_midpoints(run_path: Path, curve: str) -> np.ndarray:
    """`induction-jax phase`'s midpoint of `curve` per member (NaN where censored), running
    `phase` if the run has no timings yet."""
    import csv

    timings = run_path / "phase" / "timings.csv"
    if not timings.is_file():
        phase_run(run_path)
    rows = [r for r in csv.DictReader(timings.open()) if r["metric"] == curve]
    E = len(RunDir(run_path).members())
    out = np.full(E, np.nan)
    for r in rows:
        v = r["midpoint"]
        out[int(r["member"])] = float(v) if v and r["censored"] != "True" else np.nan
    return out


def probe_members(params: dict, P: int, n_seq: int, key: int):
    """`(member, its params, tokens)` for each member of `params` (stacked `[E, ...]`), on the
    same `n_seq` fixed-period sequences of period `P` (tokens uniform over the vocabulary)."""
    import jax
    import jax.numpy as jnp

    from induction_jax.tasks.repeated import repeated_sequences

    tokens = repeated_sequences(jax.random.PRNGKey(key), n_seq, P, params["W_E"].shape[-2], True)
    for m in range(len(params["W_E"])):
        yield m, {k: jnp.asarray(v[m]) for k, v in params.items()}, tokens


def second_half_loss(logits, tokens, P: int) -> float:
    from induction_jax.losses import token_losses
    from induction_jax.tasks.repeated import split_losses

    return float(split_losses(token_losses(logits, tokens), P)["loss_second_half"])


def attention_offsets(params: dict, P: int, n_seq: int = 64, key: int = 12345) -> list[dict]:
    """Where each member's heads attend (`params` stacked `[E, ...]`), on `n_seq` fixed-period
    sequences of period `P` (tokens uniform over the vocabulary): the last layer's best
    induction score (mass on i-P+1, the textbook target), its sharpest head (largest mean top
    weight over second-half queries), the key offset that head's top weight falls on most often
    and in what share of queries, layer 0's strongest offset at the first half's positions (mean
    mass on j-o over queries j = o..P-1, best head: where the earlier copy, and so the last
    layer's induction keys, lie; a layer-0 head may attend otherwise later), and the second-half
    loss."""
    from induction_jax import functional
    from induction_jax.analysis.attention import induction_score

    i = np.arange(P, 2 * P - 1)
    out = []
    for m, p, tokens in probe_members(params, P, n_seq, key):
        logits, acts = functional.apply(p, tokens, return_activations=True)
        A = np.asarray(acts.pattern_BLHTS)                                  # [B, L, H, T, S]
        last, first = A[:, -1][:, :, i], A[:, 0].mean(0)
        top = last.max(-1).mean((0, 2))                                     # per last-layer head
        h = int(top.argmax())
        offsets, counts = np.unique(i[None] - last[:, h].argmax(-1), return_counts=True)
        layer0 = {o: float(first[:, np.arange(o, P), np.arange(P - o)].mean(-1).max()) for o in range(1, P)}
        o0 = max(layer0, key=layer0.get)
        out.append({"member": m,
                    "second_half_loss": second_half_loss(logits, tokens, P),
                    "induction_score": float(induction_score(A[:, -1], P).mean(0).max()),
                    "sharpest_head": h, "top_weight": float(top[h]), "mode_offset": int(offsets[counts.argmax()]),
                    "mode_share": float(counts.max() / counts.sum()), "layer0_offset": o0,
                    "layer0_mass": layer0[o0]})
    return out


def path_cuts(params: dict, P: int, n_seq: int = 64, key: int = 12345) -> list[dict]:
    """Which input of the last layer the earlier layers' heads reach it through, per member
    (`params` stacked `[E, ...]`), on `n_seq` fixed-period sequences of period `P`: the
    second-half loss clean, and with every earlier layer's heads' writes cut from the last
    layer's queries, keys or values (the `cut` intervention's `CutWrite`, at test time; an
    MLP's own write is not cut, so a path through an earlier MLP stays). The textbook circuit
    K-composes: cutting its keys' path loses the copy, its values' path does not."""
    import jax.numpy as jnp

    from induction_jax import functional
    from induction_jax.interventions.kinds import PATHS, CutWrite

    L, H = params["W_Q"].shape[1:3]
    cuts = {}
    for c, name in enumerate(PATHS):
        cut = np.zeros((L, H, L, len(PATHS)), np.float32)
        cut[:L - 1, :, L - 1, c] = 1.0
        cuts[name] = (CutWrite(jnp.asarray(cut)),)
    return [{"member": m, "clean": second_half_loss(functional.apply(p, tokens), tokens, P),
             **{f"cut_{name}": second_half_loss(functional.apply(p, tokens, edits=edits), tokens, P)
                for name, edits in cuts.items()}}
            for m, p, tokens in probe_members(params, P, n_seq, key)]


def run_attention_offsets(run_path: Path) -> list[dict]:
    """`attention_offsets` and `path_cuts` of a repeated-task run's members at its last good
    checkpoint."""
    from induction_jax.analysis.weights import load_run_checkpoint

    params, meta = load_run_checkpoint(run_path, None)
    P = RunDir(run_path).read_config().task.half_length
    cuts = path_cuts(params, P)
    return [r | {"cuts": c, "step": int(meta["step"])} for r, c in zip(attention_offsets(params, P), cuts)]


def log_spread(mid: np.ndarray, rng, n_boot: int = 10000) -> dict:
    x = np.log10(mid[np.isfinite(mid)])
    if len(x) < 2:                       # no spread to measure: the transition was timed in under 2 members
        return {"n": len(x), "midpoints": mid.tolist(), "median": float(np.median(10 ** x)) if len(x) else None,
                "sd_log10": None, "sd_log10_ci95": None, "cv": None, "_x": x}
    boot = rng.choice(x, (n_boot, len(x)))
    sd = boot.std(1, ddof=1)
    return {"n": len(x), "midpoints": mid.tolist(), "median": float(np.median(10 ** x)),
            "sd_log10": float(x.std(ddof=1)), "sd_log10_ci95": np.percentile(sd, [2.5, 97.5]).tolist(),
            "cv": float((10 ** x).std(ddof=1) / (10 ** x).mean()), "_x": x}


def spearman(a: np.ndarray, b: np.ndarray, rng, n_perm: int = 10000) -> dict:
    ok = np.isfinite(a) & np.isfinite(b)
    ra, rb = np.argsort(np.argsort(a[ok])), np.argsort(np.argsort(b[ok]))
    rho = float(np.corrcoef(ra, rb)[0, 1])
    perm = np.array([np.corrcoef(ra, rng.permutation(rb))[0, 1] for _ in range(n_perm)])
    return {"n": int(ok.sum()), "rho": rho, "p_two_sided": float(np.mean(np.abs(perm) >= abs(rho) - 1e-12))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", required=True, help="a text run (experiments/text_phase_change.py)")
    p.add_argument("--repeated", required=True, help="a repeated-task run with the same model and seeds")
    p.add_argument("--from-step", type=float, default=500)
    p.add_argument("--span", type=float, default=250)
    p.add_argument("--out", default=None, help="summary JSON (default: beside the text run)")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    text = tpc.member_results(Path(args.text), args.from_step, args.span)
    pairs = (("in-context score", text[tpc.ICL]["midpoint"], repeated_midpoints(Path(args.repeated), "in_context_score")),
             ("prefix matching / induction score", text[tpc.PM]["midpoint"],
              repeated_midpoints(Path(args.repeated), "induction_score")))
    summary = {"args": vars(args), "curves": {}}
    for name, t_mid, r_mid in pairs:
        t, r = log_spread(t_mid, rng), log_spread(r_mid, rng)
        ratio = None
        if t["n"] >= 3 and r["n"] >= 3:
            bt = rng.choice(t["_x"], (10000, t["n"])).std(1, ddof=1)
            br = rng.choice(r["_x"], (10000, r["n"])).std(1, ddof=1)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = {"text_over_repeated": t["sd_log10"] / r["sd_log10"],
                         "ci95": np.nanpercentile(bt / br, [2.5, 97.5]).tolist()}
        corr = spearman(t_mid, r_mid, rng) if (np.isfinite(t_mid) & np.isfinite(r_mid)).sum() >= 3 else {
            "n": int((np.isfinite(t_mid) & np.isfinite(r_mid)).sum()), "rho": None, "p_two_sided": None}
        for d in (t, r):
            d.pop("_x")
        summary["curves"][name] = {"text": t, "repeated": r, "sd_ratio": ratio, "spearman": corr}
        print(f"\n{name}:")
        for task, d in (("text", t), ("repeated", r)):
            if d["sd_log10"] is None:
                print(f"  {task:8s} timed in {d['n']} of {len(d['midpoints'])} members: no spread to compare")
                continue
            print(f"  {task:8s} timed in {d['n']} members: median midpoint {d['median']:.0f} steps, sd of "
                  f"log10(step) {d['sd_log10']:.3f} [{d['sd_log10_ci95'][0]:.3f}, {d['sd_log10_ci95'][1]:.3f}], "
                  f"CV {d['cv']:.2f}")
        if ratio:
            print(f"  spread text / repeated: {ratio['text_over_repeated']:.2f} "
                  f"[{ratio['ci95'][0]:.2f}, {ratio['ci95'][1]:.2f}]")
        if corr["rho"] is not None:
            print(f"  Spearman rho over {corr['n']} members: {corr['rho']:.2f} (permutation p = "
                  f"{corr['p_two_sided']:.2f})")
    offsets = run_attention_offsets(Path(args.repeated))
    summary["repeated_attention"] = offsets
    print("\nrepeated members at the end: where the last layer's sharpest head and layer 0 attend")
    for r in offsets:
        print(f"  member {r['member']} (step {r['step']}): second-half loss {r['second_half_loss']:.3f}, induction "
              f"score {r['induction_score']:.3f}; last-layer head {r['sharpest_head']} top weight "
              f"{r['top_weight']:.2f}, at offset {r['mode_offset']} in {r['mode_share']:.0%} of queries; layer 0 "
              f"(first half) strongest offset {r['layer0_offset']} ({r['layer0_mass']:.2f})")
        c = r["cuts"]
        print(f"    second-half loss with the earlier layers' heads cut from the last layer's queries "
              f"{c['cut_Q']:.2f}, keys {c['cut_K']:.2f}, values {c['cut_V']:.2f} (clean {c['clean']:.2f})")
    out = Path(args.out) if args.out else Path(args.text).parent / "timing_variance.json"
    write_json_atomic(out, json_safe(summary))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
