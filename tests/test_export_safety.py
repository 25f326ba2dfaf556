"""`export` is held to train's bar: it never writes a run directory's own files, never replaces
a file it did not write without --overwrite, writes atomically under the run's writer lock,
and fails in one line (exit 2 for a bad --out, 4 for a failed write) with nothing lost. The
Python API checks its arguments, and the weights it is given, at the edge."""

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import tree_digest
from filesystems import tmpfs
from induction_jax.cli import main
from induction_jax.interop import export as export_module

pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")


def _one_line_error(capsys, code: int, *args) -> str:
    capsys.readouterr()
    got = main(list(args))
    err = capsys.readouterr().err.strip()
    assert got == code, err
    assert len(err.splitlines()) == 1 and err.startswith("induction-jax export: error: "), err
    return err


def _copy(reference, tmp_path, name="run") -> Path:
    run = tmp_path / name
    shutil.copytree(reference, run)
    return run


def _leftovers(folder: Path) -> list[str]:
    """Temporary files or folders an export left behind."""
    return [p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".old"))]


class _FailingOs:
    """os, but `name` raises OSError(code) (for paths ending in `.tmp` where it takes one)."""

    def __init__(self, name: str, code: int):
        self.name, self.code = name, code

    def __getattr__(self, attr):
        if attr == self.name:
            def fail(*args, **kwargs):
                if attr == "open" and not str(args[0]).endswith(".tmp"):
                    return os.open(*args, **kwargs)
                raise OSError(self.code, os.strerror(self.code))
            return fail
        return getattr(os, attr)


# ---- a run directory's own files ------------------------------------------------------------

def test_export_never_writes_a_run_directorys_own_files(capsys, reference, tmp_path):
    run, other = _copy(reference, tmp_path), _copy(reference, tmp_path, "other")
    before, before_other = tree_digest(run), tree_digest(other)
    for target in (run / "metrics.csv", run / "config.json", run / ".induction-jax-manifest",
                   run / "checkpoints" / "1000" / "weights.npz", run / "plots" / "new.npz", run / "exports",
                   run, other / "metrics.csv", other / "summary.json"):
        for flags in ([], ["--overwrite"]):
            err = _one_line_error(capsys, 2, "export", str(run), "--out", str(target), *flags)
            assert f"--out {target}:" in err and "/exports/ or outside any run directory" in err
    tl = _one_line_error(capsys, 2, "export", str(run), "--format", "transformer-lens", "--out", str(run),
                         "--overwrite")
    assert "is the run directory" in tl
    assert tree_digest(run) == before and tree_digest(other) == before_other
    # The run still resumes (metrics.csv byte-identical, config.json of ours).
    assert main(["train", "--resume", str(run), "--steps", "1020", "--no-analysis", "--no-progress"]) == 0
    assert (run / "metrics.csv").read_bytes().startswith((reference / "metrics.csv").read_bytes())


def test_export_into_another_runs_exports_is_recorded_there(capsys, reference, tmp_path):
    run, other = _copy(reference, tmp_path), _copy(reference, tmp_path, "other")
    target = other / "exports" / "from-run.npz"
    assert main(["export", str(run), "--out", str(target)]) == 0
    assert "exports/from-run.npz" in (other / ".induction-jax-manifest").read_text().splitlines()
    assert "exports" not in (run / ".induction-jax-manifest").read_text()


# ---- files and folders of the user's ----------------------------------------------------------

def test_an_existing_file_is_replaced_only_with_overwrite(capsys, reference, tmp_path):
    run = _copy(reference, tmp_path)
    mine = tmp_path / "mine.npz"
    mine.write_bytes(b"my own bytes")
    err = _one_line_error(capsys, 2, "export", str(run), "--out", str(mine))
    assert f"--out {mine}: already exists; pass --overwrite" in err
    assert mine.read_bytes() == b"my own bytes"
    assert main(["export", str(run), "--out", str(mine), "--overwrite"]) == 0
    assert np.load(mine)["W_Q"].shape == (2, 2, 16, 8)
    assert _leftovers(tmp_path) == []
    # A default export the run recorded may be written again; a file of the user's there may not.
    assert main(["export", str(run)]) == 0
    assert main(["export", str(run)]) == 0
    theirs = run / "exports" / "member1-step1000.npz"
    theirs.write_bytes(b"placed by hand")
    err = _one_line_error(capsys, 2, "export", str(run), "--member", "1")
    assert f"{theirs}: already exists; pass --overwrite" in err and theirs.read_bytes() == b"placed by hand"


def test_out_naming_a_folder_is_one_line_and_exit_2(capsys, reference, tmp_path):
    run = _copy(reference, tmp_path)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    for flags in ([], ["--overwrite"]):
        err = _one_line_error(capsys, 2, "export", str(run), "--out", str(folder), *flags)
        assert f"--out {folder}: is a folder; npz writes one file: name a file" in err
    (tmp_path / "afile").write_text("x")
    err = _one_line_error(capsys, 2, "export", str(run), "--out", str(tmp_path / "afile" / "w.npz"))
    assert "is not a folder" in err
    assert (folder / "keep.txt").read_text() == "keep" and (tmp_path / "afile").read_text() == "x"


def test_transformer_lens_folders_are_written_whole_and_never_over_a_users_folder(capsys, reference, tmp_path):
    pytest.importorskip("transformer_lens")
    pytest.importorskip("torch")
    from induction_jax.interop import load_transformer_lens

    run = _copy(reference, tmp_path)
    users = tmp_path / "users"
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    for flags, fragment in (([], "is a folder that is not empty; pass --overwrite"),
                            (["--overwrite"], "holds notes.txt, which is not part of a TransformerLens export")):
        err = _one_line_error(capsys, 2, "export", str(run), "--format", "transformer-lens", "--out", str(users),
                              *flags)
        assert f"--out {users}:" in err and fragment in err
    assert [p.name for p in users.iterdir()] == ["notes.txt"]
    (tmp_path / "afile").write_text("x")
    err = _one_line_error(capsys, 2, "export", str(run), "--format", "transformer-lens", "--out",
                          str(tmp_path / "afile"))
    assert "is a file; transformer-lens writes a folder" in err
    tl = tmp_path / "tl"
    assert main(["export", str(run), "--format", "transformer-lens", "--out", str(tl)]) == 0
    assert sorted(p.name for p in tl.iterdir()) == ["config.json", "state_dict.pt"]
    err = _one_line_error(capsys, 2, "export", str(run), "--format", "transformer-lens", "--out", str(tl),
                          "--member", "1")
    assert "not empty; pass --overwrite" in err
    assert main(["export", str(run), "--format", "transformer-lens", "--out", str(tl), "--member", "1",
                 "--overwrite"]) == 0
    assert load_transformer_lens(tl).cfg.n_ctx == 12
    assert _leftovers(tmp_path) == []
    # An empty folder is filled; a default export is recorded as a folder the project owns.
    (tmp_path / "empty").mkdir()
    assert main(["export", str(run), "--format", "transformer-lens", "--out", str(tmp_path / "empty")]) == 0
    assert main(["export", str(run), "--format", "transformer-lens"]) == 0
    assert "exports/member0-step1000/" in (run / ".induction-jax-manifest").read_text().splitlines()


# ---- failed writes -------------------------------------------------------------------------------

def test_a_read_only_filesystem_is_one_line_and_exit_4(capsys, reference, tmp_path):
    run = _copy(reference, tmp_path)
    with tmpfs(tmp_path / "ro", "size=64k,ro") as fs:
        if fs is None:
            pytest.skip("cannot mount a read-only tmpfs here (the injected EROFS test covers the same path)")
        for target in (fs / "w.npz", fs / "sub" / "w.npz"):
            err = _one_line_error(capsys, 4, "export", str(run), "--out", str(target))
            assert f"--out {target}: read-only file system while writing it" in err


def test_an_injected_read_only_folder_is_one_line_and_exit_4(capsys, monkeypatch, reference, tmp_path):
    run = _copy(reference, tmp_path)
    monkeypatch.setattr(export_module, "os", _FailingOs("open", errno.EROFS))
    target = tmp_path / "w.npz"
    err = _one_line_error(capsys, 4, "export", str(run), "--out", str(target))
    assert f"--out {target}: read-only file system while writing it; nothing already there was changed" in err
    assert not target.exists() and _leftovers(tmp_path) == []


def test_a_full_disk_leaves_the_old_file_and_no_temporary_file(capsys, monkeypatch, reference, tmp_path):
    run = _copy(reference, tmp_path)
    old = tmp_path / "w.npz"
    old.write_bytes(b"the old export")
    monkeypatch.setattr(export_module, "os", _FailingOs("fsync", errno.ENOSPC))
    err = _one_line_error(capsys, 4, "export", str(run), "--out", str(old), "--overwrite")
    assert "no space left on device while writing it" in err
    assert old.read_bytes() == b"the old export" and _leftovers(tmp_path) == []
    # In a run's exports/: nothing recorded, nothing left.
    before = tree_digest(run)
    _one_line_error(capsys, 4, "export", str(run))
    assert tree_digest(run) == before


# ---- one writer, and the manifest ----------------------------------------------------------------

def test_export_into_a_run_takes_its_lock_and_records_what_it_wrote(capsys, reference, tmp_path):
    from induction_jax.rundir import RunDir

    run = _copy(reference, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c",
                               "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(run)!r}, os.O_RDONLY | os.O_DIRECTORY)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX)\n"
                               "print('locked', flush=True)\n"
                               "time.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree_digest(run)
        err = _one_line_error(capsys, 2, "export", str(run))
        assert f"in use by pid {holder.pid}" in err
        assert tree_digest(run) == before
    finally:
        holder.kill()
        holder.wait()
    assert main(["export", str(run), "--all", "--format", "safetensors"]) == 0
    assert "exports/all-step1000.safetensors" in (run / ".induction-jax-manifest").read_text().splitlines()
    (run / "exports" / "mine.txt").write_text("mine")
    # What train --overwrite removes: the export, never the user's file beside it.
    kept = RunDir(run).remove_outputs()
    assert kept == ["exports/mine.txt"] and not (run / "exports" / "all-step1000.safetensors").exists()
    # A run without a manifest (an older release) gets none from an export.
    old = _copy(reference, tmp_path, "old")
    (old / ".induction-jax-manifest").unlink()
    assert main(["export", str(old)]) == 0
    assert not (old / ".induction-jax-manifest").exists()


# ---- the Python API's edge -------------------------------------------------------------------------

def test_api_arguments_are_checked_at_the_edge(reference, tmp_path):
    import induction_jax as ij
    from induction_jax.config import ConfigError

    with pytest.raises(TypeError, match=r"^cfg: expected an induction_jax.RunConfig \(or a dict of its "
                                        r"sections model, data, train.*got str$"):
        ij.train("hello", out=tmp_path / "a")
    with pytest.raises(ConfigError, match="^cfg: config.model: unknown key 'd_modle'"):
        ij.train({"model": {"d_modle": 8}}, out=tmp_path / "a")
    with pytest.raises(TypeError, match="^out: expected a path"):          # the dict itself was accepted
        ij.train({"model": {}}, out=3)
    with pytest.raises(TypeError, match="^members: expected an induction_jax.Members"):
        ij.train(None, out=tmp_path / "a", members=[0, 1])
    with pytest.raises(TypeError, match="^overwrite: expected True or False"):
        ij.train(out=tmp_path / "a", overwrite="yes")
    with pytest.raises(TypeError, match="^lr: expected a list of learning rates"):
        ij.sweep(out=tmp_path / "s", lr=3e-3)
    with pytest.raises(ValueError, match="^lr: 0: must be a finite number > 0"):
        ij.sweep(out=tmp_path / "s", lr=[1e-3, 0])
    with pytest.raises(ValueError, match="^init_seeds: 1 is listed twice"):
        ij.sweep(out=tmp_path / "s", init_seeds=[0, 1, 1])
    with pytest.raises(TypeError, match="^interventions: expected a list of arms"):
        ij.sweep(out=tmp_path / "s", interventions="none")
    assert not any(tmp_path.iterdir())                                     # nothing was written
    with pytest.raises(TypeError, match="^path: expected a path"):
        ij.open_run(3)
    r = ij.open_run(_copy(reference, tmp_path))
    with pytest.raises(TypeError, match="^step: expected an int or None, got str"):
        r.params(step="1000")
    with pytest.raises(ValueError, match="^member 5: out of range; this run has members 0..1"):
        r.params(member=5)
    with pytest.raises(TypeError, match="^member: expected an int"):
        r.analyze(member="0")
    with pytest.raises(TypeError, match="^smoth_steps: not an option of Run.phase"):
        r.phase(smoth_steps=3)
    with pytest.raises(TypeError, match="^format: expected a text"):
        r.export(format=None)
    with pytest.raises(TypeError, match="^out: expected a path"):
        r.export(out=5)
    with pytest.raises(ValueError, match=r"^out .*metrics.csv: inside the run directory .*not even with "
                                         r"overwrite=True"):
        r.export(out=r.path / "metrics.csv", overwrite=True)


def test_weights_are_checked_against_their_own_shapes(reference, tmp_path):
    import induction_jax as ij

    params = ij.open_run(reference).params(member=0)                       # n_ctx 12
    with pytest.raises(TypeError, match="^params: expected a dict of circuit-layout weights"):
        ij.analyze_weights("W_E")
    with pytest.raises(ValueError, match=r"^period=25: the probe sequences of 2\*period=50 tokens must "
                                         r"fit the context of these weights \(W_pos has n_ctx=12 positions\); "
                                         r"allowed: 1..6"):
        ij.analyze_weights(params, period=25)
    bad = dict(params, W_K=params["W_K"][:, :1])
    with pytest.raises(ValueError, match=r"^params\['W_K'\]: shape \(2, 1, 16, 8\), expected \(2, 2, 16, 8\)"):
        ij.analyze_weights(bad)
    with pytest.raises(ValueError, match=r"^params: unknown weight 'W_X'"):
        ij.analyze_weights(dict(params, W_X=params["W_E"]))
    with pytest.raises(TypeError, match="^probe_batchh: not an option of analyze_weights"):
        ij.analyze_weights(params, probe_batchh=8)
    # The default half_length comes from W_pos (the context the weights have).
    assert ij.analyze_weights(params, probe_batch=8)["scores"]["induction_score"].shape == (1, 2, 2)


def test_a_transformer_lens_model_with_its_own_context_analyses(reference, tmp_path):
    pytest.importorskip("transformer_lens")
    pytest.importorskip("torch")
    import induction_jax as ij
    from induction_jax.interop import load_transformer_lens

    with pytest.raises(TypeError, match="^model_or_state_dict: expected a TransformerLens HookedTransformer"):
        ij.from_transformer_lens("gpt2")
    assert main(["export", str(reference), "--format", "transformer-lens", "--out", str(tmp_path / "tl")]) == 0
    model = load_transformer_lens(tmp_path / "tl")                         # n_ctx 12, not the default 50
    result = ij.analyze_weights(ij.from_transformer_lens(model), probe_batch=8)
    assert result["scores"]["induction_score"].shape == (1, 2, 2)
    with pytest.raises(ValueError, match=r"^cfg: n_ctx=50 but the weights have n_ctx=12"):
        ij.from_transformer_lens(model.state_dict(), dict(model.cfg.to_dict(), n_ctx=50))
    with pytest.raises(ValueError, match="^cfg: a state dict needs its cfg"):
        ij.from_transformer_lens(model.state_dict())
