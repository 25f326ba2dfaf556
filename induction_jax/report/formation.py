"""The report's "Formation in the weights" section, from RUN_DIR/dynamics/."""

from __future__ import annotations

import base64

from induction_jax.report.markup import Col, esc, figures, find_figures, fmt, read_json, table
from induction_jax.rundir import RunDir


def read_dynamics(run: RunDir) -> dict | None:
    folder = run.path / "dynamics"
    stats_path = folder / "stats.json"
    if not stats_path.is_file():
        return None
    notes: list[str] = []
    stats = read_json(stats_path, notes)
    if stats is None:
        return {"_notes": notes, "_stats": None, "_figures": [], "_gif": None}
    gif = folder / "animation.gif"
    return {"_notes": notes, "_stats": stats, "_figures": find_figures(folder, ("trajectories", "order")),
            "_gif": base64.b64encode(gif.read_bytes()).decode() if gif.is_file() else None}


def render_dynamics(data: dict) -> str | None:
    part = data.get("dynamics")
    if not part:
        return None
    out = ["<h2>Formation in the weights</h2>"] + [f"<p class=\"note\">{esc(n)}</p>" for n in part["_notes"]]
    stats = part["_stats"]
    if stats:
        steps = stats["snapshot_steps"]
        n = len(stats["members"])
        out.append(f"<p>Every member's sub-circuits followed through {len(steps)} snapshots (steps {steps[0]} to "
                   f"{steps[-1]}), on the heads that form its circuit at the end. A sub-circuit forms at the first step "
                   f"where its score crosses halfway from its value at initialisation to its final value "
                   f"(interpolated between snapshots).</p>")
        rows = [{"event": e, "median": stats["median_step"][e], "formed": stats["n_formed"][e]} for e in stats["events"]]
        out.append(table([Col("event", "sub-circuit", cls="txt"), Col("median", "median step"),
                          Col("formed", f"formed (of {n})")], rows, sortable=False))
        out.append("<h3>Formation orders</h3>" + table(
            [Col("n", "members"), Col("order", "order (< earlier, = same step)", cls="txt")], stats["order_counts"],
            sortable=False))
        out.append("<h3>Lags between sub-circuits</h3>" + table(
            [Col("first", "first", cls="txt"), Col("second", "second", cls="txt"), Col("n", "n"),
             Col("median_lag", "median lag", "median of second minus first (steps)"),
             Col("ci95_low", "CI95 lo"), Col("ci95_high", "CI95 hi"),
             Col("fraction_first_before_second", "first earlier", "fraction of members")],
            [r for r in stats["lags"] if r.get("n")]))
    out.append(figures(part["_figures"]))
    if part["_gif"]:
        member = (stats or {}).get("animation_member", 0)
        out.append(f"<figure><img alt=\"animation\" src=\"data:image/gif;base64,{part['_gif']}\"><figcaption>Member "
                   f"{fmt(member)}: attention patterns and K-composition over training</figcaption></figure>")
    return "".join(out)
