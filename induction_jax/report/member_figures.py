"""The report's "Analysis figures" section: the ensemble's scores grouped by each member's head
roles, and the single-model figures (positional QK of the previous-token head, full OV of the
best induction head, every head's OV eigenvalues) for the member the selector picks.

The page's script draws them from per-member arrays of analysis/arrays.npz (`figure_data`); an
analysis written before it stored them shows its PNGs (one member, named) instead. Size for 64
members of the default shape (T 50, V 64, 8 heads, d_head 16): about 0.2 MB of positional QK
(float16, lower triangle), 0.35 MB of full OV (int8 with a per-member scale) and 0.05 MB of
eigenvalues (float16), as base64 (tests/test_report.py bounds the three at 0.8 MB).
"""

from __future__ import annotations

import base64
import re

import numpy as np

from induction_jax.report.markup import esc, figures, fmt

# Figures the page redraws from the data (per member, interactive); their PNGs (one member)
# are kept in a collapsed block. The other analysis figures are shown as they are.
REDRAWN_FIGURES = ("attention_patterns", "head_scores", "ablations", "k_composition")
# The figures of this section, the page's drawing (the data key it needs) before each PNG.
DRAWN_HERE = {"ensemble_scores": "heads", "positional_qk_prev_token_head": "pos_qk",
              "full_ov_induction_head": "full_ov", "ov_eigenvalues": "ov_eig"}
ANALYSIS_FIGURES = tuple(DRAWN_HERE)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def pack_signed(mats: np.ndarray) -> dict:
    """`[E', ...]` as int8 with a per-member scale (value = byte / 127 * scale): a heatmap needs
    no more, and it is half of float16."""
    m = np.nan_to_num(np.asarray(mats, np.float32))
    scale = np.abs(m.reshape(len(m), -1)).max(1)
    scale[scale == 0] = 1.0
    q = np.round(m / scale.reshape(-1, *[1] * (m.ndim - 1)) * 127).astype(np.int8)
    return {"scale": [float(f"{s:.5g}") for s in scale], "b64": _b64(q)}


def figure_data(arrays: dict, pack_patterns) -> dict | None:
    """The single-model figures of every stored member as data, from analysis/arrays.npz."""
    out = {}
    if "positional_qk_prev_token_head" in arrays:
        pos = arrays["positional_qk_prev_token_head"]
        out["pos_qk"] = {"T": int(pos.shape[-1]), **pack_patterns(pos)}
    if "full_ov_induction_head" in arrays:
        out["full_ov"] = {"V": int(arrays["full_ov_induction_head"].shape[-1]),
                          **pack_signed(arrays["full_ov_induction_head"])}
    if "ov_eigenvalues_real" in arrays:
        re_, im = arrays["ov_eigenvalues_real"], arrays["ov_eigenvalues_imag"]
        f16 = lambda a: np.clip(np.nan_to_num(a), -6e4, 6e4).astype("<f2")  # noqa: E731 (a diverged member's)
        out["ov_eig"] = {"K": int(re_.shape[-1]), "re": _b64(f16(re_)), "im": _b64(f16(im))}
    return {"members": [int(m) for m in arrays["members"]], **out} if out else None


def _is(name: str, stems) -> bool:
    return any(re.fullmatch(rf"analysis-{s}(_[0-9]+)?", name) for s in stems)


def render_analysis_figures(data: dict) -> str | None:
    part = data.get("circuit")
    if not part or not (part.get("_figures") or part.get("heads")):
        return None
    fm = (part.get("summary") or {}).get("figure_member", 0)
    figs = part.get("_figures", [])
    drawn = {stem for stem, key in DRAWN_HERE.items()
             if (part.get("heads") if key == "heads" else (part.get("figures") or {}).get(key))}
    static = [f for f in figs if not _is(f["name"], REDRAWN_FIGURES) and not _is(f["name"], drawn)]
    copies = [f for f in figs if f not in static]
    out = ["<h2>Analysis figures</h2>"]
    if "ensemble_scores" in drawn:
        out.append("<h3>Every member's heads, by role</h3><p class=\"note\">A head's role changes from seed to seed, "
                   "so the scores are grouped by what each head is in its own member: its previous-token head, its "
                   "best induction head (both from the circuit analysis), and every other head. Without those two "
                   "roles (no circuit analysis, or one layer) the groups are the head indices. Box: quartiles; "
                   "whiskers: range; the selected member's heads in red.</p><div id=\"ens-roles\" class=\"chart-row\">"
                   "</div>")
    single = [("pos_qk", "Positional QK pattern of the previous-token head",
               "softmax(mask(W_pos QK W_pos<sup>T</sup> / &radic;d_head)): where the head attends from positions "
               "alone."),
              ("full_ov", "Full OV circuit of the best induction head",
               "W_E OV W_U: row = source token, column = output logit; a copying head has a positive diagonal."),
              ("ov_eig", "Eigenvalues of every head's full OV circuit",
               "the complex plane; mostly positive real eigenvalues mean the head copies.")]
    views = [(k, t, n) for k, t, n in single if k in (part.get("figures") or {})]
    if views:
        out.append("<h3>The selected member's weights</h3><p class=\"note\">These follow the member selector.</p>"
                   "<div class=\"figures\">" + "".join(
                       f"<figure class=\"drawn\"><div id=\"fig-{k}\"></div><figcaption><b>{t}</b>: {n}</figcaption>"
                       f"</figure>" for k, t, n in views) + "</div>")
    if static:
        singles = [f for f in static if not _is(f["name"], ("ensemble_scores",))]
        out.append((f"<p class=\"note\">Figures this analysis stored as images only; the single-model ones show "
                    f"member {fmt(fm)} (analyse again for the per-member views).</p>" if singles else "")
                   + figures(static))
    if copies:
        out.append(f"<details><summary>Static copies of the views drawn above (PNG; single-model ones: member "
                   f"{esc(fmt(fm))})</summary>{figures(copies)}</details>")
    return "".join(out)
