"""The run directory: what a run writes, who may write it, and how it is read back.

    RUN_DIR/config.json     full config, members, package / JAX versions, device
    RUN_DIR/metrics.csv     long format, one row per (member, step)   (see metrics.py)
    RUN_DIR/checkpoints/    Orbax checkpoints of the stacked ensemble state, with digests
    RUN_DIR/summary.json    per member: final losses, divergence
    RUN_DIR/plots/, analysis/, phase/, report.html   figures and analyses
    RUN_DIR/.induction-jax-manifest   every file and folder the project wrote here

Three rules keep a run directory from being corrupted, silently altered or deleted:
- one writer at a time: commands that write hold an OS lock on the directory (`flock`,
  released by the kernel when the process dies, so a crash leaves no stale lock);
- `--overwrite` removes exactly what the manifest lists, never a file the user keeps there;
- a directory is a run only if its config.json says so; any other directory holding a file a
  run would write is refused.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from induction_jax import __version__, files
from induction_jax.config import ConfigError, RunConfig, upgrade_config_dict
# The file primitives live in `files` (below every module that writes a run); re-exported here,
# where most of the package and the tests import them from.
from induction_jax.files import (MANIFEST, RunDirError, StorageError, json_safe, storage_error,  # noqa: F401
                                 write_json_atomic, write_text_atomic)

RUN_KIND = "induction-jax run"
# Config fields a resumed run may change (and that may differ between config.json and a checkpoint).
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "keep_checkpoints", "log", "log_group")
# Top-level names a run may write: a directory that is not a run but holds one of these is refused.
RUN_ENTRIES = ("config.json", "metrics.csv", "summary.json", "checkpoints", "checkpoints_broken", "plots",
               "analysis", "phase", "report.html", MANIFEST)


def compatible(version: str) -> bool:
    """Runs of the same release series: same major version, and for 0.x the same minor."""
    mine, theirs = __version__.split("."), str(version).split(".")
    n = 2 if mine[0] == "0" else 1
    return theirs[:n] == mine[:n]


def series() -> str:
    parts = __version__.split(".")
    return ".".join(parts[:2] if parts[0] == "0" else parts[:1]) + ".x"


# Locks this process holds: realpath -> [fd, depth] (a command that trains then analyses
# takes the lock once; flock on a second descriptor of the same directory would block itself).
_HELD: dict[str, list[int]] = {}


def _lock_holder(path: Path) -> str:
    """Who holds the flock on `path`, read from /proc/locks (Linux); a generic phrase elsewhere."""
    try:
        st = os.stat(path)
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and key in fields:
                pid = fields[fields.index(key) - 1]
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                    cmd = " ".join(a.rsplit("/", 1)[-1] if i < 2 else a for i, a in enumerate(cmd.split()))
                except OSError:
                    cmd = "?"
                return f"pid {pid} ({cmd})"
    except OSError:
        pass
    return "another process"


class OutputDir:
    """A folder of a run's outputs: `out / "name.png"` records the file in the manifest and
    returns its path, so `--overwrite` later removes exactly what was written."""

    def __init__(self, run: "RunDir", name: str):
        self.run, self.name = run, name
        self.path = run.path / name

    def __truediv__(self, filename: str) -> Path:
        return self.run.output(f"{self.name}/{filename}")


@dataclass(frozen=True)
class RunDir:
    path: Path

    config_json = property(lambda self: self.path / "config.json")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    summary_json = property(lambda self: self.path / "summary.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    plots = property(lambda self: self.path / "plots")
    manifest = property(lambda self: self.path / MANIFEST)

    # ---- reading -------------------------------------------------------------------------
    def is_run(self) -> bool:
        try:
            return json.loads(self.config_json.read_text()).get("kind") == RUN_KIND
        except (OSError, ValueError, AttributeError):
            return False

    def read_meta(self) -> dict:
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: no such directory; expected a run directory written by "
                              f"'induction-jax train'")
        if not self.config_json.is_file():
            raise RunDirError(f"{self.path}: not a run directory (no config.json); expected one written "
                              f"by 'induction-jax train'")
        try:
            meta = json.loads(self.config_json.read_text())
        except ValueError as e:
            raise RunDirError(f"{self.config_json}: not valid JSON ({e})") from None
        except OSError as e:
            raise RunDirError(f"{self.config_json}: cannot be read ({e.strerror})") from None
        if not isinstance(meta, dict) or meta.get("kind") != RUN_KIND:
            raise RunDirError(f"{self.path}: config.json was not written by induction-jax "
                              f"(no \"kind\": \"{RUN_KIND}\")")
        if not compatible(meta.get("version", "")):
            raise RunDirError(f"{self.path}: written by induction-jax {meta.get('version')}, which this version "
                              f"({__version__}) cannot read; allowed: runs of {series()}")
        return meta

    def read_config(self) -> RunConfig:
        meta = self.read_meta()
        try:
            return RunConfig.from_dict(meta["config"])
        except (ConfigError, KeyError, TypeError) as e:
            raise RunDirError(f"{self.config_json}: config cannot be read by induction-jax "
                              f"{__version__}: {e}") from None

    def members(self):
        """The run's `Members`, validated (an empty or ragged table is a one-line error)."""
        from induction_jax.members import Members

        try:
            return Members.from_table(self.read_meta().get("members"), self.read_config().task)
        except ConfigError as e:
            raise RunDirError(f"{self.config_json}: {e}") from None

    # ---- one writer at a time -------------------------------------------------------------
    @contextmanager
    def lock(self):
        """Hold the directory's write lock (reentrant within a process); a second writer gets
        a one-line error naming the holder."""
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield self
            finally:
                _HELD[key][1] -= 1
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot be opened ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirError(f"{self.path}: in use by {_lock_holder(self.path)}; one command writes a run at "
                              f"a time: wait for it to finish or stop it") from None
        _HELD[key] = [fd, 1]
        try:
            yield self
        finally:
            del _HELD[key]
            os.close(fd)          # closing the descriptor releases the flock

    def locked(self) -> bool:
        return os.path.realpath(self.path) in _HELD

    # ---- what a run writes ----------------------------------------------------------------
    def _recorded(self) -> list[str]:
        return files.recorded(self.path)

    def record(self, relpath: str) -> None:
        """Add `relpath` (a file, or a folder ending in '/' that the project owns whole) to the
        manifest, with one O_APPEND write (whole lines even if the process dies)."""
        files.record(self.path, relpath)

    def output(self, relpath: str) -> Path:
        """The path of an output file, recorded in the manifest, its folder created."""
        path = self.path / relpath
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{path.parent}: cannot be created ({e.strerror})") from None
        self.record(relpath)
        return path

    def output_dir(self, name: str) -> OutputDir:
        return OutputDir(self, name)

    def owned_dir(self, name: str) -> Path:
        """A folder the project owns whole (checkpoints): recorded with a trailing '/'."""
        return files.owned_dir(self.path, name)

    def remove_outputs(self) -> list[str]:
        """Delete what the manifest lists and the folders that leaves empty; keep everything
        else. Returns what was kept in folders the run had written to."""
        root = self.path.resolve()
        entries = self._recorded()
        folders = set()
        for entry in entries:
            target = (self.path / entry).resolve()
            if root not in target.parents:
                continue                      # never outside the run directory
            if entry.endswith("/"):
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            folders.update(p for p in target.parents if root in p.parents)
        kept = []
        for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
            try:
                folder.rmdir()
            except OSError:
                if folder.is_dir():
                    kept += [str(p.relative_to(root)) for p in folder.iterdir()]
        self.manifest.unlink(missing_ok=True)
        return kept

    def create(self) -> None:
        """Make the directory (and its parents) for a new run."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path}: exists and is not a directory; choose another --out")
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunDirError(f"{self.path}: cannot create the run directory ({e.strerror}); choose another "
                              f"--out") from None
        if not os.access(self.path, os.W_OK):
            raise RunDirError(f"{self.path}: not writable (permission denied or a read-only filesystem); "
                              f"choose another --out")

    def prepare_new(self, overwrite: bool) -> list[str]:
        """Make the (locked) directory ready for a new run. Refuses to replace a run unless asked,
        and refuses a directory that is not a run but holds a file a run would write."""
        if self.is_run():
            if not overwrite:
                raise RunDirError(f"{self.path}: already holds a run; pass --overwrite to replace it, "
                                  f"or choose another --out")
            if not self.manifest.is_file():
                raise RunDirError(f"{self.path}: holds a run without a file manifest (written by an older "
                                  f"induction-jax); remove it by hand or choose another --out")
            return self.remove_outputs()
        clash = [name for name in RUN_ENTRIES if (self.path / name).exists()]
        if clash:
            raise RunDirError(f"{self.path}: not an induction-jax run (no config.json of ours), but holds "
                              f"{clash[0]}, which a run would overwrite; choose another --out")
        return []

    def write_config(self, cfg: RunConfig, members, extra: dict) -> None:
        """config.json, with what the task records about its inputs (`task_inputs`, e.g. a corpus'
        digest), and the files the task copies into the run (`Task.run_files`, e.g. a tokenizer)."""
        recorded = cfg.task.record(cfg.model)
        for relpath, data in cfg.task.run_files(cfg.model).items():
            files.write_text_atomic(self.output(relpath), data)
        meta = {"kind": RUN_KIND, "version": __version__, "config": cfg.to_dict(),
                "members": members.table(), **({"task_inputs": recorded} if recorded else {}), **extra}
        write_json_atomic(self.output("config.json"), meta)

    def check_config(self) -> None:
        """`check_trained_with` the newest checkpoint whose meta reads (for commands that read
        the metrics but no arrays); a run without checkpoints has nothing to compare with."""
        # Imported here, not above, to keep this module free of JAX and Orbax (seconds to import):
        # the commands that only read a run's tables import it. Not a cycle: checkpoint imports
        # nothing of rundir (tests/test_layers.py checks both).
        from induction_jax.checkpoint import CheckpointError, Checkpoints

        if not self.checkpoints.is_dir():
            return
        with Checkpoints(self.checkpoints, async_save=False) as ckpt:
            for step in reversed(ckpt.steps()):
                try:
                    recorded = ckpt.read_meta(step)
                except CheckpointError:
                    continue
                self.check_trained_with(recorded, may_differ=RESUMABLE_CHANGES)
                return

    def check_trained_with(self, recorded: dict, may_differ: tuple[str, ...] = ()) -> None:
        """Refuse a config.json that no longer says what the run was trained with (`recorded`:
        the config and members a checkpoint stored). Only `may_differ` fields may change."""
        meta = self.read_meta()
        config_now = upgrade_config_dict(meta.get("config", {}))   # either may predate the task section
        for section, fields in upgrade_config_dict(recorded.get("config", {})).items():
            now = config_now.get(section, {})
            for name, value in fields.items():
                if name not in may_differ and now.get(name) != value:
                    raise RunDirError(f"{self.config_json}: edited after training ({section}.{name} is "
                                      f"{now.get(name)!r}, the run was trained with {value!r}); restore it or "
                                      f"start a new run")
        if "members" in recorded and meta.get("members") != recorded["members"]:
            column = next((k for k in recorded["members"] if meta.get("members", {}).get(k) != recorded["members"][k]),
                          "members")
            raise RunDirError(f"{self.config_json}: edited after training (the members table's {column} column "
                              f"differs from what the run was trained with); restore it or start a new run")
