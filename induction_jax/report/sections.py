"""What the report shows, one part of the run directory at a time.

A *reader* reads one folder (or file) of the run directory into a JSON-ready dict, or returns
None when it is absent; `READERS` lists them by the key their dict gets in the report's data.
A *section* renders static HTML from that data, or returns None when its data is absent;
`SECTIONS` lists them in page order. The page's script draws the interactive views from the
same data (every key of a reader's dict except those starting with "_", which only the static
HTML uses, e.g. inlined figures). A new folder (dynamics/, llc/, ...) is one reader and one
section added to these two lists.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from induction_jax.arrays import load_arrays
from induction_jax.config import SECTIONS as CONFIG_SECTIONS
from induction_jax.report.findings import lead_figures, render_findings
from induction_jax.report.markup import Col, esc, figures, find_figures, fmt, read_json, table
from induction_jax.report.member_figures import (ANALYSIS_FIGURES, REDRAWN_FIGURES, figure_data,
                                                 render_analysis_figures)
from induction_jax.rundir import RunDir, RunDirError

PHASE_TIMINGS = ("onset", "midpoint", "end", "peak_slope", "logistic_midpoint", "logistic_width")
SIG = 5          # significant digits of the per-head numbers sent to the page


def _round(v):
    return None if v is None or not math.isfinite(v) else float(f"{v:.{SIG}g}")


def _csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _number(text: str):
    """A CSV cell: int, float, bool, None for blank / non-finite, else the text."""
    if text in ("", None):
        return None
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return _round(float(text))
    except ValueError:
        return text


# ---- readers --------------------------------------------------------------------------------

def read_run(run: RunDir) -> dict:
    """config.json and summary.json: the config, the members with their settings and final losses."""
    meta = run.read_meta()
    cfg = run.read_config()
    members = run.members()
    notes: list[str] = []
    summary = read_json(run.summary_json, notes) or {}
    finals = {m.get("member"): m for m in summary.get("members", []) if isinstance(m, dict)}
    rows = []
    for i in range(len(members)):
        row = {"member": i, "label": members.label(i), **{k: v[i] for k, v in members.table().items()}}
        s = finals.get(i, {})
        row["diverged_step"] = s.get("diverged_step")
        row |= {k: v for k, v in s.items() if k.startswith("final_")}
        rows.append(row)
    return {"name": run.path.name, "config": cfg.to_dict(), "version": meta.get("version"),
            "jax_version": meta.get("jax_version"), "device": meta.get("device"), "members": rows,
            "arms": {label: idx.tolist() for label, idx in members.arms().items()},
            "crossed": members.crossed, "has_summary": bool(summary),
            "task_params": list(members.task),
            "metric_help": {m.name: m.help for m in cfg.task.step_metrics + cfg.task.probe_metric_info},
            "trained_steps": summary.get("steps"), "_notes": notes}


def read_divergence(run: RunDir) -> dict | None:
    """summary.json, when any member diverged: who, at which step, by which rule."""
    summary = read_json(run.summary_json, [])
    if not summary or not summary.get("n_diverged"):
        return None
    return {"n_diverged": summary["n_diverged"], "n_members": summary.get("n_members"),
            "rule": summary.get("divergence_rule"),
            "members": [{"member": m["member"], "label": m.get("label", f"member {m['member']}"),
                         "diverged_step": m["diverged_step"]}
                        for m in summary.get("members", []) if m.get("diverged_step") is not None]}


def read_training(run: RunDir) -> dict | None:
    """plots/: the training-loss figures."""
    figs = find_figures(run.plots, ("loss",))
    return {"_figures": figs} if figs else None


def pack_patterns(patterns: np.ndarray) -> dict:
    """Attention patterns `[E', L, H, T, T]` as base64 of little-endian float16. When every
    entry above the diagonal is 0 (causal attention), only the lower triangle is sent (row by
    row: query t, keys 0..t), which halves the size."""
    p = np.asarray(patterns, np.float16)
    T = p.shape[-1]
    upper = np.triu_indices(T, 1)
    causal = not bool(np.any(np.abs(p[..., upper[0], upper[1]]) > 0))
    flat = p[..., np.tril_indices(T)[0], np.tril_indices(T)[1]] if causal else p.reshape(*p.shape[:-2], T * T)
    return {"causal": causal, "b64": base64.b64encode(np.ascontiguousarray(flat).astype("<f2").tobytes()).decode()}


def _nested(a: np.ndarray):
    return [_nested(x) for x in a] if a.ndim else _round(float(a))


def parse_scores(path: Path) -> dict:
    """scores.csv -> {"L", "H", "columns": [names], "values": {name: [member][layer][head]}}."""
    rows = _csv_rows(path)
    if not rows:
        return {"L": 0, "H": 0, "columns": [], "values": {}}
    header = list(rows[0])
    columns = header[header.index("head") + 1:]
    E = max(int(r["member"]) for r in rows) + 1
    L = max(int(r["layer"]) for r in rows) + 1
    H = max(int(r["head"]) for r in rows) + 1
    values = {c: [[[None] * H for _ in range(L)] for _ in range(E)] for c in columns}
    for r in rows:
        e, layer, h = int(r["member"]), int(r["layer"]), int(r["head"])
        for c in columns:
            values[c][e][layer][h] = _number(r[c])
    return {"L": L, "H": H, "columns": columns, "values": values}


def read_circuit(run: RunDir) -> dict | None:
    """analysis/: circuit.json (per member), scores.csv (per head), arrays.npz (attention
    patterns on the probe sequence, composition), the figures."""
    folder = run.path / "analysis"
    if not folder.is_dir():
        return None
    notes: list[str] = []
    out: dict = {"_notes": notes}
    circuit = read_json(folder / "circuit.json", notes)
    if isinstance(circuit, dict):
        out["summary"] = {k: v for k, v in circuit.items() if k != "members"}
        out["members"] = circuit.get("members", [])
    if (folder / "scores.csv").is_file():
        out["heads"] = parse_scores(folder / "scores.csv")
    if (folder / "arrays.npz").is_file():
        try:
            arrays = load_arrays(folder / "arrays.npz")
        except RunDirError as e:
            notes.append(f"{e}; the attention and composition views are left out")
            arrays = {}
        if "patterns" in arrays:
            E_, L, H, T, _ = arrays["patterns"].shape
            out["attention"] = {"members": [int(m) for m in arrays["members"]], "tokens": arrays["tokens"].tolist(),
                                "T": T, "L": L, "H": H, "period": T // 2, **pack_patterns(arrays["patterns"])}
        comp = {mode: _nested(arrays[f"{mode}_composition"]) for mode in ("k", "q", "v")
                if f"{mode}_composition" in arrays}
        if comp:
            out["composition"] = {"members": [int(m) for m in arrays["members"]], **comp}
        single = figure_data(arrays, pack_patterns) if "members" in arrays else None
        if single:
            out["figures"] = single
    out["_figures"] = find_figures(folder, ANALYSIS_FIGURES + REDRAWN_FIGURES)
    return out if len(out) > 2 or out["_figures"] or notes else None


def read_phase(run: RunDir) -> dict | None:
    """phase/: stats.json (static tables), timings.csv (per member, for the member view), figures."""
    folder = run.path / "phase"
    if not folder.is_dir():
        return None
    notes: list[str] = []
    out: dict = {"_notes": notes, "_stats": read_json(folder / "stats.json", notes),
                 "_figures": []}
    # the figures in the order phase recorded them (a phase/ written before it did: file order)
    out["_figures"] = find_figures(folder, (out["_stats"] or {}).get("figures", ()))
    if (folder / "timings.csv").is_file():
        timings: dict[str, dict] = {}
        for r in _csv_rows(folder / "timings.csv"):
            row = {k: _number(v) for k, v in r.items()}
            timings.setdefault(r["metric"], {})[str(row["member"])] = {
                k: row.get(k) for k in ("censored", "reason", *PHASE_TIMINGS, "probe_interval")}
        out["timings"] = timings
    return out if out["_stats"] or out["_figures"] or out.get("timings") else None


from induction_jax.report.formation import read_dynamics, render_dynamics  # noqa: E402 (sections of later capabilities)
from induction_jax.report.llc import read_llc, render_llc  # noqa: E402

READERS: dict[str, Callable[[RunDir], dict | None]] = {
    "run": read_run, "divergence": read_divergence, "training": read_training,
    "circuit": read_circuit, "phase": read_phase, "dynamics": read_dynamics, "llc": read_llc,
}


# ---- sections ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Section:
    id: str                                   # the <section id> and the nav anchor
    title: str | None                         # the nav entry (None: not in the nav)
    render: Callable[[dict], str | None]      # the report's data -> HTML; None when its data is absent


def _notes(*parts) -> str:
    notes = [n for p in parts if p for n in p.get("_notes", [])]
    return "".join(f"<p class=\"warn\">{esc(n)}</p>" for n in notes)


def checkpoint_line(data: dict) -> str:
    """Which checkpoint of how many steps the analysis describes, flagged when not the end."""
    summary = (data.get("circuit") or {}).get("summary")
    if not summary:
        return "<p class=\"checkpoint\">No circuit analysis in this run directory.</p>"
    step, steps = summary.get("checkpoint_step"), summary.get("steps")
    if step is not None and step == steps:
        return (f"<p class=\"checkpoint\" id=\"checkpoint\">The circuit analysis describes checkpoint step "
                f"<b>{fmt(step)}</b> of {fmt(steps)} (the end of training).</p>")
    return (f"<p class=\"checkpoint flag\" id=\"checkpoint\">The circuit analysis describes checkpoint step "
            f"<b>{fmt(step)}</b> of {fmt(steps)}: <b>not the end of training</b> (the latest good checkpoint; "
            f"a later one was missing or damaged, or training stopped early).</p>")


def render_header(data: dict) -> str:
    run = data["run"]
    m, t = run["config"]["model"], run["config"]["train"]
    arch = (f"{m['n_layers']} layer{'s' if m['n_layers'] != 1 else ''} x {m['n_heads']} heads, d_model {m['d_model']}, "
            f"vocabulary {m['d_vocab']}, {'attention-only' if not m['d_mlp'] else 'MLP ' + str(m['d_mlp'])}")
    parts = [f"<h1>induction-jax run report: <code>{esc(run['name'])}</code></h1>",
             f"<p class=\"meta\">{len(run['members'])} members, {fmt(t['steps'])} steps; {esc(arch)}.</p>",
             checkpoint_line(data)]
    stats = (data.get("phase") or {}).get("_stats") or {}
    if stats.get("last_step") is not None and stats.get("steps") and stats["last_step"] < stats["steps"]:
        parts.append(f"<p class=\"flag\">The metrics end at step {fmt(stats['last_step'])} of {fmt(stats['steps'])}: "
                     f"training did not finish.</p>")
    parts.append("<noscript><p class=\"warn\">JavaScript is off: the tables and figures below are static; "
                 "the member selector, attention viewer and per-member charts need it.</p></noscript>")
    return "".join(parts) + _notes(run)


def render_divergence(data: dict) -> str | None:
    div = data.get("divergence")
    if not div:
        return None
    rows = table([Col("member", "#", "member index"), Col("label", "member", cls="txt"),
                  Col("diverged_step", "diverged at step", "the step at which the member's updates stopped")],
                 div["members"], sortable=False, row_attrs=lambda r: {"data-member": r["member"]})
    return (f"<h2>Divergence: {fmt(div['n_diverged'])} of {fmt(div['n_members'])} members diverged</h2>"
            f"<p>Rule: <b>{esc(div['rule'] or 'n/a')}</b>. A diverged member's updates stopped at that step; its "
            f"rows in metrics.csv end there, the other members trained untouched, and its phase timings are "
            f"censored.</p>{rows}")


def render_config(data: dict) -> str:
    run = data["run"]
    cfg, members = run["config"], run["members"]
    varies = {name for name in ("lr", "weight_decay") if len({r[name] for r in members}) > 1}
    if run["crossed"] or len(members) != cfg["train"]["seeds"]:
        varies |= {"seeds", "first_seed"}
    tables = []
    for section, klass in CONFIG_SECTIONS.items():
        helps = {f.name: (f.metadata.get("help", ""), f.default) for f in dataclasses.fields(klass)}
        rows = []
        for name, value in cfg.get(section, {}).items():
            help_, default = helps.get(name, ("", None))
            note = " <span class=\"note\">(per member: see Members)</span>" if name in varies else ""
            cls = " class=\"nondefault\"" if value != default else ""
            rows.append(f"<tr><th title=\"{esc(help_)}\">{esc(name)}</th><td{cls}>{esc(fmt(value, 6))}{note}</td></tr>")
        tables.append(f"<table class=\"kv\"><caption>{esc(section)}</caption>{''.join(rows)}</table>")
    dev = run.get("device") or {}
    env = {"induction-jax": run.get("version"), "JAX": run.get("jax_version"),
           "device": f"{dev.get('platform', '?')} ({dev.get('device_kind', '?')}) x {dev.get('device_count', '?')}, "
                     f"{dev.get('process_count', 1)} process(es)"}
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in env.items())
    tables.append(f"<table class=\"kv\"><caption>environment</caption>{rows}</table>")
    changed = sum(html.count('class="nondefault"') for html in tables)
    return (f"<h2>Config</h2><details id=\"config-details\"><summary>The configuration ({changed} setting"
            f"{'s' if changed != 1 else ''} differ from the defaults, in bold)</summary><p class=\"note\">Hover a "
            f"name for its meaning.</p><div class=\"config-grid\">{''.join(tables)}</div></details>")


MEMBER_COLS = [Col("member", "#", "member index"), Col("label", "member", "the member's label", cls="txt"),
               Col("init_seed", "init seed", "seed of the initial weights"),
               Col("data_seed", "data seed", "seed of the training batches"),
               Col("lr", "lr", "learning rate"), Col("weight_decay", "wd", "weight decay"),
               Col("diverged_step", "diverged", "step at which the member diverged (its updates stopped)",
                   lambda v: "-" if v is None else fmt(v))]


def render_members(data: dict) -> str:
    run = data["run"]
    rows = run["members"]
    finals = [k for k in dict.fromkeys(k for r in rows for k in r) if k.startswith("final_")]
    helps = run.get("metric_help", {})
    cols = MEMBER_COLS + [Col(k, k, "task parameter") for k in run.get("task_params", [])]
    cols += [Col(k, k.removeprefix("final_").replace("_", " "),
                 "final " + helps.get(k.removeprefix("final_"), k.removeprefix("final_"))) for k in finals]
    arms = run["arms"]
    arm_note = ("" if list(arms) == ["all"] else
                "<p>Arms (members sharing every setting but their seeds): "
                + "; ".join(f"{esc(a)}: members {esc(', '.join(map(str, idx)))}" for a, idx in arms.items()) + ".</p>")
    final_note = ("<p class=\"note\">Final values: averages over the last steps of training (summary.json).</p>"
                  if finals else "<p class=\"note\">No summary.json: final losses are not shown.</p>")
    return ("<h2>Members</h2>" + arm_note + final_note +
            table(cols, rows, table_id="members-table", row_attrs=lambda r: {"data-member": r["member"]},
                  cell_cls=lambda k, v: "bad" if k == "diverged_step" and v is not None else ""))


def render_training(data: dict) -> str | None:
    lead = lead_figures(data)          # shown first, in the findings
    figs = [f for f in (data.get("training") or {}).get("_figures", []) if f not in lead]
    return "<h2>Training</h2>" + figures(figs) if figs else None


CIRCUIT_COLS = [
    Col("member", "#", "member index"), Col("label", "member", cls="txt"),
    Col("induction_circuit", "circuit", "induction circuit: a previous-token head and induction heads, K-composing, "
        "the induction heads necessary together"),
    Col("clean_circuit", "2-head", "textbook two-head form: one induction head, every other head dispensable"),
    Col("prev_token_head", "PT head", "previous-token head (layer-0 head with the largest previous-token score)"),
    Col("prev_token_score", "PT score", "previous-token score of the previous-token head"),
    Col("induction_head", "IH head", "best induction head (later-layer head with the largest induction score)"),
    Col("induction_score", "IH score", "induction score of the best induction head"),
    Col("n_induction_heads", "#IH", "number of induction heads (induction score above the threshold)"),
    Col("k_composition", "K-comp", "K-composition of the previous-token head into the induction head"),
    Col("k_composition_z", "K z", "that K-composition in sd of the random baseline"),
    Col("ov_copying_score", "OV copy", "OV copying score of the induction head"),
    Col("ablation_prev_token_head", "abl PT", "loss increase (nats) when the previous-token head is ablated"),
    Col("ablation_induction_head", "abl IH", "loss increase (nats) when the induction head is ablated"),
    Col("ablation_all_induction_heads", "abl all IH", "loss increase (nats) when every induction head is ablated"),
    Col("ablation_max_other_head", "abl other", "largest loss increase (nats) from ablating any other head"),
    Col("failed", "fails", "checks of the induction-circuit verdict that failed", cls="wrap"),
]


def _failed(checks) -> str:
    return ", ".join(k for k, ok in (checks or {}).items() if not ok) or "-"


def render_circuit(data: dict) -> str | None:
    part = data.get("circuit")
    if not part or "summary" not in part:
        return None if not part else "<h2>Circuit</h2>" + _notes(part)
    s = part["summary"]
    th = s.get("thresholds") or {}
    base = (s.get("composition_baseline") or {}).get("k_composition") or {}
    rows = [{**r, "failed": _failed(r.get("shared_checks", r.get("checks")))} for r in part.get("members", [])]
    na = (f"<p class=\"warn\">Weight-based scores not applicable: {esc(s['weight_based_not_applicable'])}</p>"
          if s.get("weight_based_not_applicable") else "")
    floor = s.get("induction_floor_loss_second_half")
    return (
        "<h2>Circuit per member</h2>"
        f"<p><b>Induction circuit</b> (previous-token head and induction heads, K-composing; the induction heads "
        f"necessary together) in <b>{fmt(s.get('n_induction_circuit'))} of {fmt(s.get('n_members'))}</b> members; "
        f"the textbook two-head form (one induction head, every other head dispensable) in {fmt(s.get('n_clean'))}."
        + (f" An ideal one-token induction head would reach loss_second_half {fmt(floor)} on these probes." if floor
           is not None else "") + "</p>"
        + "<p class=\"note\">Thresholds: " + ", ".join(f"{esc(k)} {fmt(v)}" for k, v in th.items())
        + (f"; random K-composition baseline {fmt(base.get('mean'))} ± {fmt(base.get('std'))} "
           f"({fmt(base.get('n_draws'))} draws)" if base else "")
        + ". Click a column header to sort, a row to select the member.</p>"
        + na + _notes(part)
        + table(CIRCUIT_COLS, rows, table_id="circuit-table", row_attrs=lambda r: {"data-member": r["member"]},
                cell_cls=lambda k, v: ("good" if v else "bad") if k in ("induction_circuit", "clean_circuit") else ""))


def render_member_view(data: dict) -> str | None:
    """The containers the page's script fills for the selected member."""
    circuit, phase = data.get("circuit") or {}, data.get("phase") or {}
    if not (circuit.get("attention") or circuit.get("heads") or phase.get("timings")):
        return None
    n_att = len(circuit.get("attention", {}).get("members", []))
    parts = ["<h2>Per-member view: <span id=\"mv-label\">member 0</span></h2>",
             "<p class=\"note\">Every view below follows the member selector at the top (also the ← / → keys, or "
             "a click on a member's row in a table).</p><div id=\"mv-summary\" class=\"mv-summary\"></div>"]
    if circuit.get("attention"):
        P = circuit["attention"]["period"]
        parts.append(
            "<h3>Attention patterns on the probe sequence</h3>"
            f"<p class=\"note\">Every head's attention on one probe sequence ({P} random tokens, then the same {P} "
            f"again): rows are queries (destination positions), columns keys (source positions). A previous-token "
            f"head fills the diagonal just below the main one; an induction head, in the second half, the diagonal "
            f"{P - 1} positions further left (the token after the query token's earlier occurrence). "
            f"<span class=\"badge pt\">PT</span> marks the previous-token head, <span class=\"badge ih\">IH</span> "
            f"the best induction head. Click a head to enlarge it; hover for the value and tokens."
            + (f" Patterns are stored for the first {n_att} members only." if n_att < len(data['run']['members'])
               else "") + "</p>"
            "<div class=\"attn\"><div id=\"attn-grid\" class=\"attn-grid\"></div>"
            "<div id=\"attn-zoom\" class=\"attn-zoom\"></div></div>")
    if circuit.get("heads"):
        parts.append(
            "<h3>Head scores</h3><p class=\"note\">Three definitions of each score, named apart: "
            "<b>offset</b> (attention to the position one back / P−1 back, the project's score), "
            "<b>token equality, rows with a target</b> (attention to every earlier position holding the matching "
            "token, averaged over the query rows that have one: ours) and <b>TransformerLens detect_head</b> "
            "(its token-equality score exactly). The dashed line is the threshold.</p>"
            "<div id=\"chart-prev\" class=\"chart\"></div><div id=\"chart-ind\" class=\"chart\"></div>"
            "<h3>Ablations</h3><p class=\"note\">Loss increase on the repeated half (nats) when one head is removed "
            "(zero or mean ablation).</p><div id=\"chart-abl\" class=\"chart\"></div>")
    if circuit.get("composition"):
        parts.append("<h3>Composition</h3><div id=\"comp\"></div>")
    if circuit.get("heads"):
        parts.append("<h3>Every score of this member's heads</h3><div id=\"head-table\"></div>")
    if phase.get("timings"):
        parts.append("<h3>Phase-change timings of this member</h3><div id=\"mv-phase\"></div>")
    return "".join(parts)


STAT_COLS = [Col("curve", "curve", cls="txt"), Col("timing", "timing", cls="txt"),
             Col("probe_interval", "probe int.", "probe interval (steps): timings are interpolated between probes"),
             Col("n", "n", "members timed"), Col("n_censored", "cens.", "members censored (no transition, diverged)"),
             Col("mean", "mean"), Col("std", "std"), Col("median", "median"), Col("iqr", "IQR", "interquartile range"),
             Col("cv", "CV", "coefficient of variation (std / mean)"),
             Col("ci95_low", "CI95 lo", "95% CI of the mean, lower"),
             Col("ci95_high", "CI95 hi", "95% CI of the mean, upper"),
             Col("resolution", "resolution", "whether the spread across members is resolved by the probe interval "
                 "(hover a warning for its text; all are listed below the table)",
                 lambda v: "ok" if v is None else "not checked" if v is False else str(v).split(":")[0],
                 cls="txt", tip=lambda v: v if isinstance(v, str) else None)]


def _share(sh, ci, k) -> str:
    if not sh or sh.get(k) is None:
        return "n/a"
    lo_hi = (ci or {}).get(k)
    return f"{sh[k]:.2f}" + (f" [{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]" if lo_hi else "")


def _effects_html(effects: dict | None) -> str:
    """Each intervention arm against the control: formed, circuit, the paired midpoint shift."""
    if not effects or not effects.get("arms"):
        return ""
    rows = [{"arm": label, "n": r.get("n"), "timed": r.get("n_timed"), "circuit": r.get("n_induction_circuit"),
             "pairs": r.get("n_pairs_timed"), "shift": r.get("mean_shift"), "lo": r.get("ci95_low"),
             "hi": r.get("ci95_high")} for label, r in effects["arms"].items()]
    return (f"<p>Each arm against the control <code>{esc(effects.get('control', 'none'))}</code>: the shift of the "
            f"{esc(effects.get('timing', 'in-context midpoint'))} (treated minus control, paired by seed, over the "
            f"pairs where both formed) with a bootstrap 95% CI.</p>"
            + table([Col("arm", "arm", cls="txt"), Col("n", "members"), Col("timed", "formed", "members timed"),
                     Col("circuit", "circuit", "members with the induction circuit (after analyze)"),
                     Col("pairs", "pairs", "seed pairs where both formed"), Col("shift", "shift (steps)"),
                     Col("lo", "CI95 lo"), Col("hi", "CI95 hi")], rows, table_id="effects-table", sortable=False))


def _arm_html(label: str, arm: dict) -> str:
    ic = arm.get("primary_midpoint") or arm.get("in_context_midpoint") or {}    # the latter: phase/ of 0.2
    curve = arm.get("primary_curve", "in_context_score")
    out = [f"<h4>Arm: {esc(label)} ({fmt(arm.get('n'))} members)</h4>",
           f"<p>{esc(curve.replace('_', ' ').capitalize())} midpoint: median {fmt(ic.get('median'))}, mean {fmt(ic.get('mean'))} ± "
           f"{fmt(ic.get('std'))} ("
           + (f"95% CI {fmt(ic.get('ci95_low'))} to {fmt(ic.get('ci95_high'))}" if ic.get("ci95_low") is not None
              else esc(ic.get("ci95_note") or "no CI of the mean"))
           + f"), probe interval {fmt(arm.get('probe_interval'))}"
           + (f"; <span class=\"warn\">{esc(ic['resolution'])}</span>" if ic.get("resolution") else "") + ".</p>"]
    plan = arm.get("planning") or {}
    if plan.get("sd") is not None:
        prec = ", ".join(f"±{p['d']:g}: {fmt(p['n'])} [{fmt(p['n_upper80'])}]" for p in plan["precision"])
        shift = ", ".join(f"{p['shift']:g}: {fmt(p['n_per_arm'])} [{fmt(p['n_per_arm_upper80'])}]" for p in plan["shift"])
        out.append(f"<p class=\"note\">Members needed, from this arm as a pilot (sd {fmt(plan['sd'])} steps over "
                   f"{fmt(plan['n_pilot'])} timed; in brackets from its 80% upper bound {fmt(plan['sd_upper80'])}): "
                   f"for a 95% CI of the mean midpoint of ±d steps, {esc(prec)}; per arm for a t-test to detect a "
                   f"shift of s steps with power 0.8 (two independent arms), {esc(shift)}.</p>")
    elif plan.get("note"):
        out.append(f"<p class=\"note\">Members needed: {esc(plan['note'])}.</p>")
    var = arm.get("variance")
    if var:
        rows = []
        for curve, per in var.items():
            for timing, v in (per or {}).items():
                v = v or {}
                rows.append({"curve": curve, "timing": timing, "design": f"{fmt(v.get('I'))} x {fmt(v.get('J'))}",
                             **{k: _share(v.get("shares"), v.get("shares_ci95"), k)
                                for k in ("init", "data", "residual")},
                             "reason": v.get("reason")})
        out.append("<p>Variance shares (init seed / data seed / residual, 95% CI):</p>" + table(
            [Col("curve", "curve", cls="txt"), Col("timing", "timing", cls="txt"),
             Col("design", "I x J", "init seeds x data seeds"),
             Col("init", "init share"), Col("data", "data share"), Col("residual", "residual share"),
             Col("reason", "note", format=lambda v: "" if v is None else str(v), cls="wrap")], rows, sortable=False))
    else:
        why = arm.get("not_crossed") or "not a crossed design"
        out.append(f"<p class=\"note\">No variance decomposition: {esc(why)}.</p>")
    pred = arm.get("predictors")
    if pred:
        out.append(f"<p>Init-time predictors of the {esc(curve.replace('_', ' '))} midpoint: <b>{esc(pred.get('verdict', ''))}</b></p>"
                   + table([Col("name", "quantity", cls="txt"), Col("description", "description", cls="wrap"),
                            Col("rho", "Spearman ρ"), Col("ci95_low", "CI95 lo"), Col("ci95_high", "CI95 hi"),
                            Col("n", "n"), Col("unit", "unit", cls="txt")], pred.get("rows", []), table_id=""))
    return "".join(out)


def render_phase(data: dict) -> str | None:
    part = data.get("phase")
    if not part:
        return None
    stats = part.get("_stats") or {}
    out = ["<h2>Phase change</h2>", _notes(part)]
    if stats:
        rows, warnings = [], []
        # the curves phase timed (a phase/ of version 0.2 did not list them: its four)
        curves = stats.get("curves") or [c for c in ("in_context_score", "induction_score", "prev_token_score",
                                                     "loss_second_half") if c in stats]
        for curve in curves:
            c = stats.get(curve) or {}
            for timing in PHASE_TIMINGS:
                s = c.get(timing)
                if s is None:
                    continue
                rows.append({"curve": curve, "timing": timing, "probe_interval": c.get("probe_interval"), **s,
                             "resolution": s.get("resolution", False)})   # False: the statistics do not check it
                if s.get("resolution"):
                    warnings.append(f"{curve} {timing}: {s['resolution']}")
        out.append("<p class=\"note\">Timings in steps, interpolated between probe points (probe interval beside "
                   "each); "
                   + (f"{esc(stats['step_curve'])} is the per-step training loss, a second estimate with no probes. "
                      if stats.get("step_curve") else "")
                   + f"Smoothing: {fmt(stats.get('smooth_steps'))} steps (probes), {fmt(stats.get('loss_smooth_steps'))} "
                   "steps (loss).</p>")
        out.append(table(STAT_COLS, rows, table_id="phase-stats",
                         cell_cls=lambda k, v: "warn" if k == "resolution" and isinstance(v, str) else ""))
        if warnings:
            out.append("<div class=\"warnbox\"><b>Resolution warnings</b><ul>"
                       + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul></div>")
        order = stats.get("formation_order") or {}
        if order:
            # (a stats.json written before 0.3 names the lag for the repeated task's two curves)
            orows = [{"by": by, **o.get("counts", {}),
                      "lag": o.get("median_lag_later_minus_earlier", o.get("median_lag_induction_minus_prev")),
                      "tol": o.get("tolerance_steps")} for by, o in order.items()]
            first = next(iter(order.values()))
            earlier = first.get("earlier", "prev_token_score").replace("_", " ")
            later = first.get("later", "induction_score").replace("_", " ")
            out.append(f"<h3>Formation order</h3><p class=\"note\">Does the {esc(earlier)} form before, with or "
                       f"after the {esc(later)}? Within the tolerance (one probe interval) counts as with.</p>"
                       + table([Col("by", "by", cls="txt"), Col("before", "before"), Col("with", "with"),
                                Col("after", "after"),
                                Col("censored", "censored"),
                                Col("lag", "median lag", "median of induction minus previous-token timing (steps)"),
                                Col("tol", "tolerance", "steps")], orows, sortable=False))
        lag = stats.get("primary_minus_later_midpoint") or stats.get("in_context_minus_induction_midpoint") or {}
        if lag.get("n"):
            a, b = (c.replace("_", " ") for c in lag.get("curves", ("in_context_score", "induction_score")))
            out.append(f"<p>{esc(a.capitalize())} midpoint minus {esc(b)} midpoint: median {fmt(lag.get('median'))} "
                       f"steps over {fmt(lag.get('n'))} members.</p>")
        arms = stats.get("arms") or {}
        if arms:
            out.append("<h3>Arms</h3>" + _effects_html(stats.get("interventions"))
                       + "".join(_arm_html(label, arm) for label, arm in arms.items()))
        cens = [(curve, c) for curve, lst in (stats.get("censored") or {}).items() for c in lst]
        if cens:
            out.append("<h3>Censored</h3><ul class=\"censored\">" + "".join(
                f"<li>{esc(curve)}: member {fmt(c.get('member'))}: {esc(c.get('reason'))}</li>" for curve, c in cens)
                + "</ul>")
    lead = lead_figures(data)          # shown first, in the findings
    out.append(figures([f for f in part.get("_figures", []) if f not in lead]))
    return "".join(out)


# Page order: what the run found first, then the evidence, the configuration last (folded).
SECTIONS: list[Section] = [
    Section("top", None, render_header),
    Section("findings", "Findings", render_findings),
    Section("divergence", "Divergence", render_divergence),
    Section("circuit", "Circuit", render_circuit),
    Section("member", "Per member", render_member_view),
    Section("analysis-figures", "Figures", render_analysis_figures),
    Section("phase", "Phase change", render_phase),
    Section("training", "Training", render_training),
    Section("dynamics", "Formation", render_dynamics),
    Section("llc", "LLC", render_llc),
    Section("members", "Members", render_members),
    Section("config", "Config", render_config),
]
