"""Damaged or missing snapshots: a resume verifies the ones it keeps, moves the damaged aside,
re-makes what the checkpoints allow (bitwise), records the rest; `dynamics` and `llc` name
every scheduled snapshot that is missing instead of analysing across the gap silently."""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import tree_digest
from induction_jax.cli import main

# 200 steps, checkpoints every 50 (kept: 100, 150, 200); log:8 snapshots at 0, 10, 20, 30, 40, 70, 120, 200.
BASE = ["--seeds", "2", "--steps", "200", "--d-vocab", "16", "--half-length", "8", "--d-model", "32",
        "--eval-every", "10", "--chunk-steps", "50", "--checkpoint-every", "50", "--no-progress", "--no-analysis",
        "--snapshots", "log:8"]
# Extended to 600 steps: log:8 of 600 would be 0, 10, 20, 40, 80, 150, 300, 600; the steps already
# trained keep the schedule they were trained with.
EXTEND = ["--steps", "600", "--checkpoint-every", "100", "--no-analysis", "--no-progress"]
FAST = ["--chains", "2", "--draws", "40", "--burn-in", "10", "--n", "128", "--batch-size", "32", "--eps", "1e-4"]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "induction_jax.cli", *args], capture_output=True, text=True)


def snap(run, step):
    return run / "snapshots" / f"step_{step:08d}.npz"


def _truncate(path, n=5000):
    path.write_bytes(path.read_bytes()[:n])


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    out = tmp_path_factory.mktemp("integrity") / "base"
    done = _cli("train", *BASE, "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (out / "snapshots").iterdir()) == [snap(out, s).name for s in
                                                                      (0, 10, 20, 30, 40, 70, 120, 200)]
    return out


@pytest.fixture(scope="module")
def resumed(base, tmp_path_factory):
    """The base run with step 200 (= the resume checkpoint) truncated, step 120 (between the kept
    checkpoints 100 and 150) deleted and step 70 (before the oldest kept checkpoint) truncated,
    then extended to 600 steps with --resume."""
    run = tmp_path_factory.mktemp("integrity") / "run"
    shutil.copytree(base, run)
    _truncate(snap(run, 200))
    _truncate(snap(run, 70))
    snap(run, 120).unlink()
    done = _cli("train", "--resume", str(run), *EXTEND)
    return run, done


def test_resume_moves_damaged_snapshots_aside_and_remakes_them_bitwise(base, resumed):
    run, done = resumed
    assert done.returncode == 0, done.stderr
    err = done.stderr
    for step in (70, 200):                                     # each damaged file: one line, moved aside
        assert (f"{snap(run, step)}: unreadable, truncated or damaged (BadZipFile); moved it to "
                f"{run / 'snapshots_broken' / snap(run, step).name}") in err
        assert len((run / "snapshots_broken" / snap(run, step).name).read_bytes()) == 5000
    assert "re-training from checkpoint step 100 to step 120 to re-make snapshot step 120" in err
    assert "re-made snapshot steps 120, 200 from the checkpoints" in err
    assert ("snapshot step 70 is missing and cannot be re-made (no good checkpoint at or before it; kept: 100, "
            "150, 200): it stays missing, recorded in config.json (snapshots_missing)") in err
    for step in (0, 10, 20, 30, 40, 120, 200):                  # re-made ones bitwise those of training
        assert snap(run, step).read_bytes() == snap(base, step).read_bytes(), step
    assert not snap(run, 70).exists()
    meta = json.loads((run / "config.json").read_text())
    assert meta["snapshots_missing"] == [70]
    assert meta["snapshot_steps"] == [0, 10, 20, 30, 40, 70, 120, 200, 300, 600]
    assert sorted(p.name for p in (run / "snapshots").iterdir()) == [snap(run, s).name for s in
                                                                     (0, 10, 20, 30, 40, 120, 200, 300, 600)]
    assert "snapshots_broken/" in (run / ".induction-jax-manifest").read_text()


def test_an_intact_run_resumes_without_a_word_about_snapshots(base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    done = _cli("train", "--resume", str(run), "--steps", "210", "--no-analysis", "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "snapshot" not in done.stderr and not (run / "snapshots_broken").exists()
    for step in (0, 10, 20, 30, 40, 70, 120, 200):
        assert snap(run, step).read_bytes() == snap(base, step).read_bytes()
    assert snap(run, 210).is_file()          # the new schedule's last step


def test_dynamics_and_llc_name_the_missing_snapshots(capsys, resumed, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(resumed[0], run)
    line = (f"induction-jax: {run / 'snapshots'}: scheduled snapshot step 70 is missing (deleted, or damaged and "
            f"not re-made); analysing the")
    assert main(["dynamics", str(run)]) == 0
    err = capsys.readouterr().err
    assert err.count(line) == 1, err            # 70 only: 80 and 150 were never scheduled for this run
    stats = json.loads((run / "dynamics" / "stats.json").read_text())
    assert stats["missing_snapshot_steps"] == [70] and 70 not in stats["snapshot_steps"]
    assert main(["llc", str(run), *FAST, "--snapshots", "0-120", "--members", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count(line) == 1, err
    stats = json.loads((run / "llc" / "stats.json").read_text())
    assert stats["missing_snapshot_steps"] == [70] and stats["steps"] == [0, 10, 20, 30, 40, 120]
    from induction_jax import snapshots
    from induction_jax.rundir import RunDir
    assert snapshots.missing(RunDir(run), spec="200-600") == []      # nothing missing in the range asked for
    assert snapshots.missing(RunDir(run), spec="0,70") == [70]


def test_a_deleted_snapshot_is_named_by_dynamics(capsys, base, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(base, run)
    snap(run, 30).unlink()
    assert main(["dynamics", str(run)]) == 0
    assert f"{run / 'snapshots'}: scheduled snapshot step 30 is missing" in capsys.readouterr().err
    assert json.loads((run / "dynamics" / "stats.json").read_text())["missing_snapshot_steps"] == [30]


@pytest.mark.parametrize("spec, fragment", [
    ("70", "--snapshots '70': snapshot step 70: missing (scheduled, but deleted, or damaged and not re-made); "
           "available: 0, 10, 20, 30, 40, 120, 200, 300, 600"),
    ("0,70", "--snapshots '0,70': snapshot step 70: missing"),
    ("50", "--snapshots '50': snapshot step 50: not in"),
    ("300-100", "--snapshots '300-100': range 300-100 is empty (end before start)"),
])
def test_llc_refuses_a_missing_step_and_a_reversed_range(capsys, resumed, tmp_path, spec, fragment):
    run = tmp_path / "run"
    shutil.copytree(resumed[0], run)
    before = tree_digest(run)
    assert main(["llc", str(run), *FAST, "--snapshots", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert tree_digest(run) == before
