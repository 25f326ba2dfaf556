"""A run directory is never corrupted, silently altered or deleted by the tool: one test per
fault found by trying the tool as a hostile user would (a second writer, flipped checkpoint
bytes, --overwrite, huge ensembles, blow-ups, Ctrl-C at any moment, a full disk, hand edits,
bad paths). Each uses real processes, real bytes, real signals and, where the machine allows,
a real small filesystem."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import STEPS, TINY, cli, tree_digest
from filesystems import tmpfs
from induction_jax.cli import main


def _one_line_error(capsys, code: int, *args) -> str:
    got = main(list(args))
    err = capsys.readouterr().err.strip()
    assert got == code, err
    assert len(err.splitlines()) == 1, err
    return err


def _metrics_bytes(run: Path) -> bytes:
    return (run / "metrics.csv").read_bytes()


def _assert_same_run(a: Path, b: Path):
    from induction_jax.analysis.weights import load_run_params
    assert _metrics_bytes(a) == _metrics_bytes(b)
    pa, pb = load_run_params(a), load_run_params(b)
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])


def _wait_for(path: Path, proc, timeout=120):
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended first: {proc.stderr.read()}")
        if time.time() > deadline:
            pytest.fail(f"{path} never appeared")
        time.sleep(0.02)


def _resume(run: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "induction_jax.cli", "train", "--resume", str(run),
                           "--no-analysis", "--no-progress"], capture_output=True, text=True)


# ---- 1. one writer at a time ----------------------------------------------------------------

def test_a_second_writer_is_refused_while_a_run_trains(capsys, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli("--steps", "3000", "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "checkpoints" / "100" / "commit_success.txt", proc)
        holder = f"in use by pid {proc.pid}"
        assert holder in _one_line_error(capsys, 2, "train", "--resume", str(out))
        assert holder in _one_line_error(capsys, 2, "train", *TINY, "--out", str(out), "--overwrite")
        assert holder in _one_line_error(capsys, 2, "analyze", str(out))
        assert holder in _one_line_error(capsys, 2, "phase", str(out))
        _, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    # The run finished whole: every member has every step exactly once.
    header = (out / "metrics.csv").open().readline().strip().split(",")
    rows = np.loadtxt(out / "metrics.csv", delimiter=",", skiprows=1,
                      usecols=(header.index("member"), header.index("step")))
    for member in (0, 1):
        steps = rows[rows[:, 0] == member, 1]
        np.testing.assert_array_equal(np.sort(steps), np.arange(0, 3001))


def test_analysis_outputs_name_the_checkpoint_step_they_describe(capsys, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    # An interrupted run: its latest checkpoint is step 900 of 1000.
    shutil.rmtree(run / "checkpoints" / STEPS)
    assert main(["analyze", str(run)]) == 0
    assert "checkpoint step 900 of 1000" in capsys.readouterr().out
    circuit = json.loads((run / "analysis" / "circuit.json").read_text())
    assert (circuit["checkpoint_step"], circuit["steps"]) == (900, 1000)
    assert "checkpoint step <b>900</b> of 1000: <b>not the end of training</b>" in (run / "report.html").read_text()
    assert main(["phase", str(run)]) == 0
    stats = json.loads((run / "phase" / "stats.json").read_text())
    assert (stats["last_step"], stats["steps"]) == (1000, 1000)


# ---- 2. checkpoints carry a digest ----------------------------------------------------------

def _flip(path: Path, at: int, n: int = 100) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, min(at + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _as_if_stopped_at_900(reference: Path, run: Path) -> None:
    shutil.copytree(reference, run)
    shutil.rmtree(run / "checkpoints" / STEPS)


def _assert_fell_back(done, run: Path, reference: Path, reason: str):
    assert done.returncode == 0, done.stderr
    assert "checkpoint step 900" in done.stderr and reason in done.stderr, done.stderr
    assert (run / "checkpoints_broken" / "900").is_dir()
    for noise in ("Traceback", "Exception ignored", "Event loop"):
        assert noise not in done.stderr
    assert len(done.stderr.splitlines()) == 2          # the problem, and where it was moved
    _assert_same_run(reference, run)


def test_flipped_checkpoint_bytes_are_caught_and_the_previous_checkpoint_used(reference, tmp_path):
    run = tmp_path / "run"
    _as_if_stopped_at_900(reference, run)
    for data in (p for p in (run / "checkpoints" / "900" / "state").rglob("*") if p.parent.name == "d"):
        _flip(data, data.stat().st_size // 2)
    _assert_fell_back(_resume(run), run, reference, "cannot be used")


def test_arrays_that_decode_but_differ_fail_their_digest(reference, tmp_path):
    """A checkpoint whose array files are valid but hold other numbers (what a flipped byte in
    uncompressed or lucky data amounts to) is caught by its digest alone."""
    import jax

    from induction_jax.checkpoint import Checkpoints
    from induction_jax.ensemble import abstract_state
    from induction_jax.rundir import RunDir
    run = tmp_path / "run"
    _as_if_stopped_at_900(reference, run)
    rd = RunDir(run)
    with Checkpoints(run / "checkpoints", async_save=False) as ckpt:
        state, meta = ckpt.restore_state(900, abstract_state(rd.read_config(), rd.members()))
    state = jax.tree.map(np.array, jax.device_get(state))          # writable copies
    state.params["W_U"][1, 0, 0] += 1e-3
    with Checkpoints(tmp_path / "forged", async_save=False) as forged:
        forged.save(900, state, meta)
    shutil.rmtree(run / "checkpoints" / "900" / "state")
    shutil.copytree(tmp_path / "forged" / "900" / "state", run / "checkpoints" / "900" / "state")
    _assert_fell_back(_resume(run), run, reference, "does not match the one recorded")


def test_flipped_params_bytes_are_caught_by_the_analysis(capsys, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    for data in (p for p in (run / "checkpoints" / STEPS / "params").rglob("*") if p.parent.name == "d"):
        _flip(data, data.stat().st_size // 2)
    assert main(["analyze", str(run)]) == 0
    captured = capsys.readouterr()
    assert f"checkpoint step {STEPS}" in captured.err and "cannot be used" in captured.err
    assert "checkpoint step 900 of 1000" in captured.out
    assert json.loads((run / "analysis" / "circuit.json").read_text())["checkpoint_step"] == 900


def test_digest_detects_a_single_changed_value():
    from induction_jax.checkpoint import tree_digest as digest
    a = {"W": np.arange(12, dtype=np.float32).reshape(3, 4)}
    b = {"W": a["W"].copy()}
    assert digest(a) == digest(b)
    b["W"][1, 2] = np.nextafter(b["W"][1, 2], np.float32(np.inf))
    assert digest(a) != digest(b)


# ---- 3. --overwrite removes only what a run wrote ---------------------------------------------

def test_overwrite_keeps_the_users_files_and_a_non_run_is_not_claimed(capsys, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "notes.txt").write_text("mine")
    (run / "plots" / "my_figure.png").write_bytes(b"mine too")
    assert main(["train", *TINY, "--steps", "30", "--out", str(run), "--overwrite"]) == 0
    assert (run / "notes.txt").read_text() == "mine"
    assert (run / "plots" / "my_figure.png").read_bytes() == b"mine too"
    assert "my_figure.png" in capsys.readouterr().err              # said what it kept
    assert json.loads((run / "summary.json").read_text())["steps"] == 30
    # A directory without our config.json is not a run, even if it has files named like a run's.
    other = tmp_path / "other"
    other.mkdir()
    (other / "metrics.csv").write_text("my,own,table\n")
    before = tree_digest(other)
    for flags in ([], ["--overwrite"]):
        err = _one_line_error(capsys, 2, "train", *TINY, "--steps", "30", "--out", str(other), *flags)
        assert "not an induction-jax run" in err and "already holds a run" not in err
    assert tree_digest(other) == before


# ---- 4. memory bounded at scale ----------------------------------------------------------------

@pytest.mark.parametrize("flags, fragment", [
    (["--seeds", "100000"], "100000 members need about"),
    (["--probe-batch-size", "1000000"], "one member needs about"),
])
def test_what_cannot_fit_is_refused_up_front(capsys, tmp_path, flags, fragment):
    out = tmp_path / "run"
    err = _one_line_error(capsys, 2, "train", "--out", str(out), *flags)
    assert fragment in err and ("GiB" in err or "MiB" in err)
    assert not out.exists()


# ---- 5. divergence is reported by train and sweep, finite blow-ups included ---------------------

def test_a_finite_blow_up_is_flagged_by_train_and_sweep(capsys, tmp_path):
    small = ["--d-vocab", "16", "--half-length", "6", "--n-ctx", "12", "--d-model", "16", "--n-heads", "2",
             "--batch-size", "16", "--probe-batch-size", "8", "--eval-every", "10", "--chunk-steps", "10",
             "--no-progress", "--init-std", "100"]
    assert main(["train", *small, "--seeds", "2", "--steps", "20", "--out", str(tmp_path / "t")]) == 3
    err = capsys.readouterr().err
    assert "2 of 2 members" in err and "above 10 x ln V" in err and "member 0 (seed 0) at step 0" in err
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["n_diverged"] == 2
    assert "Divergence: 2 of 2 members" in (tmp_path / "t" / "report.html").read_text()
    assert main(["sweep", *small, "--seeds", "1", "--steps", "20", "--lr", "3e-3,1e-2",
                 "--out", str(tmp_path / "s")]) == 3
    captured = capsys.readouterr()
    assert "induction-jax sweep: 2 of 2 members" in captured.err and "lr 0.01" in captured.err


# ---- 6. Ctrl-C at any moment -------------------------------------------------------------------

LONG = "1500"     # long enough that every delay below lands in start-up, compilation or training


@pytest.fixture(scope="module")
def reference_long(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref-long") / "run"
    subprocess.run(cli("--steps", LONG, "--out", str(out)), check=True, capture_output=True)
    return out


# One delay in each stretch of a command's life here: start-up, imports, compilation, training
# (tests/test_soak.py lands signals at random moments besides).
@pytest.mark.parametrize("sig, delay", [(signal.SIGINT, d) for d in (0.3, 1.5, 3.0, 4.2)]
                         + [(signal.SIGTERM, d) for d in (3.5,)])
def test_a_signal_at_any_moment_stops_the_run_cleanly(reference_long, tmp_path, sig, delay):
    out = tmp_path / "run"
    proc = subprocess.Popen(cli("--steps", LONG, "--out", str(out)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip(f"the run finished within {delay} s, before the signal")
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"induction-jax train: interrupted by {signal.Signals(sig).name}")
    if "checkpoint saved" in lines[0]:
        done = _resume(out)
        assert done.returncode == 0, done.stderr
        _assert_same_run(reference_long, out)
    elif "before it started; nothing was written" in lines[0]:        # while the command loaded or planned
        assert not out.exists() or not any(out.iterdir())
    else:
        assert "before training started" in lines[0]


def test_a_signal_during_the_final_analysis_stops_it_and_keeps_the_run(tmp_path):
    out = tmp_path / "run"
    args = [a for a in cli("--steps", "100", "--out", str(out)) if a != "--no-analysis"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()                    # "trained ..." is printed before the analysis starts
    assert line.startswith("trained"), line
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the analysis finished before the signal")
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [f"induction-jax train: interrupted by SIGINT during the analysis; the run's "
                                        f"training and checkpoints are intact: run again 'induction-jax analyze "
                                        f"{out}'"]
    assert json.loads((out / "summary.json").read_text())["steps"] == 100


# ---- 7. a full disk ----------------------------------------------------------------------------

def _assert_whole_rows(metrics: Path):
    text = metrics.read_text()
    assert text.endswith("\n")
    widths = {len(line.split(",")) for line in text.splitlines()}
    assert len(widths) == 1


def test_a_full_disk_stops_with_one_line_and_resumes_to_the_same_run(reference, tmp_path):
    with tmpfs(tmp_path / "fs", "size=400k") as fs:
        if fs is None:
            pytest.skip("cannot mount a small tmpfs here (the injected ENOSPC test covers the same path)")
        out = fs / "run"
        full = subprocess.run(cli("--steps", STEPS, "--out", str(out)), capture_output=True, text=True)
        assert full.returncode == 4, full.stderr
        lines = full.stderr.strip().splitlines()
        # A metrics table or a checkpoint, whichever write meets the full disk first.
        assert len(lines) == 1 and any(lines[0] == f"induction-jax train: error: no space left on device while "
                                                  f"writing {out / name}; the run can be resumed once space is freed"
                                       for name in ("metrics.csv", "head_metrics.csv", "checkpoints")), lines
        _assert_whole_rows(out / "metrics.csv")
        subprocess.run(["mount", "-o", "remount,size=20m", str(fs)], check=True)
        done = _resume(out)
        assert done.returncode == 0, done.stderr
        _assert_same_run(reference, out)


def test_a_study_script_resumes_an_interrupted_run_and_reuses_only_a_matching_one(reference, tmp_path):
    """`train_or_resume`, what every experiments/ script calls: an interrupted run continues to
    the same result, a finished one is left alone, a different one is refused."""
    from induction_jax.rundir import RunDir, RunDirError
    from induction_jax.runner import train_or_resume

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    shutil.rmtree(run / "checkpoints" / STEPS)            # killed after checkpoint 900
    (run / "summary.json").unlink()
    cfg = RunDir(reference).read_config()
    train_or_resume(cfg, run, progress=False)
    _assert_same_run(reference, run)
    before = tree_digest(run)
    train_or_resume(cfg, run, progress=False)
    assert tree_digest(run) == before
    with pytest.raises(RunDirError, match="another config or members"):
        train_or_resume(cfg.replace(lr=1e-3), run, progress=False)
    assert tree_digest(run) == before


def test_an_injected_enospc_rolls_the_chunk_back(capsys, monkeypatch, tmp_path):
    import errno

    from induction_jax import metrics
    out = tmp_path / "run"
    writes = []

    class FullDisk:
        """os, but the 4th write to metrics.csv fails half-way, as a full disk does."""

        def __getattr__(self, name):
            return getattr(os, name)

        def write(self, fd, data):
            if os.readlink(f"/proc/self/fd/{fd}").endswith("metrics.csv"):
                writes.append(len(data))
                if len(writes) == 4:
                    os.write(fd, bytes(data[: len(data) // 2]))
                    raise OSError(errno.ENOSPC, "No space left on device")
            return os.write(fd, data)

    monkeypatch.setattr(metrics, "os", FullDisk())
    err = _one_line_error(capsys, 4, "train", *TINY, "--steps", "300", "--out", str(out))
    assert "no space left on device while writing" in err and "can be resumed" in err
    _assert_whole_rows(out / "metrics.csv")


def test_readers_drop_a_cut_off_last_line_saying_so(capsys, reference, tmp_path):
    from induction_jax.metrics import read_metrics
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    whole = read_metrics(run / "metrics.csv")
    with open(run / "metrics.csv", "a") as f:
        f.write("1,1,1,0.003,0.01,1001,2.5")
    cut = read_metrics(run / "metrics.csv")
    assert "dropped an incomplete last line" in capsys.readouterr().err
    for k in whole:
        np.testing.assert_array_equal(cut[k], whole[k])


# ---- 8. a hand-edited config.json -----------------------------------------------------------------

@pytest.mark.parametrize("command, section, key, value", [
    ("train --resume", "train", "lr", 0.02),
    ("train --resume", "model", "d_model", 32),
    ("analyze", "task", "half_length", 5),
    ("phase", "members", "init_seed", [5, 6]),
])
def test_an_edited_config_is_detected(capsys, reference, tmp_path, command, section, key, value):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    meta = json.loads((run / "config.json").read_text())
    (meta["members"] if section == "members" else meta["config"][section])[key] = value
    (run / "config.json").write_text(json.dumps(meta))
    before = tree_digest(run)
    args = command.split() + [str(run)] + (["--steps", "2000"] if "resume" in command else [])
    err = _one_line_error(capsys, 2, *args)
    assert "edited after training" in err and (key in err)
    assert tree_digest(run) == before


# ---- 9. one-line errors instead of tracebacks ---------------------------------------------------------

def test_unwritable_and_impossible_output_paths(capsys, tmp_path):
    with tmpfs(tmp_path / "ro", "size=64k") as fs:
        if fs is not None:
            subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
            err = _one_line_error(capsys, 2, "train", *TINY, "--steps", "5", "--out", str(fs / "run"))
            assert "cannot create the run directory (Read-only file system)" in err
    (tmp_path / "afile").write_text("x")
    err = _one_line_error(capsys, 2, "train", *TINY, "--steps", "5", "--out", str(tmp_path / "afile" / "sub"))
    assert "cannot create the run directory (Not a directory)" in err
    assert (tmp_path / "afile").read_text() == "x"


def test_broken_inputs_get_one_line(capsys, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "metrics.csv").unlink()
    assert "metrics.csv: missing" in _one_line_error(capsys, 2, "train", "--resume", str(run), "--steps", "2000")
    bad = tmp_path / "kind.json"
    bad.write_text('{"kind": "x"}')
    assert "is not an induction-jax config" in _one_line_error(capsys, 2, "train", "--config", str(bad),
                                                               "--out", str(tmp_path / "k"))
    empty = tmp_path / "empty"
    shutil.copytree(reference, empty)
    meta = json.loads((empty / "config.json").read_text())
    meta["members"] = {k: [] for k in meta["members"]}
    (empty / "config.json").write_text(json.dumps(meta))
    for command in (["analyze"], ["phase"], ["train", "--resume"]):
        assert "the table is empty" in _one_line_error(capsys, 2, *command, str(empty))
    extra = tmp_path / "extra"
    shutil.copytree(reference, extra)
    with open(extra / "metrics.csv", "a") as f:
        values = {"member": 7, "init_seed": 7, "data_seed": 7, "lr": 0.003, "weight_decay": 0.01,
                  "arm": "none", "step": 1000}
        header = (extra / "metrics.csv").open().readline().strip().split(",")
        f.write(",".join(str(values.get(name, 1)) for name in header) + "\n")
    assert "a row for member 7, but the run has members 0..1" in _one_line_error(capsys, 2, "phase", str(extra))


# ---- 11. names --------------------------------------------------------------------------------------

def test_members_are_named_by_their_settings_and_lists_refuse_duplicates(capsys, tmp_path):
    assert "1e-3 is listed twice" in _one_line_error(capsys, 2, "sweep", "--lr", "1e-3,1e-3",
                                                     "--out", str(tmp_path / "s"))
    assert "seed 3 appears twice" in _one_line_error(capsys, 2, "sweep", "--init-seeds", "0-3,3-5",
                                                     "--out", str(tmp_path / "s"))
    assert not (tmp_path / "s").exists()
    from induction_jax.config import RunConfig
    from induction_jax.members import Members
    m = Members.grid(RunConfig().replace(seeds=2, first_seed=2147483646), [1e-3, 1e-2])
    assert m.label(3) == "member 3 (seed 2147483647, lr 0.01)"
    crossed = Members.grid(RunConfig(), init_seeds=[0, 1], data_seeds=[5])
    assert crossed.label(1) == "member 1 (init seed 1, data seed 5)"


def test_an_orbax_save_thread_dying_of_a_full_disk_prints_no_traceback():
    """Orbax's background save raises ENOSPC in its own thread, whose traceback Python prints
    (after the one-line message `_writing` gives); only that is silenced, any other thread's
    death still reaches the previous hook (soak seed 5 saw the traceback)."""
    import threading

    from induction_jax import checkpoint

    namespace = {}
    exec(compile("def save():\n    raise ValueError('RESOURCE_EXHAUSTED: Error writing \"opt_state.count/0\": "
                 "No space left on device')\n", "/site-packages/orbax/checkpoint/_src/futures/future.py", "exec"),
         namespace)

    def other():
        raise ValueError("RESOURCE_EXHAUSTED, but not in Orbax")

    seen, reached = [], []
    saved = threading.excepthook
    try:
        threading.excepthook = seen.append               # the thread deaths, as Python hands them over
        for target in (namespace["save"], other):
            t = threading.Thread(target=target)
            t.start()
            t.join()
        threading.excepthook = reached.append            # the hook the filter wraps
        unraisable = sys.unraisablehook
        sys.unraisablehook = lambda u: None              # so the filter installs afresh
        try:
            checkpoint._filter_orbax_noise()
            for args in seen:
                threading.excepthook(args)
        finally:
            sys.unraisablehook = unraisable
    finally:
        threading.excepthook = saved
    assert [checkpoint._is_orbax_write_failure(a) for a in seen] == [True, False]
    assert [str(a.exc_value) for a in reached] == ["RESOURCE_EXHAUSTED, but not in Orbax"]


def test_orbax_background_thread_failure_logs_are_dropped_and_other_absl_errors_kept():
    """Orbax's background-save threads log their own failure through absl (a traceback each),
    sometimes after the checkpoints were closed: the filter drops exactly those records."""
    import logging

    from induction_jax import checkpoint

    filt = checkpoint._DropUnretrievedOrbaxFailures()

    def record(msg):
        return logging.LogRecord("absl", logging.ERROR, __file__, 1, msg, None, None)

    assert not filt.filter(record("[process=0][thread=save][operation_id=1] _SignalingThread.run() raised an "
                                  "exception: [Errno 28] No space left on device"))
    assert filt.filter(record("some other absl error"))
    checkpoint._filter_orbax_noise()
    assert any(isinstance(f, checkpoint._DropUnretrievedOrbaxFailures) for f in logging.getLogger("absl").filters)
