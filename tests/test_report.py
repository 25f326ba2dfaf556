"""The offline HTML report (induction_jax.report), built from real tiny run directories."""

import base64
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from induction_jax.arrays import load_arrays, save_arrays
from induction_jax.report import client_data, gather, render, write_report
from induction_jax.rundir import MANIFEST, RunDir

# Two members, seconds to train; the analysis after training writes analysis/.
TINY = ["--seeds", "2", "--steps", "200", "--d-vocab", "16", "--half-length", "6", "--n-ctx", "12",
        "--d-model", "16", "--n-heads", "2", "--eval-every", "10", "--chunk-steps", "20", "--no-progress"]


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "induction_jax.cli", *args]


def make_run(tmp_path_factory, name: str, *extra: str, phase: bool = True) -> Path:
    """A tiny trained and analysed run (then `phase`), built once per pytest session and shared
    by the tests of this file and of test_report_browser.py. Tests must not modify it."""
    root = tmp_path_factory.getbasetemp() / f"report-run-{name}"
    out = root / "run"
    if not (root / "done").exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        r = subprocess.run(cli("train", *TINY, *extra, "--out", str(out)), capture_output=True, text=True)
        assert r.returncode in (0, 3), r.stderr          # 3: members diverged (the run is still written)
        if phase:
            r = subprocess.run(cli("phase", str(out)), capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
        (root / "done").touch()
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory, "two")


@pytest.fixture(scope="module")
def diverged_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory, "diverged", "--init-std", "100", "--steps", "40", phase=False)


def copy_run(src: Path, dst: Path, parts=("config.json", "summary.json", "analysis", "phase", "plots")) -> RunDir:
    """A copy of some parts of a run (no checkpoints), for tests that alter or remove files."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in parts:
        p = src / name
        if p.is_dir():
            shutil.copytree(p, dst / name)
        elif p.is_file():
            shutil.copy2(p, dst / name)
    return RunDir(dst)


def embedded(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html, re.S)
    assert m, "no embedded data block"
    return json.loads(m.group(1))


def decode_patterns(att: dict) -> np.ndarray:
    """What the page's script decodes: [E', L, H, T, T] float16 (masked cells 0)."""
    flat = np.frombuffer(base64.b64decode(att["b64"]), "<f2")
    E, L, H, T = len(att["members"]), att["L"], att["H"], att["T"]
    if not att["causal"]:
        return flat.reshape(E, L, H, T, T)
    out = np.zeros((E, L, H, T, T), np.float16)
    out[..., np.tril_indices(T)[0], np.tril_indices(T)[1]] = flat.reshape(E, L, H, -1)
    return out


@pytest.fixture(scope="module")
def report(run_dir, tmp_path_factory) -> tuple[Path, str]:
    """write_report on a copy of the run (the shared run stays untouched)."""
    run = copy_run(run_dir, tmp_path_factory.mktemp("report") / "run")
    path = write_report(run)
    return path, path.read_text()


def test_report_written_atomically_and_recorded_in_the_manifest(report):
    path, _ = report
    assert path.name == "report.html" and path.is_file()
    assert "report.html" in path.parent.joinpath(MANIFEST).read_text().splitlines()
    assert not list(path.parent.glob("report.html.tmp*"))


def test_report_embeds_the_data_of_both_members(report, run_dir):
    _, html = report
    data = embedded(html)
    assert [m["member"] for m in data["run"]["members"]] == [0, 1]
    assert [m["member"] for m in data["circuit"]["members"]] == [0, 1]
    att = data["circuit"]["attention"]
    assert att["members"] == [0, 1]
    arrays = load_arrays(run_dir / "analysis" / "arrays.npz")
    np.testing.assert_array_equal(decode_patterns(att), arrays["patterns"])      # exact: float16 as stored
    assert att["tokens"] == arrays["tokens"].tolist() and att["T"] == 12 and att["period"] == 6
    heads = data["circuit"]["heads"]
    assert len(heads["values"]["induction_score"]) == 2
    assert np.shape(heads["values"]["induction_score"]) == (2, heads["L"], heads["H"])
    assert {"prev_token_score_tokens", "prev_token_score_tl", "zero_ablation_delta"} <= set(heads["columns"])
    assert len(data["circuit"]["composition"]["k"]) == 2
    assert set(data["phase"]["timings"]["in_context_score"]) == {"0", "1"}
    # the static-only parts (figures, the phase statistics) are not duplicated into the data
    assert "_figures" not in json.dumps(data) and "_stats" not in data["phase"]


def test_report_is_offline(report):
    _, html = report
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    assert not re.search(r"<link\b|@import|url\(\s*['\"]?(?:https?:)?//", html, re.I)
    assert not re.search(r"<script[^>]*\bsrc=", html, re.I)
    srcs = re.findall(r"""<img[^>]*\bsrc="([^"]{0,40})""", html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)


def test_report_static_sections(report, run_dir):
    _, html = report
    assert "<h2>Config</h2>" in html and "<caption>model</caption>" in html
    assert re.search(r"<th[^>]*>d_vocab</th><td[^>]*>16</td>", html)        # a readable table, not a JSON dump
    assert '"d_vocab":' not in html.split('id="report-data"')[0]
    assert 'id="members-table"' in html and 'id="circuit-table"' in html
    assert html.count('<tr data-member="') >= 4                              # members and circuit tables
    assert "checkpoint step <b>200</b> of 200 (the end of training)" in html
    assert '<section id="phase">' in html and 'id="phase-stats"' in html and "probe int." in html
    assert '<section id="member">' in html and 'id="attn-grid"' in html
    assert '<section id="divergence">' not in html
    # every figure of the run is inlined, once
    pngs = [p for d in ("plots", "analysis", "phase") for p in (run_dir / d).glob("*.png")]
    assert html.count('src="data:image/png;base64,') == len(pngs) > 5


def test_divergence_section_names_every_diverged_member(diverged_dir, tmp_path):
    summary = json.loads((diverged_dir / "summary.json").read_text())
    assert summary["n_diverged"] == 2
    html = write_report(copy_run(diverged_dir, tmp_path / "run")).read_text()
    section = html.split('<section id="divergence">', 1)[1].split("</section>", 1)[0]
    assert "2 of 2 members diverged" in section and summary["divergence_rule"] in section
    for m in summary["members"]:
        assert m["label"] in section and f"<td data-v=\"{m['diverged_step']}\">{m['diverged_step']}</td>" in section
    assert html.index('<section id="divergence">') < html.index('<section id="config">')    # prominent: on top


def test_checkpoint_not_at_the_end_is_flagged(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    circuit = json.loads((run.path / "analysis" / "circuit.json").read_text())
    circuit["checkpoint_step"] = 100
    (run.path / "analysis" / "circuit.json").write_text(json.dumps(circuit))
    html = render(gather(run))
    assert "checkpoint step <b>100</b> of 200: <b>not the end of training</b>" in html
    assert 'class="checkpoint flag"' in html


def test_only_what_exists_is_shown(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run", parts=("config.json",))
    data = gather(run)
    assert set(data) == {"run"}
    html = write_report(run).read_text()
    assert "<caption>model</caption>" in html and 'id="members-table"' in html
    for absent in ('<section id="circuit">', '<section id="member">', '<section id="phase">',
                   '<section id="divergence">', "data:image/png"):
        assert absent not in html
    assert "No circuit analysis in this run directory" in html
    assert embedded(html)["run"]["name"] == "run"


def test_damaged_arrays_leave_out_their_views_only(run_dir, tmp_path):
    run = copy_run(run_dir, tmp_path / "run")
    npz = run.path / "analysis" / "arrays.npz"
    npz.write_bytes(npz.read_bytes()[:200])
    html = write_report(run).read_text()
    data = embedded(html)
    assert "attention" not in data["circuit"] and "composition" not in data["circuit"]
    assert "heads" in data["circuit"] and 'id="circuit-table"' in html
    assert "arrays.npz: unreadable, truncated or damaged" in html


def test_nothing_in_the_data_can_close_the_script_element(run_dir, tmp_path):
    data = gather(copy_run(run_dir, tmp_path / "run"))
    data["run"]["members"][0]["label"] = "</script><script>alert(1)</script>"
    html = render(data)
    block = html.split('id="report-data">', 1)[1].split("</script>", 1)[0]
    assert json.loads(block)["run"]["members"][0]["label"] == "</script><script>alert(1)</script>"
    assert "&lt;/script&gt;" in html                         # escaped in the static tables and the selector
    assert client_data(data)["run"]["members"][0]["label"].startswith("</script>")


def test_a_64_member_report_stays_small(run_dir, tmp_path):
    """64 members of the default shape (2 layers x 4 heads, 50 positions) with every view."""
    E, L, H, T = 64, 2, 4, 50
    run = copy_run(run_dir, tmp_path / "run", parts=("config.json", "plots", "phase"))
    meta = json.loads(run.config_json.read_text())
    meta["members"] = {"init_seed": list(range(E)), "data_seed": list(range(E)), "lr": [1e-2] * E,
                       "weight_decay": [1e-2] * E}
    run.config_json.write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    logits = np.where(np.tril(np.ones((T, T), bool)), rng.normal(0, 3, (E, L, H, T, T)), -np.inf)
    patterns = np.exp(logits - logits.max(-1, keepdims=True))
    patterns /= patterns.sum(-1, keepdims=True)
    comp = rng.uniform(0, 1, (E, L, H, L, H)).astype(np.float32)
    (run.path / "analysis").mkdir()
    save_arrays(run.path / "analysis" / "arrays.npz", {
        "members": np.arange(E), "tokens": rng.integers(0, 64, T), "patterns": patterns.astype(np.float16),
        "q_composition": comp, "k_composition": comp, "v_composition": comp,
        "positional_qk_prev_token_head": patterns[:, 0, 0].astype(np.float16),
        "full_ov_induction_head": rng.normal(0, 1, (E, 64, 64)).astype(np.float16),
        "ov_eigenvalues_real": rng.normal(0, 1, (E, L, H, 16)).astype(np.float32),
        "ov_eigenvalues_imag": rng.normal(0, 1, (E, L, H, 16)).astype(np.float32)})
    header = "member,init_seed,data_seed,lr,weight_decay,layer,head," + ",".join(f"s{i}" for i in range(19))
    rows = [f"{e},{e},{e},0.01,0.01,{layer},{h}," + ",".join(f"{v:.6g}" for v in rng.uniform(0, 1, 19))
            for e in range(E) for layer in range(L) for h in range(H)]
    (run.path / "analysis" / "scores.csv").write_text("\n".join([header, *rows]) + "\n")
    for png in (run_dir / "analysis").glob("*.png"):
        shutil.copy2(png, run.path / "analysis" / png.name)
    path = write_report(run)
    data = embedded(path.read_text())
    assert data["circuit"]["attention"]["causal"] and len(data["circuit"]["attention"]["members"]) == E
    assert set(data["circuit"]["figures"]) == {"members", "pos_qk", "full_ov", "ov_eig"}
    assert len(json.dumps(data["circuit"]["figures"])) < 800_000       # the per-member single-model figures
    assert path.stat().st_size < 5_000_000


def test_the_page_leads_with_the_findings_and_folds_the_config(report):
    _, html = report
    sections = re.findall(r'<section id="([\w-]+)">', html)
    assert sections[:2] == ["top", "findings"] and sections[-1] == "config"
    findings = html.split('<section id="findings">', 1)[1].split("</section>", 1)[0]
    assert "What this run found" in findings and "Induction circuit" in findings
    assert re.search(r"<b>\d of 2</b> <span class=\"ci\">\(95% CI \d+%-\d+%\)</span> members show the transition", findings)
    config = html.split('<section id="config">', 1)[1]
    assert '<details id="config-details"><summary>' in config and "<caption>model</caption>" in config
    # the loss and primary-curve figures lead, and are not shown again below
    assert findings.count('src="data:image/png;base64,') == 2
    assert 'id="fig-phase-in_context_score"' in findings and 'id="fig-plots-loss"' in findings
    assert html.count('id="fig-phase-in_context_score"') == html.count('id="fig-plots-loss"') == 1


def test_findings_read_phase_censoring_its_interval_and_the_arms(run_dir, tmp_path):
    """A stats.json edited to known values: 3 of 4 formed (one below the rise threshold), the
    midpoint's interval and the paired shift of an intervention arm, as phase wrote them."""
    run = copy_run(run_dir, tmp_path / "run")
    path = run.path / "phase" / "stats.json"
    stats = json.loads(path.read_text())
    mid = {"n": 3, "n_censored": 1, "mean": 150.0, "std": 10.0, "median": 148.0, "ci95_low": 125.2,
           "ci95_high": 174.8, "ci95_method": "student t", "ci95_note": None}
    stats["in_context_score"]["midpoint"] = mid
    stats["censored"]["in_context_score"] = [{"member": 3, "reason": "no transition: rise +0.01 below 0.2"}]
    stats["arms"] = {"none": {"members": [0, 1], "n": 2, "primary_midpoint": mid},
                     "cut": {"members": [2, 3], "n": 2, "primary_midpoint": {"n": 1, "median": 190.0}}}
    stats["interventions"] = {"control": "none", "timing": "in_context_score midpoint",
                              "arms": {"none": {"n": 2}, "cut": {"n": 2, "mean_shift": 42.5, "ci95_low": 30.25,
                                                                 "ci95_high": 54.75}}}
    path.write_text(json.dumps(stats))
    html = render(gather(run))
    findings = html.split('<section id="findings">', 1)[1].split("</section>", 1)[0]
    assert "<b>3 of 4</b> <span class=\"ci\">(95% CI 19%-99%)</span>" in findings       # Clopper-Pearson
    assert "(1 no transition)" in findings
    assert "at step <b>148</b>" in findings and "125.2 to 174.8, student t" in findings
    arms = findings.split('id="findings-arms"', 1)[1].split("</table>", 1)[0]
    assert "cut" in arms and '<td data-v="42.5">42.5</td>' in arms and '<td data-v="30.25">30.25</td>' in arms


def test_single_model_figures_of_every_member_are_data(report, run_dir):
    """The positional QK of each member's previous-token head, the full OV of its best induction
    head and every head's OV eigenvalues go to the page (which draws the selected member's)."""
    _, html = report
    data = embedded(html)
    figs, rows = data["circuit"]["figures"], data["circuit"]["members"]
    arrays = load_arrays(run_dir / "analysis" / "arrays.npz")
    assert figs["members"] == [0, 1] and figs["pos_qk"]["T"] == 12 and figs["full_ov"]["V"] == 16
    pos = arrays["positional_qk_prev_token_head"]
    assert pos.shape == (2, 12, 12) and not np.allclose(pos[0], pos[1])
    q = np.frombuffer(base64.b64decode(figs["full_ov"]["b64"]), np.int8).reshape(2, 16, 16)
    ov = arrays["full_ov_induction_head"].astype(np.float32)
    for e in range(2):
        scale = figs["full_ov"]["scale"][e]
        assert scale == pytest.approx(np.abs(ov[e]).max(), rel=1e-3)
        np.testing.assert_allclose(q[e] / 127 * scale, ov[e], atol=scale / 127)
    assert len(base64.b64decode(figs["ov_eig"]["re"])) == 2 * arrays["ov_eigenvalues_real"].size
    # the PNGs (one member) stay, folded, as static copies of what is drawn
    section = html.split('<section id="analysis-figures">', 1)[1].split("</section>", 1)[0]
    assert 'id="ens-roles"' in section and 'id="fig-pos_qk"' in section and 'id="fig-full_ov"' in section
    assert section.index("<details>") < section.index('id="fig-analysis-full_ov_induction_head"')
    assert rows[0]["prev_token_head"][0] == 0 and rows[0]["induction_head"][0] == 1


def test_ensemble_scores_are_grouped_by_each_members_roles():
    from induction_jax.analysis.figures import role_groups
    rows = [{"prev_token_head": [0, 1], "induction_head": [1, 0]}, {"prev_token_head": [0, 0], "induction_head": [1, 1]}]
    labels, groups = role_groups(rows, 2, 2, 2)
    assert labels == ["previous-token head", "best induction head", "other heads"]
    assert groups[0] == [(0, 0, 1), (1, 0, 0)] and groups[1] == [(0, 1, 0), (1, 1, 1)]
    assert sorted(groups[2]) == [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0)]
    # one layer: both roles name the same head, so the groups fall back to the head indices
    labels, groups = role_groups([{"prev_token_head": [0, 1], "induction_head": [0, 1]}], 1, 1, 2)
    assert labels == ["L0H0", "L0H1"] and groups == [[(0, 0, 0)], [(0, 0, 1)]]
    assert role_groups(None, 1, 1, 2)[0] == ["L0H0", "L0H1"]


def test_findings_name_the_llc_stages(run_dir, tmp_path):
    from induction_jax.report.findings import render_findings
    data = gather(copy_run(run_dir, tmp_path / "run"))
    peak = lambda s: [{"step": s, "kind": "trough", "llc": 1.0}, {"step": s + 50, "kind": "peak", "llc": 9.0}]  # noqa: E731
    data["llc"] = {"_notes": [], "_figures": [], "_stats": {"members": [
        {"member": 0, "boundaries": peak(100.0)}, {"member": 1, "boundaries": peak(140.0)},
        {"member": 2, "boundaries": []}]}}
    html = render_findings(data)
    assert "<b>LLC stages</b>: trough in 2 of 3 (first at median step 120); peak in 2 of 3 (first at median step 170)" in html
