"""Long jobs talk and survive (issue 26 item 3): `llc` and `dynamics` work in chunks that are kept.
A SIGINT once the first chunk is written ends the command within seconds with one line and exit
130; a rerun says how many chunks were already done, does not compute them again (their files
are untouched), and writes the same bytes as an uninterrupted run. Each command runs as the
installed console script in a child with the default SIGINT disposition (as test_signals)."""

import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from children import IJ, default_sigint, launch

TRAIN = ["--seeds", "2", "--steps", "200", "--d-vocab", "16", "--half-length", "8", "--d-model", "32",
         "--eval-every", "10", "--chunk-steps", "50", "--checkpoint-every", "50", "--no-progress",
         "--snapshots", "every:50", "--no-analysis"]                 # 5 snapshots of 2 members
COMMANDS = {  # the command's flags, its chunk count, the outputs compared byte for byte
    "llc": (["--n", "64", "--batch-size", "16", "--chains", "2", "--draws", "120", "--burn-in", "20"], 5,
            ["llc.csv", "stats.json", "traces.npz"]),
    "dynamics": (["--batch", "2"], 5, ["formation.csv", "stats.json", "trajectories.npz"]),
}
PLAN = re.compile(r"(\d+) chunks, (\d+) already done, (\d+) to compute")

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")


def _run(*args) -> str:
    done = subprocess.run([IJ, *args], capture_output=True, text=True, preexec_fn=default_sigint, timeout=900)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _chunk_files(run: Path, command: str) -> list[Path]:
    return sorted((run / command / "chunks").glob("*/chunk-*.npz"))


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("long") / "run"
    _run("train", *TRAIN, "--out", str(out))
    return out


@pytest.mark.parametrize("command", list(COMMANDS))
def test_interrupted_then_rerun_continues_and_equals_an_uninterrupted_run(snap_run, tmp_path, command):
    flags, n_chunks, outputs = COMMANDS[command]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    shutil.copytree(snap_run, whole)
    shutil.copytree(snap_run, cut)

    proc = launch(command, str(cut), *flags)
    deadline = time.monotonic() + 600
    while not _chunk_files(cut, command):
        assert proc.poll() is None, f"ended (exit {proc.returncode}) before its first chunk: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no chunk within 600 s"
        time.sleep(0.01)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.strip() == (f"induction-jax {command}: interrupted by SIGINT during the "
                           f"{'LLC estimation' if command == 'llc' else 'dynamics analysis'}; the run is intact and "
                           f"finished chunks are kept: run again 'induction-jax {command} {cut}' to continue")
    assert took < 10, took                                  # within seconds, on a busy 2-core host
    plan = PLAN.search(out)                                 # said up front what it would do
    assert plan and plan.groups() == (str(n_chunks), "0", str(n_chunks)), out
    assert f"{command} [" in out                            # progress lines in a log
    assert not (cut / command / "stats.json").exists()
    kept = _chunk_files(cut, command)
    assert 1 <= len(kept) < n_chunks, kept
    before = {p: p.stat().st_mtime_ns for p in kept}

    again = _run(command, str(cut), *flags)
    plan = PLAN.search(again)
    assert plan and plan.groups() == (str(n_chunks), str(len(kept)), str(n_chunks - len(kept))), again
    assert {p: p.stat().st_mtime_ns for p in kept} == before          # not computed again
    assert len(_chunk_files(cut, command)) == n_chunks

    _run(command, str(whole), *flags)
    for name in outputs:
        assert (cut / command / name).read_bytes() == (whole / command / name).read_bytes(), name
    assert [p.read_bytes() for p in _chunk_files(cut, command)] == \
        [p.read_bytes() for p in _chunk_files(whole, command)]


def test_other_settings_never_mix_chunks(snap_run, tmp_path):
    """A rerun with other settings starts in a folder of its own, keeping the first's chunks."""
    run = tmp_path / "run"
    shutil.copytree(snap_run, run)
    _run("dynamics", str(run), "--batch", "5")
    first = _chunk_files(run, "dynamics")
    assert len(first) == 2
    out = _run("dynamics", str(run), "--batch", "10")
    assert PLAN.search(out).groups() == ("1", "0", "1"), out
    assert len({p.parent for p in _chunk_files(run, "dynamics")}) == 2 and set(first) < set(_chunk_files(run, "dynamics"))


def test_a_kept_chunk_is_computed_again_when_its_inputs_changed_or_it_is_damaged(tmp_path, capsys):
    import numpy as np

    from induction_jax import chunks
    from induction_jax.rundir import MANIFEST

    calls = []

    def compute(i):
        calls.append(i)
        return {"x": np.full(3, i, np.float32)}

    weights = {0: np.zeros(2), 1: np.ones(2)}
    store = chunks.ChunkStore(tmp_path, "llc", {"gamma": 1000.0})
    run = lambda: chunks.run_chunks(store, 2, compute, lambda i: weights[i], plan="p", what="w")   # noqa: E731
    assert [r["x"][0] for r in run()] == [0, 1] and calls == [0, 1]
    assert "llc/chunks/" in (tmp_path / MANIFEST).read_text().splitlines()     # --overwrite removes it
    run()
    assert calls == [0, 1]                                  # both kept
    weights[1] = np.full(2, 7.0)                            # a retrained snapshot
    run()
    assert calls == [0, 1, 1] and "computed from other snapshot weights" in capsys.readouterr().err
    store.file(0).write_bytes(store.file(0).read_bytes()[:100])
    run()
    assert calls == [0, 1, 1, 0] and "unreadable, truncated or damaged" in capsys.readouterr().err
    other = chunks.ChunkStore(tmp_path, "llc", {"gamma": 100.0})
    assert other.path != store.path and other.path.parent == store.path.parent
