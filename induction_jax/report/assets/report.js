/* induction-jax report: the interactive views, drawn from the JSON data inlined in the page.
 * Views register with `onMember`; the selector, the arrow keys and a click on a member's row
 * all go through `selectMember`, so every per-member view follows one selection. */
(function () {
  "use strict";

  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const RUN = DATA.run;
  const CIRCUIT = DATA.circuit || {};
  const PHASE = DATA.phase || {};
  const MEMBERS = RUN.members;
  const SUMMARY = CIRCUIT.summary || {};
  const THRESHOLDS = SUMMARY.thresholds || {};
  const CIRCUIT_ROWS = {};
  (CIRCUIT.members || []).forEach((r) => { CIRCUIT_ROWS[r.member] = r; });
  const SVG_NS = "http://www.w3.org/2000/svg";
  const views = [];
  let current = 0;

  // ---- helpers ------------------------------------------------------------------------------
  function $(id) { return document.getElementById(id); }

  function el(tag, attrs, children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const c of children || []) e.append(c);
    return e;
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function isNum(v) { return typeof v === "number" && isFinite(v); }

  function fmt(v) {
    if (typeof v === "boolean") return v ? "yes" : "no";
    if (!isNum(v)) return v === null || v === undefined ? "n/a" : String(v);
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a >= 1e4 || a < 1e-3)) return v.toExponential(2);
    return v.toFixed(a >= 100 ? 1 : 3);
  }

  function headName(l, h) { return "L" + l + "H" + h; }
  function sameHead(a, l, h) { return Array.isArray(a) && a[0] === l && a[1] === h; }
  function label(m) { return (MEMBERS[m] || {}).label || "member " + m; }

  function onMember(fn) { views.push(fn); }

  // ---- tooltip --------------------------------------------------------------------------------
  const tip = $("tooltip");
  function showTip(text, x, y) {
    tip.textContent = text;
    tip.hidden = false;
    const w = tip.offsetWidth, h = tip.offsetHeight;
    let left = x + 14, top = y + 14;
    if (left + w > window.innerWidth - 4) left = Math.max(4, x - w - 10);
    if (top + h > window.innerHeight - 4) top = Math.max(4, y - h - 10);
    tip.style.left = left + "px";
    tip.style.top = top + "px";
  }
  function hideTip() { tip.hidden = true; }
  document.addEventListener("mousemove", (e) => {
    const t = e.target.closest ? e.target.closest("[data-tip]") : null;
    if (t) showTip(t.getAttribute("data-tip"), e.clientX, e.clientY);
    else if (!e.target.closest || !e.target.closest(".hm")) hideTip();
  });
  document.addEventListener("scroll", hideTip, { passive: true });

  // ---- member selection -------------------------------------------------------------------------
  const select = $("member-select");

  function selectMember(i) {
    if (!MEMBERS.length) return;
    i = Math.max(0, Math.min(MEMBERS.length - 1, Number(i) | 0));
    current = i;
    if (select && select.value !== String(i)) select.value = String(i);
    document.querySelectorAll("tr.selected").forEach((r) => r.classList.remove("selected"));
    document.querySelectorAll('tr[data-member="' + i + '"]').forEach((r) => r.classList.add("selected"));
    for (const view of views) {
      try { view(i); } catch (err) { setTimeout(() => { throw err; }); }   // reported, the others still draw
    }
  }

  if (select) select.addEventListener("change", () => selectMember(select.value));
  if ($("member-prev")) $("member-prev").addEventListener("click", () => selectMember(current - 1));
  if ($("member-next")) $("member-next").addEventListener("click", () => selectMember(current + 1));
  document.addEventListener("keydown", (e) => {
    if (e.altKey || e.ctrlKey || e.metaKey || e.shiftKey) return;
    const tag = (e.target && e.target.tagName) || "";
    if (tag === "SELECT" || tag === "INPUT" || tag === "TEXTAREA") return;   // the control handles its keys
    if (e.key === "ArrowLeft") { selectMember(current - 1); e.preventDefault(); }
    else if (e.key === "ArrowRight") { selectMember(current + 1); e.preventDefault(); }
  });
  document.addEventListener("click", (e) => {
    const row = e.target.closest ? e.target.closest("tbody tr[data-member]") : null;
    if (row) selectMember(row.getAttribute("data-member"));
  });

  // ---- sortable tables ----------------------------------------------------------------------------
  function makeSortable(table) {
    const head = table.tHead && table.tHead.rows[0];
    if (!head) return;
    Array.from(head.cells).forEach((th, col) => {
      th.addEventListener("click", () => {
        const asc = !th.classList.contains("sorted-asc");
        const body = table.tBodies[0];
        const rows = Array.from(body.rows);
        const numeric = rows.every((r) => r.cells[col] && r.cells[col].hasAttribute("data-v"));
        const key = (r) => {
          const c = r.cells[col];
          if (numeric) { const s = c.getAttribute("data-v"); return s === "" ? null : Number(s); }
          const s = c.textContent.trim();
          return s === "" || s === "n/a" ? null : s;
        };
        const keyed = rows.map((r, i) => ({ r, i, k: key(r) }));
        keyed.sort((a, b) => {
          if (a.k === null || b.k === null) return (a.k === null) - (b.k === null) || a.i - b.i;   // missing last
          const d = numeric ? a.k - b.k : a.k.localeCompare(b.k, undefined, { numeric: true });
          return (asc ? d : -d) || a.i - b.i;
        });
        Array.from(head.cells).forEach((c) => { c.classList.remove("sorted-asc", "sorted-desc"); c.removeAttribute("aria-sort"); });
        th.classList.add(asc ? "sorted-asc" : "sorted-desc");
        th.setAttribute("aria-sort", asc ? "ascending" : "descending");
        keyed.forEach((x) => body.appendChild(x.r));
      });
    });
  }
  document.querySelectorAll("table.sortable").forEach(makeSortable);

  // ---- attention patterns ---------------------------------------------------------------------------
  const ATT = CIRCUIT.attention;
  let halfTable = null;
  function decodeHalves(b64) {
    if (!halfTable) {
      halfTable = new Float32Array(65536);
      for (let h = 0; h < 65536; h++) {
        const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
        halfTable[h] = e === 0 ? s * Math.pow(2, -14) * (f / 1024)
          : e === 31 ? (f ? NaN : s * Infinity) : s * Math.pow(2, e - 15) * (1 + f / 1024);
      }
    }
    const bin = atob(b64);
    const out = new Float32Array(bin.length >> 1);
    for (let i = 0; i < out.length; i++) out[i] = halfTable[bin.charCodeAt(2 * i) | (bin.charCodeAt(2 * i + 1) << 8)];
    return out;
  }

  // Colour map for attention in [0, 1] (white -> dark blue); masked cells light grey, NaN pink.
  const STOPS = [[0, [255, 255, 255]], [0.25, [198, 219, 239]], [0.5, [107, 174, 214]], [0.75, [33, 113, 181]], [1, [8, 48, 107]]];
  const LUT = [];
  for (let i = 0; i < 256; i++) {
    const t = i / 255;
    let j = 0;
    while (j < STOPS.length - 2 && t > STOPS[j + 1][0]) j++;
    const [t0, c0] = STOPS[j], [t1, c1] = STOPS[j + 1];
    const u = (t - t0) / (t1 - t0);
    LUT.push(c0.map((c, k) => Math.round(c + (c1[k] - c) * u)));
  }

  const MASKED = -1;

  function Heatmap(T, sizePx, half, onHover, onLeave) {
    this.T = T;
    this.canvas = el("canvas", { width: T, height: T });
    this.canvas.style.width = this.canvas.style.height = sizePx + "px";
    this.row = el("div", { class: "band row" });
    this.col = el("div", { class: "band col" });
    const parts = [this.canvas, this.row, this.col];
    if (half > 0 && half < T) {
      const v = el("div", { class: "half" }), hz = el("div", { class: "half" });
      Object.assign(v.style, { left: (half / T * 100) + "%", top: 0, bottom: 0, width: "1px" });
      Object.assign(hz.style, { top: (half / T * 100) + "%", left: 0, right: 0, height: "1px" });
      parts.push(v, hz);
    }
    this.wrap = el("div", { class: "hm" }, parts);
    this.row.style.height = this.col.style.width = (100 / T) + "%";
    this.canvas.addEventListener("mousemove", (e) => {
      const r = this.canvas.getBoundingClientRect();
      const k = Math.min(T - 1, Math.max(0, Math.floor((e.clientX - r.left) / r.width * T)));
      const q = Math.min(T - 1, Math.max(0, Math.floor((e.clientY - r.top) / r.height * T)));
      this.row.style.top = (q / T * 100) + "%";
      this.col.style.left = (k / T * 100) + "%";
      this.row.style.display = this.col.style.display = "block";
      onHover(q, k, e);
      e.stopPropagation();
    });
    this.canvas.addEventListener("mouseleave", () => {
      this.row.style.display = this.col.style.display = "none";
      onLeave();
    });
  }
  // `colour` (optional): value -> [r, g, b] for a finite, unmasked value (default: attention, white -> blue)
  Heatmap.prototype.draw = function (mat, colour) {
    const ctx = this.canvas.getContext("2d");
    const T = this.T, img = ctx.createImageData(T, T);
    const tint = colour || ((v) => LUT[Math.round(Math.max(0, Math.min(1, v)) * 255)]);
    for (let i = 0; i < T * T; i++) {
      const v = mat[i];
      const c = v === MASKED ? [226, 226, 226] : isNaN(v) ? [255, 190, 200] : tint(v);
      img.data[4 * i] = c[0]; img.data[4 * i + 1] = c[1]; img.data[4 * i + 2] = c[2]; img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
  };

  function attentionViewer() {
    const grid = $("attn-grid"), zoom = $("attn-zoom");
    if (!ATT || !grid || !zoom) return;
    const { T, L, H, tokens } = ATT;
    const P = ATT.period;
    const values = decodeHalves(ATT.b64);
    const S = ATT.causal ? T * (T + 1) / 2 : T * T;
    const slot = {};
    ATT.members.forEach((m, i) => { slot[m] = i; });

    function matrix(m, l, h) {
      const mat = new Float32Array(T * T);
      let idx = ((slot[m] * L + l) * H + h) * S;
      for (let q = 0; q < T; q++) {
        for (let k = 0; k < T; k++) {
          if (ATT.causal) mat[q * T + k] = k <= q ? values[idx++] : MASKED;
          else mat[q * T + k] = values[idx++];
        }
      }
      return mat;
    }

    function role(q, k) {
      if (k === q - 1) return "key = query − 1: the previous token";
      if (q >= P && k === q - P + 1) return "key = query − " + (P - 1) + ": the induction target (the token after the query token's earlier occurrence)";
      if (k === q) return "key = query: the token itself";
      return "";
    }

    function describe(m, l, h, q, k, v) {
      const r = CIRCUIT_ROWS[m] || {};
      const tag = sameHead(r.prev_token_head, l, h) ? " (previous-token head)" : sameHead(r.induction_head, l, h) ? " (best induction head)" : "";
      const lines = [headName(l, h) + tag + " · " + label(m),
        "query (destination) position " + q + ": token " + tokens[q],
        "key (source) position " + k + ": token " + tokens[k],
        v === MASKED ? "masked: the key comes after the query" : "attention " + (isNaN(v) ? "NaN" : v.toFixed(3))];
      const extra = role(q, k);
      if (extra) lines.push(extra);
      return lines.join("\n");
    }

    // the grid: one heatmap per head, built once, redrawn per member
    const thumb = Math.max(72, Math.min(128, Math.floor(560 / H)));
    const cells = [];
    const table = el("table");
    const hrow = el("tr", {}, [el("th")]);
    for (let h = 0; h < H; h++) hrow.append(el("th", { text: "head " + h }));
    table.append(el("thead", {}, [hrow]));
    const tbody = el("tbody");
    for (let l = 0; l < L; l++) {
      const tr = el("tr", {}, [el("th", { text: "layer " + l })]);
      cells.push([]);
      for (let h = 0; h < H; h++) {
        const hm = new Heatmap(T, thumb, P,
          (q, k, e) => showTip(describe(current, l, h, q, k, hm.mat ? hm.mat[q * T + k] : NaN), e.clientX, e.clientY), hideTip);
        const name = el("span", { class: "name", text: headName(l, h) + " " });
        const badges = el("span");
        const cell = el("div", { class: "head-cell", "data-head": headName(l, h), title: "click to enlarge" }, [name, badges, el("br"), hm.wrap]);
        cell.addEventListener("click", () => { pinned = true; zoomHead = [l, h]; drawZoom(current); markCells(current); });
        cells[l].push({ hm, cell, badges });
        tr.append(el("td", {}, [cell]));
      }
      tbody.append(tr);
    }
    table.append(tbody);
    const missing = el("p", { class: "warn" });
    grid.append(missing, table, el("div", { class: "legend-line" }, [
      "attention 0 ", el("span", { class: "colorbar" }), " 1 · grey: masked (key after query) · lines: the second half starts"]));

    let zoomHead = null, pinned = false;

    function markCells(m) {
      const r = CIRCUIT_ROWS[m] || {};
      for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
        const { cell, badges } = cells[l][h];
        const pt = sameHead(r.prev_token_head, l, h), ih = sameHead(r.induction_head, l, h);
        cell.classList.toggle("pt", pt);
        cell.classList.toggle("ih", ih);
        cell.classList.toggle("zoomed", !!zoomHead && zoomHead[0] === l && zoomHead[1] === h);
        badges.textContent = "";
        if (pt) badges.append(el("span", { class: "badge pt", text: "PT", title: "previous-token head" }));
        if (ih) badges.append(el("span", { class: "badge ih", text: "IH", title: "best induction head" }));
      }
    }

    // the zoomed head, with the tokens along both axes and as a strip below
    // cells of at least 14 px: token labels of 11 px at T = 50 (wider than its column: it scrolls); - / + zoom
    let cellPx = Math.max(14, Math.min(22, Math.floor(720 / T)));
    function drawZoom(m) {
      zoom.textContent = "";
      if (!(m in slot) || !zoomHead) return;
      const [l, h] = zoomHead;
      const r = CIRCUIT_ROWS[m] || {};
      const title = el("div", { class: "zoom-title", id: "zoom-title", text: label(m) + " · " + headName(l, h) + " " });
      if (sameHead(r.prev_token_head, l, h)) title.append(el("span", { class: "badge pt", text: "PT" }));
      if (sameHead(r.induction_head, l, h)) title.append(el("span", { class: "badge ih", text: "IH" }));
      [["−", -2, "smaller cells"], ["+", 2, "larger cells (readable token labels)"]].forEach(([t, d, tipText]) => {
        const b = el("button", { type: "button", class: "zoom-btn", title: tipText, text: t });
        b.addEventListener("click", () => { cellPx = Math.max(6, Math.min(30, cellPx + d)); drawZoom(current); });
        title.append(b);
      });
      const xs = [], ys = [], strip = [];
      const xAxis = el("div", { class: "zoom-axis x" }), yAxis = el("div", { class: "zoom-axis y" });
      const stripEl = el("div", { class: "strip", title: "the probe sequence" });
      for (let t = 0; t < T; t++) {
        const cls = t >= P ? "second" : null;
        const x = el("span", { class: cls, title: "key position " + t, text: String(tokens[t]) });
        x.style.width = cellPx + "px";
        const y = el("span", { class: cls, title: "query position " + t, text: String(tokens[t]) });
        y.style.height = cellPx + "px";
        const s = el("span", { class: cls, title: "position " + t, text: String(tokens[t]) });
        xs.push(x); ys.push(y); strip.push(s);
        xAxis.append(x); yAxis.append(y); stripEl.append(s);
      }
      let lit = [];
      const unlight = () => { lit.forEach(([e, c]) => e.classList.remove(c)); lit = []; };
      const mat = matrix(m, l, h);
      const hm = new Heatmap(T, cellPx * T, P, (q, k, e) => {
        unlight();
        lit = [[ys[q], "hl-q"], [strip[q], "hl-q"], [xs[k], "hl-k"], [strip[k], "hl-k"]];
        lit.forEach(([el_, c]) => el_.classList.add(c));
        showTip(describe(m, l, h, q, k, mat[q * T + k]), e.clientX, e.clientY);
      }, () => { unlight(); hideTip(); });
      hm.canvas.id = "zoom-canvas";
      hm.draw(mat);
      const fontPx = Math.max(7, Math.min(11, cellPx - 2));
      xAxis.style.fontSize = yAxis.style.fontSize = fontPx + "px";
      const body = el("div", { class: "zoom-body" }, [el("div", { class: "zoom-corner", text: "q \\ k" }), xAxis, yAxis, hm.wrap]);
      zoom.append(title, body, stripEl, el("div", { class: "legend-line" }, [
        el("i", { style: "background:rgba(31,95,168,.85)" }), "query (destination)",
        el("i", { style: "background:rgba(217,72,15,.85)" }), "key (source)",
        " · tokens of the second half in dark"]));
    }

    onMember((m) => {
      grid.setAttribute("data-member", m);
      const r = CIRCUIT_ROWS[m] || {};
      if (!pinned) zoomHead = Array.isArray(r.induction_head) ? r.induction_head.slice() : [L - 1, 0];
      markCells(m);
      if (!(m in slot)) {
        missing.textContent = "No attention patterns stored for " + label(m) + ": analysis/arrays.npz keeps the first "
          + ATT.members.length + " members.";
        table.style.display = "none";
        grid.setAttribute("data-digest", "");
        zoom.textContent = "";
        return;
      }
      missing.textContent = "";
      table.style.display = "";
      let digest = 0;
      for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
        const mat = matrix(m, l, h);
        cells[l][h].hm.mat = mat;
        cells[l][h].hm.draw(mat);
        for (let i = 0; i < mat.length; i++) if (mat[i] > 0) digest += mat[i] * ((i % 13) + 1) * (l * H + h + 1);
      }
      grid.setAttribute("data-digest", digest.toFixed(3));
      drawZoom(m);
    });
  }

  // ---- bar charts ----------------------------------------------------------------------------------
  function niceTicks(lo, hi, n) {
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((s) => s * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) out.push(Math.abs(v) < 1e-12 ? 0 : v);
    return out;
  }

  // cfg: {title, cats: [{label, cls}], series: [{name, color, values}], refs: [{y, label}], yLabel}
  function barChart(box, cfg) {
    box.textContent = "";
    const W = 760, Hh = 230, m = { l: 52, r: 12, t: 12, b: 36 };
    const pw = W - m.l - m.r, ph = Hh - m.t - m.b;
    const all = [0];
    cfg.series.forEach((s) => s.values.forEach((v) => { if (isNum(v)) all.push(v); }));
    (cfg.refs || []).forEach((r) => { if (isNum(r.y)) all.push(r.y); });
    let lo = Math.min(...all), hi = Math.max(...all);
    if (hi === lo) hi = lo + 1;
    const pad = (hi - lo) * 0.06;
    hi += pad; if (lo < 0) lo -= pad;
    const y = (v) => m.t + (hi - v) / (hi - lo) * ph;
    const root = svg("svg", { viewBox: "0 0 " + W + " " + Hh, role: "img", "aria-label": cfg.title });
    const gridG = svg("g", { class: "grid" }), axis = svg("g", { class: "axis" });
    for (const t of niceTicks(lo, hi, 5)) {
      gridG.append(svg("line", { x1: m.l, x2: W - m.r, y1: y(t), y2: y(t) }));
      axis.append(svg("text", { x: m.l - 6, y: y(t) + 4, "text-anchor": "end" }, String(Number(t.toPrecision(6)))));
    }
    root.append(gridG, axis);
    root.append(svg("line", { x1: m.l, x2: W - m.r, y1: y(0), y2: y(0), stroke: "#666" }));
    root.append(svg("text", { transform: "translate(12," + (m.t + ph / 2) + ") rotate(-90)", "text-anchor": "middle" }, cfg.yLabel || ""));
    const n = cfg.cats.length, gw = pw / Math.max(1, n), bw = gw * 0.8 / Math.max(1, cfg.series.length);
    cfg.cats.forEach((c, i) => {
      cfg.series.forEach((s, j) => {
        const v = s.values[i];
        const x = m.l + i * gw + gw * 0.1 + j * bw;
        if (!isNum(v)) {
          root.append(svg("text", { x: x + bw / 2, y: y(0) - 3, "text-anchor": "middle", fill: "#999", "font-size": 9,
            "data-tip": c.label + " · " + s.name + ": n/a" }, "–"));
          return;
        }
        root.append(svg("rect", { class: "bar", x: x, width: Math.max(1, bw - 1), y: Math.min(y(v), y(0)),
          height: Math.max(0.5, Math.abs(y(v) - y(0))), fill: s.color, "data-tip": c.label + " · " + s.name + ": " + fmt(v) }));
      });
      root.append(svg("text", { x: m.l + (i + 0.5) * gw, y: Hh - m.b + 15, "text-anchor": "middle", class: c.cls || null,
        "font-size": n > 24 ? 8 : 11 }, c.label));
    });
    (cfg.refs || []).forEach((r) => {
      if (!isNum(r.y)) return;
      root.append(svg("line", { x1: m.l, x2: W - m.r, y1: y(r.y), y2: y(r.y), stroke: "#c0392b", "stroke-dasharray": "5 4" }));
      root.append(svg("text", { x: W - m.r - 2, y: y(r.y) - 3, "text-anchor": "end", fill: "#c0392b", "font-size": 10 }, r.label));
    });
    const legend = el("div", { class: "legend" }, cfg.series.map((s) => el("span", {}, [el("i", { style: "background:" + s.color }), s.name])));
    box.append(el("div", { class: "title", text: cfg.title }), legend, root);
  }

  function headCharts() {
    const HEADS = CIRCUIT.heads;
    if (!HEADS || !$("chart-prev")) return;
    const { L, H, values } = HEADS;
    const series = (defs, m) => defs.filter(([key]) => values[key]).map(([key, name, color]) => ({
      name, color, values: [].concat(...(values[key][m] || []).map((row) => row || [])) }));
    const PREV = [["prev_token_score", "offset (position − 1)", "#1f5fa8"],
      ["prev_token_score_tokens", "token equality: rows with a target (ours)", "#35a29f"],
      ["prev_token_score_tl", "token equality: TransformerLens detect_head", "#9aa5b1"]];
    const IND = [["induction_score", "offset (position − P + 1)", "#6f2dbd"],
      ["induction_score_tokens", "token equality: rows with a target (ours)", "#35a29f"],
      ["induction_score_tl", "token equality: TransformerLens detect_head", "#9aa5b1"]];
    const ABL = [["zero_ablation_delta", "zero ablation", "#b3261e"], ["mean_ablation_delta", "mean ablation", "#e08e45"]];
    onMember((m) => {
      const r = CIRCUIT_ROWS[m] || {};
      const cats = [];
      for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
        cats.push({ label: headName(l, h), cls: sameHead(r.prev_token_head, l, h) ? "pt" : sameHead(r.induction_head, l, h) ? "ih" : null });
      }
      const none = m >= values[HEADS.columns[0]].length;
      barChart($("chart-prev"), { title: "Previous-token score per head · " + label(m), cats, series: none ? [] : series(PREV, m),
        refs: [{ y: THRESHOLDS.prev_token_score, label: "threshold" }], yLabel: "score" });
      barChart($("chart-ind"), { title: "Induction score per head · " + label(m), cats, series: none ? [] : series(IND, m),
        refs: [{ y: THRESHOLDS.induction_score, label: "threshold" }], yLabel: "score" });
      barChart($("chart-abl"), { title: "Ablation: loss increase per head · " + label(m), cats, series: none ? [] : series(ABL, m),
        refs: [{ y: THRESHOLDS.circuit_ablation_nats, label: "circuit threshold" }, { y: THRESHOLDS.other_ablation_nats, label: "other-head threshold" }],
        yLabel: "nats" });
    });
  }

  // ---- per-head table of the selected member ---------------------------------------------------------
  const SCORE_NAMES = {
    prev_token_score: ["PT", "previous-token score (offset: attention to position − 1)"],
    induction_score: ["IH", "induction score (offset: attention to position − P + 1)"],
    duplicate_token_score: ["dup", "duplicate-token score (offset: attention to position − P)"],
    prefix_matching_score: ["prefix", "prefix-matching score (on a sequence repeated several times)"],
    prev_token_score_tokens: ["PT tok", "previous-token score, token equality, rows with a target (ours)"],
    induction_score_tokens: ["IH tok", "induction score, token equality, rows with a target (ours)"],
    duplicate_score_tokens: ["dup tok", "duplicate-token score, token equality, rows with a target (ours)"],
    prev_token_score_tl: ["PT TL", "previous-token score, TransformerLens detect_head exactly"],
    induction_score_tl: ["IH TL", "induction score, TransformerLens detect_head exactly"],
    duplicate_score_tl: ["dup TL", "duplicate-token score, TransformerLens detect_head exactly"],
    positional_prev_token_score: ["pos PT", "positional previous-token score (from the weights: W_pos QK)"],
    ov_copying_score: ["OV copy", "OV copying score (full OV circuit)"],
    ov_top1: ["OV top1", "fraction of tokens whose full-OV top-1 output is the token itself"],
    ov_top5: ["OV top5", "fraction of tokens whose full-OV top-5 outputs include the token itself"],
    zero_ablation_delta: ["abl 0", "loss increase (nats) under zero ablation"],
    mean_ablation_delta: ["abl mean", "loss increase (nats) under mean ablation"],
    direct_logit_attribution: ["DLA", "direct logit attribution to the correct token"],
    max_k_composition_in: ["K in", "largest K-composition into this head"],
    max_k_composition_out: ["K out", "largest K-composition out of this head"],
  };

  function headTable() {
    const HEADS = CIRCUIT.heads, box = $("head-table");
    if (!HEADS || !box) return;
    const { L, H, columns, values } = HEADS;
    onMember((m) => {
      box.textContent = "";
      if (m >= values[columns[0]].length) { box.append(el("p", { class: "warn", text: "No per-head scores for " + label(m) + "." })); return; }
      const r = CIRCUIT_ROWS[m] || {};
      const hr = el("tr", {}, [el("th", { class: "txt", title: "layer and head", text: "head" })]);
      columns.forEach((c) => { const [abbr, title] = SCORE_NAMES[c] || [c, c]; hr.append(el("th", { title: title + " (" + c + ")", text: abbr })); });
      const body = el("tbody");
      for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
        const tag = sameHead(r.prev_token_head, l, h) ? " PT" : sameHead(r.induction_head, l, h) ? " IH" : "";
        const tr = el("tr", {}, [el("td", { class: "txt", "data-v": l * 10000 + h, text: headName(l, h) + tag })]);
        columns.forEach((c) => { const v = values[c][m][l][h]; tr.append(el("td", { "data-v": isNum(v) ? v : "", text: fmt(v) })); });
        body.append(tr);
      }
      const table = el("table", { class: "data sortable", id: "head-scores-table" }, [el("thead", {}, [hr]), body]);
      makeSortable(table);
      box.append(el("div", { class: "scroll" }, [table]));
    });
  }

  // ---- composition matrix ------------------------------------------------------------------------------
  function compositionView() {
    const COMP = CIRCUIT.composition, box = $("comp");
    if (!COMP || !box) return;
    const modes = ["k", "q", "v"].filter((k) => COMP[k]);
    let mode = modes.includes("k") ? "k" : modes[0];
    const slot = {};
    COMP.members.forEach((m, i) => { slot[m] = i; });
    const baselines = SUMMARY.composition_baseline || {};
    const zThreshold = THRESHOLDS.k_composition_std || 5;

    function draw(m) {
      box.textContent = "";
      const buttons = el("div", { class: "comp-modes" }, modes.map((k) => {
        const b = el("button", { type: "button", class: k === mode ? "on" : null, text: k.toUpperCase() + "-composition" });
        b.addEventListener("click", () => { mode = k; draw(current); });
        return b;
      }));
      box.append(buttons);
      if (!(m in slot)) { box.append(el("p", { class: "warn", text: "No composition scores stored for " + label(m) + "." })); return; }
      const mat = COMP[mode][slot[m]];
      const L = mat.length, H = mat[0].length;
      const base = baselines[mode + "_composition"] || {};
      const r = CIRCUIT_ROWS[m] || {};
      const head = el("tr", {}, [el("th", { text: "earlier ↓ / later →" })]);
      for (let l2 = 1; l2 < L; l2++) for (let h2 = 0; h2 < H; h2++) head.append(el("th", { text: headName(l2, h2) + (sameHead(r.induction_head, l2, h2) ? " IH" : "") }));
      const body = el("tbody");
      for (let l1 = 0; l1 < L - 1; l1++) for (let h1 = 0; h1 < H; h1++) {
        const tr = el("tr", {}, [el("th", { text: headName(l1, h1) + (sameHead(r.prev_token_head, l1, h1) ? " PT" : "") })]);
        for (let l2 = 1; l2 < L; l2++) for (let h2 = 0; h2 < H; h2++) {
          const v = mat[l1][h1][l2][h2];
          if (!isNum(v)) { tr.append(el("td", { class: "na", text: "–", title: "not composable (the later head is not in a later layer)" })); continue; }
          const z = isNum(base.mean) && isNum(base.std) && base.std > 0 ? (v - base.mean) / base.std : NaN;
          const a = isNum(z) ? Math.max(0, Math.min(1, z / (2 * zThreshold))) : 0;
          const td = el("td", { text: v.toFixed(3),
            "data-tip": headName(l1, h1) + " → " + headName(l2, h2) + ": " + mode.toUpperCase() + "-composition " + v.toFixed(3)
              + (isNum(z) ? "\nz = " + z.toFixed(1) + " sd above the random baseline " + fmt(base.mean) + " ± " + fmt(base.std) : "") });
          td.style.background = "rgba(217, 100, 20, " + (0.85 * a).toFixed(3) + ")";
          if (a > 0.55) td.style.color = "#fff";
          if (mode === "k" && sameHead(r.prev_token_head, l1, h1) && sameHead(r.induction_head, l2, h2)) td.classList.add("circuit");
          tr.append(td);
        }
        body.append(tr);
      }
      box.append(el("div", { class: "scroll" }, [el("table", { class: "comp", id: "comp-table" }, [el("thead", {}, [head]), body])]));
      box.append(el("p", { class: "note", text: "Rows: earlier heads (writing); columns: later heads (reading through their "
        + mode.toUpperCase() + " input). Random baseline: " + fmt(base.mean) + " ± " + fmt(base.std) + " (" + fmt(base.n_draws)
        + " draws of random matrices of these shapes); shading: z = (value − mean) / sd, full at z = " + 2 * zThreshold
        + "; the circuit threshold is z ≥ " + zThreshold + "." + (mode === "k" ? " Outlined: previous-token head → best induction head." : "") }));
    }
    onMember(draw);
  }

  // ---- member summary, phase timings, label -----------------------------------------------------------
  function memberSummary() {
    const box = $("mv-summary"), lab = $("mv-label");
    if (!box) return;
    onMember((m) => {
      if (lab) lab.textContent = label(m);
      box.textContent = "";
      const s = MEMBERS[m] || {};
      const r = CIRCUIT_ROWS[m];
      const p = (children) => box.append(el("p", {}, children));
      p(["Settings: init seed " + fmt(s.init_seed) + ", data seed " + fmt(s.data_seed) + ", lr " + fmt(s.lr) + ", weight decay " + fmt(s.weight_decay) + "."]);
      if (s.diverged_step !== null && s.diverged_step !== undefined) p([el("span", { class: "bad", text: "Diverged at step " + s.diverged_step + "." })]);
      const finals = Object.keys(s).filter((k) => k.startsWith("final_"));
      if (finals.length) p(["Final: " + finals.map((k) => k.slice(6).replace(/_/g, " ") + " " + fmt(s[k])).join(", ") + "."]);
      if (r) {
        p([el("b", { text: "Induction circuit: " }), el("span", { class: r.induction_circuit ? "good" : "bad", text: fmt(!!r.induction_circuit) }),
          "; textbook two-head form: ", el("span", { class: r.clean_circuit ? "good" : "bad", text: fmt(!!r.clean_circuit) }), "."]);
        p([el("span", { class: "badge pt", text: "PT" }), " previous-token head " + fmt(r.prev_token_head ? headName(...r.prev_token_head) : null)
          + " (score " + fmt(r.prev_token_score) + "); ", el("span", { class: "badge ih", text: "IH" }),
          " best induction head " + fmt(r.induction_head ? headName(...r.induction_head) : null) + " (score " + fmt(r.induction_score)
          + ") of " + fmt(r.n_induction_heads) + " induction heads; K-composition " + fmt(r.k_composition) + " (z " + fmt(r.k_composition_z) + ")."]);
        const failed = (c) => Object.keys(c || {}).filter((k) => !c[k]);
        const f1 = failed(r.shared_checks || r.checks), f2 = failed(r.checks);
        p(["Failed checks: circuit " + (f1.join(", ") || "none") + "; two-head form " + (f2.join(", ") || "none") + "."]);
      }
    });
  }

  function phaseTimings() {
    const box = $("mv-phase"), T = PHASE.timings;
    if (!box || !T) return;
    const cols = ["onset", "midpoint", "end", "peak_slope", "logistic_midpoint", "logistic_width", "probe_interval"];
    onMember((m) => {
      box.textContent = "";
      const hr = el("tr", {}, [el("th", { class: "txt", text: "curve" })].concat(cols.map((c) => el("th", { text: c.replace(/_/g, " ") })), [el("th", { text: "censored" })]));
      const body = el("tbody");
      Object.keys(T).forEach((curve) => {
        const r = T[curve][String(m)];
        if (!r) return;
        body.append(el("tr", {}, [el("td", { class: "txt", text: curve })].concat(cols.map((c) => el("td", { text: fmt(r[c]) })),
          [el("td", { class: r.censored ? "wrap warn" : "wrap", text: r.censored ? (r.reason || "yes") : "no" })])));
      });
      box.append(el("div", { class: "scroll" }, [el("table", { class: "data", id: "member-timings" }, [el("thead", {}, [hr]), body])]));
    });
  }

  // what the other views (figures.js) draw with; they register before the first selection
  window.__reportLib = { DATA, CIRCUIT, CIRCUIT_ROWS, MEMBERS, el, svg, fmt, isNum, headName, sameHead, label, onMember,
    Heatmap, MASKED, decodeHalves, showTip, hideTip, niceTicks, current: () => current };
  memberSummary();
  attentionViewer();
  headCharts();
  compositionView();
  headTable();
  phaseTimings();
  window.__report = { selectMember: selectMember, current: () => current };
  document.addEventListener("DOMContentLoaded", () => selectMember(0));
})();
