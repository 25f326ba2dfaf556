"""Faults and bad input lose nothing: kill-and-resume equals uninterrupted, broken checkpoints
fall back, bad input gets a one-line error, exit code 2, and the run directory as it was."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import STEPS, cli, tree_digest
from induction_jax.cli import main

def final_params(run: Path) -> dict:
    from induction_jax.analysis.weights import load_run_params
    return load_run_params(run)


def _wait_for_checkpoint(run: Path, step: int, proc, timeout=120):
    """Until the checkpoint of `step` has committed (Orbax writes its marker last)."""
    marker = run / "checkpoints" / str(step) / "commit_success.txt"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if marker.exists():
            return
        if proc.poll() is not None:
            pytest.fail(f"run ended before it could be interrupted: {proc.stderr.read()}")
        time.sleep(0.01)
    pytest.fail("run made no checkpoint")


def _assert_same_run(a: Path, b: Path):
    assert a.joinpath("metrics.csv").read_bytes() == b.joinpath("metrics.csv").read_bytes()
    pa, pb = final_params(a), final_params(b)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_kill_and_resume_equals_uninterrupted(reference, tmp_path, sig):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli("--steps", STEPS, "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(out, 200, proc)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    err = proc.stderr.read()
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM
        assert "Resume with: induction-jax train --resume" in err
    lines = (out / "metrics.csv").read_text().splitlines()
    assert all(len(line.split(",")) == len(lines[0].split(",")) for line in lines)   # no half row
    done = subprocess.run([sys.executable, "-m", "induction_jax.cli", "train", "--resume", str(out),
                           "--no-analysis", "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    _assert_same_run(reference, out)


def test_truncated_checkpoint_falls_back_to_the_previous_one(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    latest = out / "checkpoints" / STEPS
    victims = sorted(p for p in (latest / "state").rglob("*") if p.is_file() and p.stat().st_size > 100)
    for p in victims:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    done = subprocess.run([sys.executable, "-m", "induction_jax.cli", "train", "--resume", str(out),
                           "--no-analysis", "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"checkpoint step {STEPS}" in done.stderr and "unreadable" in done.stderr
    _assert_same_run(reference, out)


def _bad(capsys, *args) -> str:
    code = main(list(args))
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "error:" in err
    return err


@pytest.mark.parametrize("flags, fragment", [
    (["--d-vocab", "1"], "d_vocab=1"),
    (["--d-model", "30"], "d_model=30: must be divisible by n_heads=4"),
    (["--seeds", "0"], "seeds=0"),
    (["--steps", "0"], "steps=0"),
    (["--lr", "0"], "lr=0.0"),
    (["--half-length", "40"], "must fit the context n_ctx=50"),
    (["--devices", "999"], "devices=999"),
    (["--seeds", "4", "--member-group", "8"], "member_group=8: larger than the ensemble"),
    (["--member-loop", "pmap"], "member_loop='pmap': must be one of auto, vmap, map"),
])
def test_bad_config_writes_nothing(capsys, tmp_path, flags, fragment):
    out = tmp_path / "run"
    assert fragment in _bad(capsys, "train", "--out", str(out), *flags)
    assert not out.exists()


def test_bench_options_pass_through_and_unknown_train_options_fail(capfd, tmp_path):
    assert main(["bench", "--sizes", "1", "--no-torch", "--help"]) == 0
    assert "usage: throughput.py" in capfd.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", str(tmp_path / "run"), "--sizes", "1"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --sizes 1" in capfd.readouterr().err
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten(capsys, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = tree_digest(out)
    assert "already holds a run" in _bad(capsys, "train", "--out", str(out), "--steps", "5")
    assert tree_digest(out) == before
    # --overwrite with a member group that cannot work fails before anything is removed
    assert "member_group=99" in _bad(capsys, "train", "--out", str(out), "--overwrite", "--member-group", "99")
    assert tree_digest(out) == before


def test_bad_run_directories_and_resume_inputs(capsys, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = tree_digest(run)
    assert "no such directory" in _bad(capsys, "analyze", str(tmp_path / "missing"))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text('{"hello": 1}')
    assert "not written by induction-jax" in _bad(capsys, "analyze", str(tmp_path / "foreign"))
    assert "not a run directory" in _bad(capsys, "phase", str(tmp_path))
    assert "--member 7: out of range" in _bad(capsys, "analyze", str(run), "--member", "7")
    assert "differs from the run's d_model=16" in _bad(capsys, "train", "--resume", str(run), "--d-model", "32")
    assert f"already trained to step {STEPS}" in _bad(capsys, "train", "--resume", str(run))
    assert "takes no --config" in _bad(capsys, "train", "--resume", str(run), "--out", str(tmp_path / "x"))
    meta = json.loads((run / "config.json").read_text())
    assert tree_digest(run) == before
    old = tmp_path / "old"
    shutil.copytree(reference, old)
    meta["version"] = "9.0.0"
    (old / "config.json").write_text(json.dumps(meta))
    assert "cannot read; allowed: runs of 0.2.x" in _bad(capsys, "train", "--resume", str(old), "--steps", "3000")


def test_missing_checkpoint_step_and_probe_metrics(capsys, reference, tmp_path):
    from induction_jax.analysis.weights import load_run_params
    from induction_jax.rundir import RunDirError
    with pytest.raises(RunDirError, match="checkpoint step 999: not in"):
        load_run_params(reference, step=999)
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    lines = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text("\n".join(",".join(l.split(",")[:8]) for l in lines) + "\n")
    before = tree_digest(run)
    assert "no probe metric" in _bad(capsys, "phase", str(run))
    assert tree_digest(run) == before


def test_config_file_round_trip_and_unknown_key(capsys, reference, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": {"d_modle": 64}}))
    assert "unknown key 'd_modle'" in _bad(capsys, "train", "--config", str(bad), "--out", str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()
    from induction_jax.cli import build_parser, config_from_args
    from induction_jax.rundir import RunDir
    args = build_parser().parse_args(["train", "--config", str(reference / "config.json")])
    assert config_from_args(args) == RunDir(reference).read_config()


def test_diverging_member_is_flagged_and_the_others_finish_untouched(tmp_path, small_cfg):
    from induction_jax.members import Members
    from induction_jax.metrics import metric_matrix, read_metrics
    from induction_jax.rundir import RunDir
    from induction_jax.runner import train_run
    cfg = small_cfg.replace(steps=60, chunk_steps=20, eval_every=20, checkpoint_every=60)
    both = Members(np.array([0, 1]), np.array([0, 1]), np.array([3e-3, 1e30]), np.array([0.01, 0.01]))
    alone = Members(np.array([0]), np.array([0]), np.array([3e-3]), np.array([0.01]))
    a = train_run(cfg, tmp_path / "both", members=both, progress=False)
    b = train_run(cfg, tmp_path / "alone", members=alone, progress=False)
    summary = json.loads(a.summary_json.read_text())
    assert summary["n_diverged"] == 1 and summary["diverged_members"] == [1]
    assert summary["members"][1]["diverged_step"] is not None
    ta, tb = read_metrics(a.metrics_csv), read_metrics(b.metrics_csv)
    _, la = metric_matrix(ta, "loss", 2)
    _, lb = metric_matrix(tb, "loss", 1)
    np.testing.assert_allclose(la[0], lb[0], rtol=1e-5, atol=1e-6)
    # the diverged member's rows stop at its divergence: no NaN-filled rows after it
    rows_1 = ta["step"][ta["member"] == 1]
    assert rows_1.max() <= summary["members"][1]["diverged_step"] + 1
    assert RunDir(a.path).is_run()


def test_phase_command_on_a_real_run(capsys, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert main(["phase", str(run)]) == 0
    out = capsys.readouterr().out
    assert "in_context_score midpoint" in out or "every member censored" in out
    stats = json.loads((run / "phase" / "stats.json").read_text())
    assert set(stats) >= {"in_context_score", "induction_score", "prev_token_score", "formation_order"}
    assert set(stats["formation_order"]) == {"onset", "peak_slope", "midpoint"}
    header = (run / "phase" / "timings.csv").read_text().splitlines()[0]
    assert header.startswith("member,init_seed,data_seed,lr,weight_decay,arm,min_period,metric,s0,s1,censored,reason,"
                             "onset,"
                             "midpoint,end,peak_slope")
    for name in ("in_context_score", "induction_score", "midpoint_distribution", "prev_vs_induction", "loss_bump"):
        assert (run / "phase" / f"{name}.png").stat().st_size > 1000
    assert "Phase change" in (run / "report.html").read_text()


def test_analyze_command_writes_scores_circuit_figures_and_report(capsys, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert main(["analyze", str(run), "--member", "1"]) == 0
    assert "induction circuit" in capsys.readouterr().out
    rows = (run / "analysis" / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2
    assert rows[0].startswith("member,init_seed,data_seed,lr,weight_decay,arm,min_period,layer,head,"
                              "prev_token_score")
    circuit = json.loads((run / "analysis" / "circuit.json").read_text())
    assert circuit["n_members"] == 2 and circuit["figure_member"] == 1
    assert {"prev_token_head", "induction_head", "checks", "clean_circuit"} <= set(circuit["members"][0])
    for name in ("attention_patterns", "head_scores", "k_composition", "full_ov_induction_head",
                 "ov_eigenvalues", "ablations", "ensemble_scores", "positional_qk_prev_token_head"):
        assert (run / "analysis" / f"{name}.png").stat().st_size > 1000
    html = (run / "report.html").read_text()
    assert "Circuit per member" in html and html.count("data:image/png;base64") >= 9


def test_compilation_cache_is_kept_per_machine(tmp_path, monkeypatch):
    """Executables compiled on one CPU are never read on another: the cache folder is keyed by the
    CPU's instruction-set flags (a shared home directory on a mixed cluster), and `off` disables it;
    on a CPU it is off unless a folder is named."""
    from induction_jax import ensemble

    avx512 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"
    assert ensemble.machine_key(avx512) == ensemble.machine_key(avx512.replace("avx2 avx512f", "avx512f avx2"))
    assert ensemble.machine_key(avx512) != ensemble.machine_key(avx512.replace(" avx512f", ""))
    before = ensemble.jax.config.jax_compilation_cache_dir
    try:
        path = ensemble.enable_compilation_cache(str(tmp_path))
        assert path == str(tmp_path / ensemble.machine_key())
        monkeypatch.setenv("INDUCTION_JAX_CACHE_DIR", "off")
        assert ensemble.enable_compilation_cache() is None
        monkeypatch.delenv("INDUCTION_JAX_CACHE_DIR")
        assert ensemble.enable_compilation_cache() is None          # a CPU: off unless asked for
    finally:
        ensemble.jax.config.update("jax_compilation_cache_dir", before)
