"""SIGINT / SIGTERM at any moment of a command end it within seconds with one line and exit
128 + signum, never a traceback, and leave only what docs/faults.md promises.

Every command runs as the installed console script (the real entry path) in a child whose
SIGINT disposition is reset to the default: a child started from a background shell inherits
SIGINT ignored, which would hide a missing handler."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from children import IJ, default_sigint, launch

from induction_jax import signals
from induction_jax.rundir import MANIFEST

B = ["--seeds", "2", "--steps", "200", "--d-vocab", "16", "--half-length", "8", "--d-model", "32",
     "--eval-every", "10", "--chunk-steps", "50", "--checkpoint-every", "50", "--no-progress"]
R = [*B, "--steps", "600", "--checkpoint-every", "100", "--no-analysis"]     # later flags win
FINISHED_FIRST = "after its last safe point; it finished first, so everything it wrote is complete"
QUICK = 3.0       # seconds from the signal to the exit, where no call in flight must finish

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has its handlers in: Python alone never catches SIGTERM."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(mask >> (signal.SIGTERM - 1) & 1)


def _holds_lock(pid: int, run: Path) -> bool:
    """Whether `pid` holds the flock on the run directory (the command has started its work)."""
    st = os.stat(run)
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    return any("FLOCK" in f and key in f and f[f.index(key) - 1] == str(pid)
               for f in (line.split() for line in Path("/proc/locks").read_text().splitlines()))


def _wait(proc, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (exit {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.002)


def _stop(proc, sig) -> tuple[str, float]:
    """Send `sig`; stderr and the seconds from the signal to the exit."""
    sent = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    return err, time.monotonic() - sent


def _one_line(err: str, info: tuple[str, ...] = ()) -> str:
    """The one line of stderr (besides lines starting with `info`, printed before the signal)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith(info)]
    assert len(lines) == 1, err
    return lines[0]


# ---- start-up: from the first line of the console script on -----------------------------------

@pytest.mark.parametrize("sig, delay", [pytest.param(signal.SIGINT, d, id=f"SIGINT-{d}s")
                                        for d in (0.0, 0.05, 0.2, 0.5, 1.0, 2.0)]
                         + [pytest.param(signal.SIGTERM, 0.5, id="SIGTERM-0.5s")])
def test_a_signal_during_start_up_is_one_line_and_its_exit_code(tmp_path, sig, delay):
    """`delay` s after the start, but not before the console script has installed its handlers
    (the interpreter's own start-up, ~0.05 s, is Python's: docs/faults.md); 0.0 = that moment."""
    out = tmp_path / "run"
    start = time.monotonic()
    proc = launch("train", *R, "--out", str(out))
    time.sleep(max(0.0, start + delay - time.monotonic()))
    _wait(proc, lambda: _catches_sigterm(proc.pid), "the handlers were installed")
    err, took = _stop(proc, sig)
    assert proc.returncode == 128 + sig, err
    line = _one_line(err)
    assert line.startswith(f"induction-jax train: interrupted by {signal.Signals(sig).name} "), line
    if line.endswith("nothing was written"):                  # before the command's work or run.create
        assert not out.exists() and took < QUICK, (line, took)
    elif "holds only its config" in line:
        assert {p.name for p in out.iterdir()} <= {"config.json", MANIFEST} and took < QUICK, (line, took)
    else:                                                     # training had started: the call in flight ends
        assert "checkpoint saved. Resume with: induction-jax train --resume" in line, line
        assert (out / "checkpoints").is_dir()


def test_the_parser_help_and_usage_errors_import_no_jax():
    code = """if True:
        import sys
        import induction_jax.entry
        assert 'numpy' not in sys.modules, 'the console script imports numpy before its handlers'
        from induction_jax.cli import build_parser, main
        build_parser()
        for argv in (['--help'], ['llc', '--help'], ['train', '--no-such-flag'], ['dynamics']):
            try:
                main(argv)
            except SystemExit:
                pass
        print('heavy:', sorted(m for m in ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'matplotlib', 'pandas')
                               if m in sys.modules))
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "heavy: []", done.stdout
    assert "--no-such-flag" in done.stderr and "the following arguments are required: RUN_DIR" in done.stderr


def test_llc_flags_are_the_sgld_config_fields():
    from induction_jax.cli import FLAG_TYPES, LLC_SGLD_FLAGS, build_parser
    from induction_jax.slt.sampler import SGLDConfig

    want = [(f.name, FLAG_TYPES[str(f.type)], f.default, f.metadata["help"]) for f in dataclasses.fields(SGLDConfig)
            if f.name != "n_beta"]
    assert list(LLC_SGLD_FLAGS) == want
    args = build_parser().parse_args(["llc", "RUN"])
    assert SGLDConfig(**{name: getattr(args, name) for name, *_ in LLC_SGLD_FLAGS}) == SGLDConfig()


def test_run_leaves_a_long_call_within_a_poll_and_passes_results_through():
    old = signals.install()
    try:
        assert signals.run(int, "7", what="x") == 7
        with pytest.raises(ValueError):
            signals.run(int, "seven", what="x")
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        t = time.monotonic()
        with pytest.raises(signals.Interrupted) as e:
            signals.run(time.sleep, 5, what="in a long call")
        assert time.monotonic() - t < 0.3 + 5 * signals.POLL
        assert str(e.value) == "interrupted by SIGINT in a long call" and e.value.exit_code == 130
        assert signals.abandoned()                      # `leave` would end the process at once
    finally:
        signals.restore(old)
    assert signals.caught() is None and signals.run(int, "3", what="x") == 3     # the library, uninstalled


# ---- late: after training's last chunk, during llc and dynamics ---------------------------------

@pytest.fixture(scope="module")
def tail_run(tmp_path_factory):
    """A tiny run with snapshots, SIGINT sent as its last chunk's metrics appear (the signal comes
    after training's last safe point: the run finishes, then the signal is reported)."""
    out = tmp_path_factory.mktemp("signals") / "run"
    proc = launch("train", *B, "--snapshots", "every:50", "--no-analysis", "--out", str(out))

    def last_chunk() -> bool:
        try:
            rows = (out / "metrics.csv").read_text().splitlines()
        except OSError:
            return False
        try:
            return len(rows) > 1 and rows[-1].split(",")[rows[0].split(",").index("step")] == "200"
        except (ValueError, IndexError):        # a header or row being written
            return False

    _wait(proc, last_chunk, "the last chunk's metrics")
    err, took = _stop(proc, signal.SIGINT)
    return out, proc.returncode, err, took


def test_a_signal_after_the_last_chunk_is_reported_not_swallowed(tail_run):
    out, code, err, took = tail_run
    assert code == 130, err
    assert _one_line(err, info=("snapshots: ",)) == f"induction-jax train: interrupted by SIGINT {FINISHED_FIRST}"
    assert took < 5 * QUICK, took          # the final checkpoint, summary and loss plot: ~2 s, more on a busy host
    assert json.loads((out / "summary.json").read_text())["steps"] == 200
    assert (out / "checkpoints" / "200").is_dir() and (out / "snapshots").is_dir()


@pytest.mark.parametrize("command, sig, flags, what", [
    pytest.param("llc", signal.SIGINT, ["--draws", "4000", "--chains", "4"], "during the LLC estimation", id="llc"),
    pytest.param("dynamics", signal.SIGTERM, [], "during the dynamics analysis", id="dynamics"),
])
def test_a_signal_during_a_long_compiled_call_stops_it_within_seconds(tail_run, tmp_path, command, sig, flags, what):
    """The signal lands in the minute-long compilation or computation (after the command took
    the run's lock, i.e. started its work); nothing of its output is written."""
    run = tmp_path / "run"
    shutil.copytree(tail_run[0], run)
    proc = launch(command, str(run), *flags)
    _wait(proc, lambda: _holds_lock(proc.pid, run), "the run's lock")
    time.sleep(0.5)
    err, took = _stop(proc, sig)
    assert proc.returncode == 128 + sig, err
    assert _one_line(err) == (f"induction-jax {command}: interrupted by {signal.Signals(sig).name} {what}; the run "
                              f"is intact and finished chunks are kept: run again 'induction-jax {command} {run}' "
                              f"to continue")
    assert took < QUICK, took
    assert not (run / command).exists()
    assert not [p for p in run.rglob("*.tmp")]
