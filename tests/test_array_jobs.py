"""Array jobs: --shard I/N slices through submitit's LocalExecutor, merged, equal the one-process
sweep bitwise; what is not every slice of one sweep is refused in one line."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

from induction_jax.arrayjob import slice_dirs, submit_slices
from induction_jax.checkpoint import Checkpoints
from induction_jax.config import RunConfig
from induction_jax.distributed import member_block
from induction_jax.members import Members
from induction_jax.rundir import RunDirError
from induction_jax.shards import ShardError, parse_shard

submitit = pytest.importorskip("submitit")

CFG = RunConfig().replace(d_vocab=16, half_length=6, n_ctx=12, d_model=16, n_heads=2, batch_size=32,
                          probe_batch_size=8, seeds=4, eval_every=10, chunk_steps=20, steps=40,
                          checkpoint_every=20, snapshots="every:20")
MEMBERS = Members.grid(CFG, lrs=[3e-3, 1e-2])           # 2 lr x 4 seeds = 8 members


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from induction_jax.merge import merge_runs
    from induction_jax.runner import train_run

    root = tmp_path_factory.mktemp("arrayjob")
    whole = train_run(CFG, root / "whole", members=MEMBERS, progress=False)
    executor = submitit.LocalExecutor(folder=root / "logs")
    executor.update_parameters(timeout_min=20)
    jobs = submit_slices(executor, CFG, MEMBERS, root / "slices", 2)
    assert [j.result() for j in jobs] == [str(d) for d in slice_dirs(root / "slices", 2)]
    merged = merge_runs(slice_dirs(root / "slices", 2), root / "merged")
    return root, whole, merged


def test_member_block_partitions_in_order():
    for n, k in [(8, 2), (7, 3), (5, 5)]:
        blocks = [member_block(n, i, k) for i in range(k)]
        assert [m for b in blocks for m in range(b.start, b.stop)] == list(range(n))


@pytest.mark.parametrize("text", ["3/2", "0/0", "2/2", "-1/2", "a/b", "1"])
def test_bad_shard_is_one_line(text):
    with pytest.raises(ShardError, match=r"^--shard .*allowed: I/N") as e:
        parse_shard(text)
    assert "\n" not in str(e.value)


def test_merged_equals_one_process(runs):
    root, whole, merged = runs
    for name in ("metrics.csv", "head_metrics.csv"):
        assert (merged.path / name).read_bytes() == (whole.path / name).read_bytes(), name
    assert json.loads(merged.summary_json.read_text()) == json.loads(whole.summary_json.read_text())
    assert merged.members().table() == whole.members().table()
    with Checkpoints(whole.checkpoints, async_save=False) as a, Checkpoints(merged.checkpoints, async_save=False) as b:
        assert a.steps() == b.steps() == [0, 20, 40]
        for step in a.steps():
            ma, mb = a.read_meta(step), b.read_meta(step)
            assert ma["digest"] == mb["digest"] and ma["table_bytes"] == mb["table_bytes"], step
    for step in (0, 20, 40):
        f = f"snapshots/step_{step:08d}.npz"
        wa, wb = np.load(whole.path / f), np.load(merged.path / f)
        assert sorted(wa) == sorted(wb) and all(np.array_equal(wa[k], wb[k]) for k in wa)


def test_analysis_and_phase_of_merged_equal(runs):
    from induction_jax.analysis.run import analyze_run
    from induction_jax.phase.run import phase_run

    root, whole, merged = runs
    for run in (whole, merged):
        analyze_run(run.path)
        phase_run(run.path)
    assert (merged.path / "analysis/scores.csv").read_bytes() == (whole.path / "analysis/scores.csv").read_bytes()
    assert (merged.path / "phase/timings.csv").read_bytes() == (whole.path / "phase/timings.csv").read_bytes()


def _merge(*args):
    return subprocess.run([sys.executable, "-m", "induction_jax.cli", "merge", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_refusals_are_one_line_and_write_nothing(runs, tmp_path):
    root, whole, merged = runs
    s0, s1 = slice_dirs(root / "slices", 2)
    cases = {"missing": ([s0], "slice 1 of 2 missing"),
             "overlap": ([s0, s0], "both are slice 0 of 2"),
             "foreign": ([s0, whole.path], "not a slice"),
             "existing": ([s0, s1, "--out-existing"], "exists; merge writes a new run directory")}
    for name, (dirs, message) in cases.items():
        out = tmp_path / name
        if dirs[-1] == "--out-existing":
            dirs, out = dirs[:-1], merged.path
            before = (out / "metrics.csv").read_bytes()
        r = _merge(*dirs, "--out", out)
        lines = r.stderr.strip().splitlines()
        assert r.returncode != 0 and len(lines) == 1 and message in lines[0], (name, r.stderr)
        if name == "existing":
            assert (out / "metrics.csv").read_bytes() == before
        else:
            assert not out.exists(), name


def test_slice_of_another_spec_is_refused(runs, tmp_path):
    from induction_jax.merge import merge_runs
    from induction_jax.runner import train_run

    root, _, _ = runs
    other = train_run(CFG.replace(steps=20), tmp_path / "other", members=MEMBERS, progress=False, shard=(1, 2))
    with pytest.raises(RunDirError, match="a slice of another spec") as e:
        merge_runs([slice_dirs(root / "slices", 2)[0], other.path], tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_a_stopped_merge_continues_to_the_same_run(runs, tmp_path, monkeypatch, capsys):
    """Stopped after its checkpoints and one snapshot, the same command keeps what is there,
    writes the rest and ends with the run an unstopped merge gives."""
    from induction_jax import merge as merge_lib

    root, whole, merged = runs
    save, written = merge_lib.snapshots.save, []

    def save_then_stop(run, step, params):
        if written:
            raise KeyboardInterrupt
        written.append(step)
        return save(run, step, params)

    monkeypatch.setattr(merge_lib.snapshots, "save", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        merge_lib.merge_runs(slice_dirs(root / "slices", 2), tmp_path / "m")
    assert not (tmp_path / "m" / "config.json").exists()
    monkeypatch.setattr(merge_lib.snapshots, "save", save)
    capsys.readouterr()
    again = merge_lib.merge_runs(slice_dirs(root / "slices", 2), tmp_path / "m")
    err = capsys.readouterr().err
    assert "continuing a stopped merge (3 checkpoint(s), 1 snapshot(s) already there)" in err
    assert "MiB to read and write" in err and re.search(r"merge \[#+\] 2/2 items", err), err
    assert json.loads(again.summary_json.read_text()) == json.loads(whole.summary_json.read_text())
    for step in (0, 20, 40):
        f = f"snapshots/step_{step:08d}.npz"
        wa, wb = np.load(whole.path / f), np.load(again.path / f)
        assert all(np.array_equal(wa[k], wb[k]) for k in wa)
    with Checkpoints(whole.checkpoints, async_save=False) as a, Checkpoints(again.checkpoints, async_save=False) as b:
        assert [a.read_meta(s)["digest"] for s in a.steps()] == [b.read_meta(s)["digest"] for s in b.steps()]


def test_slices_log_members_by_their_sweep_id_and_merge_logs_the_whole(tmp_path):
    """--log tensorboard --log-group member on slices: slice 1 names its members 4..7 (their ids
    in the sweep); the merged run holds one event folder per member of the sweep, with exactly the
    merged metrics.csv's values."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from induction_jax.merge import merge_runs
    from induction_jax.metrics import read_metrics
    from induction_jax.runner import train_run

    cfg = CFG.replace(steps=20, snapshots="none", log="tensorboard", log_group="member")
    dirs = [train_run(cfg, tmp_path / f"s{i}", members=MEMBERS, progress=False, shard=(i, 2)).path for i in (0, 1)]
    assert sorted(p.name for p in (dirs[1] / "tensorboard").iterdir()) == [f"member{m}" for m in range(4, 8)]
    merged = merge_runs(dirs, tmp_path / "merged")
    assert sorted(p.name for p in (merged.path / "tensorboard").iterdir()) == [f"member{m}" for m in range(8)]
    table = read_metrics(merged.path / "metrics.csv")
    for m in (0, 5):
        acc = EventAccumulator(str(merged.path / "tensorboard" / f"member{m}"), size_guidance={"scalars": 0})
        acc.Reload()
        mine = (table["member"] == m) & np.isfinite(table["loss"])
        got = [(e.step, e.value) for e in acc.Scalars("loss")]
        assert [s for s, _ in got] == list(table["step"][mine].astype(int))
        np.testing.assert_allclose([v for _, v in got], table["loss"][mine], rtol=1e-6)
