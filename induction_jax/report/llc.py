"""The report's "Local learning coefficient" section, from RUN_DIR/llc/."""

from __future__ import annotations

from induction_jax.report.markup import Col, esc, figures, find_figures, fmt, read_json, table
from induction_jax.rundir import RunDir


def read_llc(run: RunDir) -> dict | None:
    folder = run.path / "llc"
    if not (folder / "stats.json").is_file():
        return None
    notes: list[str] = []
    stats = read_json(folder / "stats.json", notes)
    return {"_notes": notes, "_stats": stats,
            "_figures": find_figures(folder, ("llc_curves", "traces", "eps")) if stats is not None else []}


def render_llc(data: dict) -> str | None:
    part = data.get("llc")
    if not part:
        return None
    out = ["<h2>Local learning coefficient</h2>"] + [f"<p class=\"note\">{esc(n)}</p>" for n in part["_notes"]]
    stats = part["_stats"]
    if stats:
        s = stats["sgld"]
        out.append(f"<p>LLC{' of ' + esc(stats['head']) + ' alone' if stats.get('head') else ''} by localised SGLD: "
                   f"n = {fmt(stats['n'])} sequences per member, n&beta; = {fmt(stats['n_beta'])}, eps = {fmt(s['eps'])}, "
                   f"gamma = {fmt(s['gamma'])}, {fmt(s['chains'])} chains x {fmt(s['draws'])} draws "
                   f"({fmt(s['burn_in'])} burn-in), minibatch {fmt(s['batch_size'])}. Stage boundaries: local extrema "
                   f"beyond 2 standard errors and plateaus of the curve in log step (docs/definitions.md).</p>")
        for w in stats.get("warnings", []):
            out.append(f"<div class=\"warnbox\">{esc(w)}</div>")
        rows = [{"label": m["label"], "boundaries": ", ".join(f"{b['kind']} {b['step']:.0f}" for b in m["boundaries"]),
                 "flagged": ", ".join(map(str, m["flagged_steps"])) or "-"} for m in stats["members"]]
        out.append(table([Col("label", "member", cls="txt"), Col("boundaries", "stage boundaries (step)", cls="txt"),
                          Col("flagged", "steps with flagged chains", cls="txt")], rows, sortable=False))
    out.append(figures(part["_figures"]))
    return "".join(out)
