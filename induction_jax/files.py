"""The run directory's file primitives, at the bottom of the package: it imports nothing of it.

Every module that writes into a run directory (`rundir`, `arrays`, `checkpoint`, `snapshots`,
the analyses) writes through these: atomic writes (a reader never sees half a file, a failed
write leaves the old file as it was), the manifest of what the project wrote (so `--overwrite`
removes exactly that), and the one-line errors a broken directory or a failed write raises.
`rundir` re-exports them, so `from induction_jax.rundir import RunDirError` keeps working.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np

MANIFEST = ".induction-jax-manifest"


class RunDirError(RuntimeError):
    """A run directory that is missing, foreign, in use, already used, or broken (one-line message)."""


class StorageError(RunDirError):
    """A write that failed (full disk, read-only filesystem); nothing already written was lost."""


def storage_error(e: OSError, path: Path) -> StorageError:
    """One line for a failed write; a full disk says that the run can be resumed."""
    if e.errno == errno.ENOSPC:
        return StorageError(f"no space left on device while writing {path}; the run can be resumed once "
                            f"space is freed")
    return StorageError(f"{(e.strerror or str(e)).lower()} while writing {path}")


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temporary file and rename, so a reader never sees half a file; a failed write
    removes the temporary file and leaves the old file as it was."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise storage_error(e, path) from None


def write_text_atomic(path: Path, text: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        (tmp.write_bytes if isinstance(text, bytes) else tmp.write_text)(text)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise storage_error(e, path) from None


def json_safe(obj):
    """`obj` with numpy scalars as Python numbers and non-finite floats as None (JSON null)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


# ---- the manifest: every file and folder the project wrote in a run directory --------------
def recorded(run_path: Path) -> list[str]:
    """The manifest's entries (none when there is no manifest yet)."""
    try:
        return [line for line in (Path(run_path) / MANIFEST).read_text().splitlines() if line]
    except FileNotFoundError:
        return []


def record(run_path: Path, relpath: str) -> None:
    """Add `relpath` (a file, or a folder ending in '/' that the project owns whole) to the
    manifest of `run_path`, with one O_APPEND write (whole lines even if the process dies)."""
    if relpath in recorded(run_path):
        return
    manifest = Path(run_path) / MANIFEST
    try:
        fd = os.open(manifest, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (relpath + "\n").encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise storage_error(e, manifest) from None


def owned_dir(run_path: Path, name: str) -> Path:
    """A folder the project owns whole (checkpoints, snapshots): recorded with a trailing '/'.
    Returns its path; the caller creates it."""
    record(run_path, name.rstrip("/") + "/")
    return Path(run_path) / name
