"""The report's first section: what the run found, before how it was configured.

Every number comes from what the analyses wrote (phase/stats.json, analysis/circuit.json,
summary.json, llc/stats.json) and every name from the task (its primary curve): members that
formed (phase's censoring: a member whose rise stays below the task's threshold, or that
diverged or had not finished, has no transition), members with the circuit, the phase-change
timing with its 95% interval, each arm's effect, the LLC's stages, and the curves of every
member (the loss figure and the primary curve's figure, shown here and not again below).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter

from scipy import stats as _st

from induction_jax.report.markup import Col, esc, figures, fmt, table


def exact_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson interval of a proportion k / n (the README's "exact 95% intervals")."""
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(_st.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(_st.beta.ppf(1 - a, k + 1, n - k))
    return lo, hi


def count(k: int, n: int) -> str:
    """'<b>7 of 8</b> (95% CI 47-100%)'."""
    if not n:
        return "<b>0 of 0</b>"
    lo, hi = exact_ci(k, n)
    return f"<b>{k} of {n}</b> <span class=\"ci\">(95% CI {lo:.0%}-{hi:.0%})</span>"


def _curve_name(curve: str) -> str:
    return curve.replace("_", " ")


def primary_curve(stats: dict) -> str | None:
    """The curve phase leads with (a stats.json of 0.2 did not name it: the in-context score)."""
    curve = stats.get("primary_curve") or ("in_context_score" if "in_context_score" in stats else None)
    return curve if (stats.get(curve) or {}).get("midpoint") else None


def lead_figures(data: dict) -> list[dict]:
    """The figures of every member's curves this section shows: the training loss (plots/loss*)
    and the primary curve's phase figure. The sections below leave them out."""
    curve = primary_curve((data.get("phase") or {}).get("_stats") or {})
    loss = [f for f in (data.get("training") or {}).get("_figures", [])
            if re.fullmatch(r"plots-loss(_[0-9]+)?", f["name"])]
    lead = [f for f in (data.get("phase") or {}).get("_figures", [])
            if curve and re.fullmatch(rf"phase-{re.escape(curve)}(_[0-9]+)?", f["name"])]
    return loss + lead


def _censored(stats: dict, curve: str) -> str:
    """'2 no transition, 1 diverged': why the censored members have no timing."""
    kinds = Counter(re.sub(r" at step \d+", "", c.get("reason", "").split(":")[0]) or "censored"
                    for c in (stats.get("censored") or {}).get(curve, []))
    return ", ".join(f"{n} {esc(kind)}" for kind, n in kinds.most_common())


def _timing(mid: dict, probe) -> str:
    ci = (f"95% CI of the mean {fmt(mid['ci95_low'])} to {fmt(mid['ci95_high'])}"
          + (f", {esc(mid['ci95_method'])}" if mid.get("ci95_method") else "")
          if mid.get("ci95_low") is not None else esc(mid.get("ci95_note") or "no interval"))
    return (f"at step <b>{fmt(mid.get('median'), 4)}</b> (median; mean {fmt(mid.get('mean'), 4)} ± "
            f"{fmt(mid.get('std'), 3)} sd; {ci}; probes every {fmt(probe)} steps)")


def _phase_items(stats: dict) -> list[str]:
    curve = primary_curve(stats)
    if curve is None:
        return []
    mid = stats[curve]["midpoint"]
    formed, total = mid["n"], mid["n"] + mid.get("n_censored", 0)
    why = _censored(stats, curve)
    out = [f"<li><b>Formed</b>: {count(formed, total)} members show the transition in their "
           f"<i>{esc(_curve_name(curve))}</i>" + (f"; no transition timed in the others ({why})" if why else "")
           + ".</li>"]
    if formed:
        out.append(f"<li><b>Phase change</b>: the {esc(_curve_name(curve))} midpoint "
                   f"{_timing(mid, stats[curve].get('probe_interval'))}. <a href=\"#phase\">Every timing</a></li>")
    return out


def _circuit_item(data: dict) -> list[str]:
    s = (data.get("circuit") or {}).get("summary")
    if not s or s.get("n_members") is None:
        return []
    return [f"<li><b>Induction circuit</b> (a previous-token head and induction heads, K-composing, necessary) in "
            f"{count(s.get('n_induction_circuit', 0), s['n_members'])} members at step "
            f"{fmt(s.get('checkpoint_step'))}; "
            f"the textbook two-head form in {fmt(s.get('n_clean'))}. <a href=\"#circuit\">Per member</a></li>"]


def _divergence_item(data: dict) -> list[str]:
    div = data.get("divergence")
    return [f"<li class=\"bad\"><b>Diverged</b>: {fmt(div['n_diverged'])} of {fmt(div['n_members'])} members "
            f"(<a href=\"#divergence\">which, and when</a>).</li>"] if div else []


def _llc_item(data: dict) -> list[str]:
    stats = (data.get("llc") or {}).get("_stats")
    if not stats or not stats.get("members"):
        return []
    n = len(stats["members"])
    firsts: dict[str, list[float]] = {}
    for m in stats["members"]:
        for kind in dict.fromkeys(b["kind"] for b in m["boundaries"]):
            firsts.setdefault(kind, []).append(next(b["step"] for b in m["boundaries"] if b["kind"] == kind))
    if not firsts:
        return [f"<li><b>LLC stages</b>: no stage boundary in the {n} member(s) estimated. "
                f"<a href=\"#llc\">The curves</a></li>"]
    parts = [f"{esc(kind.replace('_', ' '))} in {len(v)} of {n} (first at median step "
             f"{fmt(statistics.median(v), 4)})" for kind, v in firsts.items()]
    return [f"<li><b>LLC stages</b>: {'; '.join(parts)}. <a href=\"#llc\">The curves</a></li>"]


def _arms_table(data: dict, stats: dict) -> str:
    """One row per arm (members sharing every setting but their seeds): formed, circuit, timing,
    and against the control the paired shift, when the arms are interventions."""
    arms, curve = stats.get("arms") or {}, primary_curve(stats)
    if len(arms) < 2:
        return ""
    verdicts = {r["member"]: r.get("induction_circuit") for r in (data.get("circuit") or {}).get("members", [])}
    effects = (stats.get("interventions") or {}).get("arms") or {}
    rows = []
    for label, arm in arms.items():
        mid = arm.get("primary_midpoint") or arm.get("in_context_midpoint") or {}
        idx = arm.get("members", [])
        eff = effects.get(label, {})
        rows.append({"arm": label, "n": arm.get("n"), "formed": mid.get("n"),
                     "circuit": sum(bool(verdicts.get(i)) for i in idx) if verdicts else None,
                     "median": mid.get("median"), "lo": mid.get("ci95_low"), "hi": mid.get("ci95_high"),
                     "shift": eff.get("mean_shift"), "slo": eff.get("ci95_low"), "shi": eff.get("ci95_high")})
    cols = [Col("arm", "arm", cls="txt"), Col("n", "members"), Col("formed", "formed", "members timed"),
            Col("circuit", "circuit", "members with the induction circuit"),
            Col("median", "median step", f"median {_curve_name(curve or '')} midpoint"),
            Col("lo", "CI95 lo", "95% CI of the mean midpoint"), Col("hi", "CI95 hi")]
    if effects:
        control = (stats.get("interventions") or {}).get("control", "none")
        cols += [Col("shift", "shift", f"midpoint shift against the control arm '{control}' (paired by seed)"),
                 Col("slo", "shift lo", "95% CI of the shift"), Col("shi", "shift hi")]
    return ("<h3>By arm</h3>" + table(cols, rows, table_id="findings-arms", sortable=False)
            + ("<p class=\"note\">Shift: treated minus control midpoint, paired by seed, over the pairs where both "
               "formed.</p>" if effects else ""))


def render_findings(data: dict) -> str:
    """What the run found; always present (a run directory with no analysis yet says so)."""
    stats = (data.get("phase") or {}).get("_stats") or {}
    items = (_divergence_item(data) + _phase_items(stats) + _circuit_item(data)
             + _llc_item(data))
    if not items:
        items = ["<li>No analysis in this run directory yet: <code>induction-jax analyze RUN_DIR</code> and "
                 "<code>induction-jax phase RUN_DIR</code> add the findings.</li>"]
    figs = lead_figures(data)
    return ("<h2>What this run found</h2><ul class=\"findings\">" + "".join(items) + "</ul>"
            + _arms_table(data, stats)
            + (f"<h3>Every member's curves</h3>{figures(figs)}" if figs else ""))
