"""`analyze_run(RUN_DIR)`: scores.csv, circuit.json, figures and an offline report.html."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

import numpy as np

from induction_jax import signals
from induction_jax.arrays import save_arrays
from induction_jax.analysis import figures
from induction_jax.analysis.run import analyze_params, scores_table
from induction_jax.analysis.weights import load_run_checkpoint
from induction_jax.rundir import RunDir, RunDirError, json_safe, write_json_atomic, write_text_atomic


def write_figures(result: dict, params: dict, member: int, out: Path) -> dict[str, Path]:
    s, x, P = result["scores"], result["extra"], result["half_length"]
    row = result["circuit"]["members"][member]
    figs = {
        "attention_patterns": figures.attention_grid(x["patterns"], member, P, out / "attention_patterns.png", row),
        "head_scores": figures.score_bars(s, member, out / "head_scores.png"),
        "ablations": figures.ablation_bars(s, member, out / "ablations.png"),
        "ensemble_scores": figures.ensemble_distributions(s, out / "ensemble_scores.png"),
    }
    if result["not_applicable"] is None:
        figs |= {
            "positional_qk_prev_token_head": figures.positional_qk(
                x["positional_qk"], member, row["prev_token_head"], out / "positional_qk_prev_token_head.png"),
            "full_ov_induction_head": figures.full_ov(params, member, row["induction_head"],
                                                      out / "full_ov_induction_head.png"),
            "ov_eigenvalues": figures.ov_eigenvalues(x["ov_eigenvalues"], s, member, out / "ov_eigenvalues.png"),
        }
        if params["W_Q"].shape[1] >= 2:      # composition needs an earlier and a later layer
            figs["k_composition"] = figures.k_composition(s["k_composition"], result["baseline"], member,
                                                          out / "k_composition.png")
    return figs


# Members whose per-head arrays go into analysis/arrays.npz (and so into the report's viewers);
# beyond this the file would grow by about 100 kB a member for views nobody pages through.
REPORT_MEMBERS = 64


def report_arrays(result: dict, members) -> dict[str, np.ndarray]:
    """What the report's per-member views draw: every head's attention pattern on the first
    probe sequence (float16), its tokens, and the Q/K/V composition matrices and full-OV
    eigenvalues where the weight-based scores apply; the first REPORT_MEMBERS members."""
    n = min(len(members), REPORT_MEMBERS)
    x, s = result["extra"], result["scores"]
    out = {"members": np.arange(n), "tokens": np.asarray(x["tokens"]),
           "patterns": np.asarray(x["patterns"][:n], np.float16)}
    for mode in ("q", "k", "v"):
        if f"{mode}_composition" in s:
            out[f"{mode}_composition"] = np.asarray(s[f"{mode}_composition"][:n], np.float32)
    if "ov_eigenvalues" in x:
        out["ov_eigenvalues_real"] = np.real(x["ov_eigenvalues"][:n]).astype(np.float32)
        out["ov_eigenvalues_imag"] = np.imag(x["ov_eigenvalues"][:n]).astype(np.float32)
    return out


def analyze_run(run_dir: str | Path, member: int | None = None) -> Path:
    """Analyse every member of a run at its latest good checkpoint; single-model figures show
    `member` (default 0). Every output records the checkpoint step it describes."""
    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    members = run.members()
    if member is not None and not 0 <= member < len(members):
        raise RunDirError(f"--member {member}: out of range; this run has members 0..{len(members) - 1}")
    member = member or 0
    with run.lock():
        params, meta = load_run_checkpoint(run.path)
        interrupted = (f"during the analysis; the run's training and checkpoints are intact: run again "
                       f"'induction-jax analyze {run.path}'")
        signals.check(interrupted)
        result = analyze_params(params, cfg.data.half_length)
        signals.check(interrupted)
        out = run.output_dir("analysis")
        header, rows = scores_table(result, members)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([header, *rows])
        write_text_atomic(out / "scores.csv", buf.getvalue())
        circuit = result["circuit"]
        for r in circuit["members"]:
            r["label"] = members.label(r["member"])
            r |= {k: v[r["member"]] for k, v in members.table().items()}
        circuit |= {"figure_member": member, "checkpoint_step": int(meta["step"]), "steps": cfg.train.steps}
        write_figures(result, params, member, out)
        save_arrays(out / "arrays.npz", report_arrays(result, members))
        write_json_atomic(out / "circuit.json", json_safe(circuit))
        write_report(run)
    return out.path


def _img(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _section_table(circuit: dict) -> str:
    cols = ["label", "prev_token_head", "prev_token_score", "induction_head", "induction_score",
            "k_composition", "k_composition_z", "ov_copying_score", "ablation_prev_token_head",
            "ablation_induction_head", "ablation_max_other_head", "n_induction_heads",
            "ablation_all_induction_heads", "induction_circuit", "clean_circuit"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = []
    for r in circuit["members"]:
        cells = []
        for c in cols:
            v = r.get(c, "n/a")
            if isinstance(v, float):
                v = f"{v:.3f}"
            elif isinstance(v, list):
                v = f"L{v[0]}H{v[1]}"
            cls = ' class="bad"' if c in ("clean_circuit", "induction_circuit") and v is False else ""
            cells.append(f"<td{cls}>{html.escape(str(v))}</td>")
        failed = [k for k, ok in r["checks"].items() if not ok]
        cells.append(f"<td>{html.escape(', '.join(failed) or '-')}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}<th>failed checks</th></tr>{''.join(body)}</table>"


ANALYSIS_FIGURES = ("attention_patterns", "head_scores", "positional_qk_prev_token_head", "k_composition",
                    "full_ov_induction_head", "ov_eigenvalues", "ablations", "ensemble_scores")
PHASE_FIGURES = ("in_context_score", "induction_score", "loss_bump", "midpoint_distribution",
                 "prev_vs_induction", "timing_by_lr", "survival", "variance", "predictors")


def _figure_html(folder: Path, names) -> str:
    """Each named figure, and its per-arm variants (name_0, name_1, ...) where a sweep has them."""
    paths = [p for n in names for p in [folder / f"{n}.png", *sorted(folder.glob(f"{n}_[0-9]*.png"))] if p.exists()]
    return "".join(f"<h3>{html.escape(p.stem.replace('_', ' '))}</h3><img src='data:image/png;base64,{_img(p)}'>"
                   for p in paths)


def _phase_html(stats: dict) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.4g}"  # noqa: E731
    rows, warnings = [], []
    for curve in ("in_context_score", "induction_score", "prev_token_score", "loss_second_half"):
        for timing in ("onset", "midpoint", "end", "logistic_width"):
            s = stats.get(curve, {}).get(timing, {})
            rows.append(f"<tr><td>{curve}</td><td>{timing}</td><td>{s.get('n')}</td><td>{s.get('n_censored')}</td>"
                        + "".join(f"<td>{fmt(s.get(k))}</td>" for k in ("mean", "std", "median", "iqr", "cv",
                                                                           "ci95_low", "ci95_high"))
                        + f"<td>{fmt(stats.get(curve, {}).get('probe_interval'))}</td></tr>")
            if s.get("resolution"):
                warnings.append(f"<li>{curve} {timing}: {html.escape(s['resolution'])}</li>")
    head = "".join(f"<th>{h}</th>" for h in ("curve", "timing", "n", "censored", "mean", "std", "median", "IQR",
                                             "CV", "CI95 low", "CI95 high", "probe interval"))
    orders = "".join(f"<li>by {html.escape(by)}: {o['counts']['before']} / {o['counts']['with']} / "
                     f"{o['counts']['after']} (censored {o['counts']['censored']})</li>"
                     for by, o in stats.get("formation_order", {}).items())
    arms = []
    for label, arm in stats.get("arms", {}).items():
        var = (arm.get("variance") or {}).get("in_context_score", {}).get("midpoint")
        if var and var.get("shares"):
            sh, ci = var["shares"], var["shares_ci95"]
            shares = ", ".join(f"{k} {sh[k]:.2f} [{ci[k][0]:.2f}, {ci[k][1]:.2f}]" for k in ("init", "data", "residual"))
            arms.append(f"<li>{html.escape(label)}: variance of the in-context midpoint over {var['I']} init x "
                        f"{var['J']} data seeds: {shares} (shares, 95% CI)</li>")
        if arm.get("predictors"):
            arms.append(f"<li>{html.escape(label)}: init-time predictors: {html.escape(arm['predictors']['verdict'])}</li>")
    return (f"<p>Timings are interpolated between probe points; the probe interval is given beside each. "
            f"loss_second_half is the per-step training loss (a second estimate, no probes).</p>"
            f"<table><tr>{head}</tr>{''.join(rows)}</table>"
            + (f"<p class='bad'>Resolution:</p><ul>{''.join(warnings)}</ul>" if warnings else "")
            + f"<p>Previous-token head forms before / with / after the induction head (within one probe interval "
              f"counts as with):</p><ul>{orders}</ul>" + (f"<ul>{''.join(arms)}</ul>" if arms else ""))


def write_report(run: RunDir) -> Path:
    """A self-contained report.html (images inlined) from whatever the run directory holds:
    the loss plot, the circuit analysis and the phase-change timing."""
    cfg = run.read_config()
    parts = [f"<h1>induction-jax run report: {html.escape(run.path.name)}</h1>",
             f"<pre>{html.escape(json.dumps(cfg.to_dict(), indent=1))}</pre>"]
    parts.append(_divergence_html(run))
    if (run.plots / "loss.png").exists():
        parts.append(f"<h2>Training loss</h2><img src='data:image/png;base64,{_img(run.plots / 'loss.png')}'>")
    circuit_json = run.path / "analysis" / "circuit.json"
    if circuit_json.exists():
        circuit = json.loads(circuit_json.read_text())
        parts.append(f"<h2>Circuit per member</h2><p><b>Describes checkpoint step {circuit.get('checkpoint_step')} "
                     f"of {circuit.get('steps')}</b>"
                     + (" (not the end of training)" if circuit.get("checkpoint_step") != circuit.get("steps") else "")
                     + f".</p><p>Induction circuit (previous-token head and induction "
                     f"heads, K-composing; the induction heads necessary together): "
                     f"{circuit.get('n_induction_circuit')} of {circuit['n_members']} members. Textbook two-head "
                     f"form (one induction head, every other head dispensable): {circuit['n_clean']}. "
                     f"Thresholds: {html.escape(json.dumps(circuit['thresholds']))}. An ideal one-token "
                     f"induction head would have loss_second_half "
                     f"{circuit.get('induction_floor_loss_second_half', float('nan')):.3f} on these probes.</p>")
        if circuit.get("weight_based_not_applicable"):
            parts.append(f"<p><b>Weight-based scores not applicable:</b> "
                         f"{html.escape(circuit['weight_based_not_applicable'])}</p>")
        parts.append(_section_table(circuit))
        parts.append(f"<h2>Circuit figures (single-model figures: member {circuit.get('figure_member', 0)})</h2>")
        parts.append(_figure_html(run.path / "analysis", ANALYSIS_FIGURES))
    stats_json = run.path / "phase" / "stats.json"
    if stats_json.exists():
        parts.append("<h2>Phase change</h2>" + _phase_html(json.loads(stats_json.read_text())))
        parts.append(_figure_html(run.path / "phase", PHASE_FIGURES))
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto}img{max-width:100%}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 6px}"
             ".bad{color:#b00;font-weight:bold}")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>induction-jax report</title>"
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    path = run.output("report.html")
    write_text_atomic(path, doc)
    return path


def _divergence_html(run: RunDir) -> str:
    """A section naming every diverged member, with the rule, whenever any diverged."""
    if not run.summary_json.is_file():
        return ""
    summary = json.loads(run.summary_json.read_text())
    if not summary.get("n_diverged"):
        return ""
    rows = "".join(f"<li>{html.escape(m['label'])}: at step {m['diverged_step']}</li>"
                   for m in summary["members"] if m["diverged_step"] is not None)
    return (f"<h2 class='bad'>Divergence: {summary['n_diverged']} of {summary['n_members']} members</h2>"
            f"<p>Rule: {html.escape(summary['divergence_rule'])}. A diverged member's updates stopped at that "
            f"step; its rows in metrics.csv end there and the other members trained untouched.</p><ul>{rows}</ul>")
