/* induction-jax report: the analysis figures, drawn for the selected member from the data the
 * analysis stored (analysis/arrays.npz, scores.csv): the ensemble's head scores grouped by each
 * member's head roles, the positional QK pattern of its previous-token head, the full OV circuit
 * of its best induction head and every head's OV eigenvalues. Uses report.js's helpers. */
(function () {
  "use strict";

  const R = window.__reportLib;
  if (!R) return;
  const { CIRCUIT, CIRCUIT_ROWS, el, svg, fmt, isNum, headName, label, onMember } = R;
  const FIGS = CIRCUIT.figures || {};
  const HEADS = CIRCUIT.heads;
  const slot = {};
  (FIGS.members || []).forEach((m, i) => { slot[m] = i; });

  function bytesOf(b64) {
    const bin = atob(b64), out = new Int8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i) << 24 >> 24;
    return out;
  }

  function missing(box, what, m) {
    box.append(el("p", { class: "warn", text: "No " + what + " stored for " + label(m) + ": analysis/arrays.npz keeps the first "
      + (FIGS.members || []).length + " members." }));
  }

  // ---- the ensemble's heads by role ------------------------------------------------------------------
  // Each member's previous-token head, its best induction head, the rest; by head index without the roles.
  function roleGroups() {
    const { L, H } = HEADS, E = HEADS.values[HEADS.columns[0]].length;
    const rows = [];
    for (let e = 0; e < E; e++) rows.push(CIRCUIT_ROWS[e]);
    const same = (a, b) => a[0] === b[0] && a[1] === b[1];
    const roles = rows.every((r) => r && Array.isArray(r.prev_token_head) && Array.isArray(r.induction_head)
      && !same(r.prev_token_head, r.induction_head));
    if (!roles) {
      const groups = [];
      for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
        groups.push({ name: headName(l, h), items: rows.map((_, e) => [e, l, h]) });
      }
      return { byRole: false, groups };
    }
    const pt = [], ih = [], rest = [];
    rows.forEach((r, e) => {
      for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
        const k = [l, h];
        (same(k, r.prev_token_head) ? pt : same(k, r.induction_head) ? ih : rest).push([e, l, h]);
      }
    });
    return { byRole: true, groups: [{ name: "previous-token head", items: pt }, { name: "best induction head", items: ih },
      { name: "other heads", items: rest }] };
  }

  function quantile(sorted, q) {
    const i = (sorted.length - 1) * q, lo = Math.floor(i), hi = Math.ceil(i);
    return sorted[lo] + (sorted[hi] - sorted[lo]) * (i - lo);
  }

  function boxPanel(name, groups, m) {
    const vals = HEADS.values[name];
    const W = 330, Hh = 250, pad = { l: 44, r: 8, t: 22, b: 58 };
    const all = [];
    groups.forEach((g) => g.items.forEach(([e, l, h]) => { const v = vals[e][l][h]; if (isNum(v)) all.push(v); }));
    if (!all.length) return null;
    let lo = Math.min(0, ...all), hi = Math.max(...all);
    if (hi === lo) hi = lo + 1;
    const y = (v) => pad.t + (hi - v) / (hi - lo) * (Hh - pad.t - pad.b);
    const gw = (W - pad.l - pad.r) / groups.length;
    const root = svg("svg", { viewBox: "0 0 " + W + " " + Hh, role: "img", "aria-label": name + " by role" });
    root.append(svg("text", { x: W / 2, y: 14, "text-anchor": "middle", "font-weight": 600 }, name.replace(/_/g, " ")));
    for (const t of R.niceTicks(lo, hi, 4)) {
      root.append(svg("line", { x1: pad.l, x2: W - pad.r, y1: y(t), y2: y(t), stroke: "#eceff2" }));
      root.append(svg("text", { x: pad.l - 5, y: y(t) + 4, "text-anchor": "end" }, String(Number(t.toPrecision(4)))));
    }
    groups.forEach((g, i) => {
      const cx = pad.l + (i + 0.5) * gw, bw = Math.min(46, gw * 0.5);
      const v = g.items.map(([e, l, h]) => vals[e][l][h]).filter(isNum).sort((a, b) => a - b);
      if (v.length) {
        const [q1, q2, q3] = [0.25, 0.5, 0.75].map((q) => quantile(v, q));
        root.append(svg("line", { x1: cx, x2: cx, y1: y(v[0]), y2: y(v[v.length - 1]), stroke: "#777" }));
        root.append(svg("rect", { x: cx - bw / 2, width: bw, y: y(q3), height: Math.max(1, y(q1) - y(q3)), fill: "#e8eef6",
          stroke: "#5f6b76", "data-tip": g.name + " · " + name + "\nmedian " + fmt(q2) + ", quartiles " + fmt(q1) + " – " + fmt(q3)
            + "\nrange " + fmt(v[0]) + " – " + fmt(v[v.length - 1]) + " (" + v.length + " heads)" }));
        root.append(svg("line", { x1: cx - bw / 2, x2: cx + bw / 2, y1: y(q2), y2: y(q2), stroke: "#1d2125", "stroke-width": 2 }));
      }
      g.items.forEach(([e, l, h], j) => {
        const val = vals[e][l][h];
        if (!isNum(val)) return;
        const sel = e === m, jitter = ((j * 0.618034) % 1 - 0.5) * bw * 0.9;
        root.append(svg("circle", { cx: cx + (sel ? 0 : jitter), cy: y(val), r: sel ? 4.5 : 2.2, class: sel ? "sel" : "dot",
          fill: sel ? "#c0392b" : "#1f5fa8", "fill-opacity": sel ? 1 : 0.45,
          "data-tip": label(e) + " · " + headName(l, h) + " (" + g.name + ")\n" + name + " " + fmt(val) }));
      });
      const words = g.name.split(" ");
      const lines = words.length > 1 && g.name.length > 10 ? [words.slice(0, -1).join(" "), words[words.length - 1]] : [g.name];
      lines.forEach((t, k) => root.append(svg("text", { x: cx, y: Hh - pad.b + 16 + 13 * k, "text-anchor": "middle",
        "font-size": groups.length > 6 ? 9 : 11 }, t)));
    });
    return root;
  }

  function ensembleByRole() {
    const box = document.getElementById("ens-roles");
    if (!box || !HEADS || !HEADS.columns.length) return;
    const { byRole, groups } = roleGroups();
    box.setAttribute("data-grouping", byRole ? "role" : "head");
    const names = ["prev_token_score", "induction_score", "mean_ablation_delta"].filter((n) => HEADS.values[n]);
    onMember((m) => {
      box.textContent = "";
      names.forEach((n) => { const p = boxPanel(n, groups, m); if (p) box.append(el("div", { class: "chart box" }, [p])); });
    });
  }

  // ---- the selected member's single-model figures ------------------------------------------------------
  function tokenTitle(m, kind, head) {
    return label(m) + " · " + (head ? headName(head[0], head[1]) : "?") + " (" + kind + ")";
  }

  function posQkView() {
    const box = document.getElementById("fig-pos_qk"), P = FIGS.pos_qk;
    if (!box || !P) return;
    const T = P.T, values = R.decodeHalves(P.b64), S = P.causal ? T * (T + 1) / 2 : T * T;
    const size = Math.min(300, Math.max(160, 6 * T));
    onMember((m) => {
      box.textContent = "";
      box.setAttribute("data-member", m);
      if (!(m in slot)) { missing(box, "positional QK pattern", m); return; }
      const r = CIRCUIT_ROWS[m] || {}, mat = new Float32Array(T * T);
      let idx = slot[m] * S;
      for (let q = 0; q < T; q++) for (let k = 0; k < T; k++) {
        mat[q * T + k] = P.causal ? (k <= q ? values[idx++] : R.MASKED) : values[idx++];
      }
      const hm = new R.Heatmap(T, size, 0, (q, k, e) => R.showTip("query position " + q + ", key position " + k
        + "\nattention " + (mat[q * T + k] === R.MASKED ? "masked" : fmt(mat[q * T + k])), e.clientX, e.clientY), R.hideTip);
      hm.draw(mat);
      box.append(el("div", { class: "fig-title", text: tokenTitle(m, "previous-token head", r.prev_token_head) }), hm.wrap,
        el("div", { class: "legend-line" }, ["query ↓ key → · 0 ", el("span", { class: "colorbar" }), " 1"]));
    });
  }

  function diverging(v) {          // v in [-1, 1]: blue (negative) - white - red (positive)
    const t = Math.max(-1, Math.min(1, v)), a = Math.abs(t);
    const c = t < 0 ? [33, 102, 172] : [178, 24, 43];
    return c.map((x) => Math.round(255 + (x - 255) * a));
  }

  function fullOvView() {
    const box = document.getElementById("fig-full_ov"), F = FIGS.full_ov;
    if (!box || !F) return;
    const V = F.V, bytes = bytesOf(F.b64);
    const size = Math.min(300, Math.max(160, 4 * V));
    onMember((m) => {
      box.textContent = "";
      box.setAttribute("data-member", m);
      if (!(m in slot)) { missing(box, "full OV circuit", m); return; }
      const r = CIRCUIT_ROWS[m] || {}, scale = F.scale[slot[m]], mat = new Float32Array(V * V);
      for (let i = 0; i < V * V; i++) mat[i] = bytes[slot[m] * V * V + i] / 127;
      let diag = 0;
      for (let i = 0; i < V; i++) diag += mat[i * V + i] > 0 ? 1 : 0;
      const hm = new R.Heatmap(V, size, 0, (q, k, e) => R.showTip("source token " + q + " → logit of token " + k
        + "\n" + fmt(mat[q * V + k] * scale), e.clientX, e.clientY), R.hideTip);
      hm.draw(mat, diverging);
      box.append(el("div", { class: "fig-title", text: tokenTitle(m, "best induction head", r.induction_head) }), hm.wrap,
        el("div", { class: "legend-line", text: "−" + fmt(scale) + " blue · 0 white · +" + fmt(scale) + " red · diagonal positive for "
          + diag + " of " + V + " tokens" }));
    });
  }

  function ovEigView() {
    const box = document.getElementById("fig-ov_eig"), G = FIGS.ov_eig;
    if (!box || !G || !HEADS) return;
    const { L, H } = HEADS, K = G.K, re = R.decodeHalves(G.re), im = R.decodeHalves(G.im);
    const copy = HEADS.values.ov_copying_score;
    onMember((m) => {
      box.textContent = "";
      box.setAttribute("data-member", m);
      if (!(m in slot)) { missing(box, "OV eigenvalues", m); return; }
      const r = CIRCUIT_ROWS[m] || {}, cell = 74, W = H * cell, Hh = L * (cell + 14);
      const root = svg("svg", { viewBox: "0 0 " + W + " " + Hh, role: "img", "aria-label": "OV eigenvalues of " + label(m) });
      for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
        const base = ((slot[m] * L + l) * H + h) * K, x0 = h * cell, y0 = l * (cell + 14) + 14;
        let lim = 0;
        for (let k = 0; k < K; k++) lim = Math.max(lim, Math.hypot(re[base + k], im[base + k]));
        lim = lim * 1.1 || 1;
        const c = x0 + cell / 2, cy = y0 + (cell - 6) / 2, s = (cell - 10) / 2 / lim;
        const role = R.sameHead(r.prev_token_head, l, h) ? "pt" : R.sameHead(r.induction_head, l, h) ? "ih" : null;
        root.append(svg("rect", { x: x0 + 2, y: y0, width: cell - 4, height: cell - 6, fill: "#fff", stroke: role === "ih" ? "#6f2dbd" : role === "pt" ? "#d9480f" : "#d5dbe1" }));
        root.append(svg("line", { x1: x0 + 2, x2: x0 + cell - 2, y1: cy, y2: cy, stroke: "#bbb" }));
        root.append(svg("line", { x1: c, x2: c, y1: y0, y2: y0 + cell - 6, stroke: "#bbb" }));
        for (let k = 0; k < K; k++) {
          root.append(svg("circle", { cx: c + re[base + k] * s, cy: cy - im[base + k] * s, r: 1.8, fill: "#6f2dbd", "fill-opacity": 0.8 }));
        }
        const cs = copy ? copy[m][l][h] : null;
        root.append(svg("text", { x: c, y: y0 - 3, "text-anchor": "middle", "font-size": 9, class: role,
          "data-tip": headName(l, h) + ": copying score " + fmt(cs) }, headName(l, h) + (isNum(cs) ? " " + (cs >= 0 ? "+" : "") + cs.toFixed(2) : "")));
      }
      box.append(el("div", { class: "fig-title", text: label(m) + " · copying score beside each head" }), root);
    });
  }

  ensembleByRole();
  posQkView();
  fullOvView();
  ovEigView();
})();
