"""Write weights (one member, or the whole ensemble) in a format other tools read.

`npz` and `safetensors` hold the circuit-layout arrays under their own names (`W_E`,
`W_Q [L,H,D,K]`, ...; with a leading ensemble axis when the whole ensemble is written):
`np.load(path)` or `safetensors.numpy.load_file(path)` reads them with no template.
`transformer-lens` writes the directory of `interop.transformer_lens.save_transformer_lens`.

Exporting is held to train's bar (docs/faults.md):
- it never writes into a run directory's own files: inside a run directory only a path under
  its `exports/` folder is allowed, with or without `overwrite`;
- it never replaces a file or folder it did not write unless asked (`overwrite`); what it
  wrote into a run's `exports/` is recorded in that run's manifest (when the run keeps one),
  under the run's writer lock, and may be written again;
- every write goes to a temporary file (or folder) beside the target, is fsynced, then
  renamed into place: a failed write (read-only filesystem, full disk) leaves what was there.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np

from induction_jax.analysis.weights import WeightsError, stacked_params
from induction_jax.interop.transformer_lens import (CONFIG_FILE, STATE_FILE, MissingDependency,
                                                    save_transformer_lens, to_transformer_lens)  # noqa: F401

FORMATS = ("npz", "safetensors", "transformer-lens")
SUFFIXES = {"npz": ".npz", "safetensors": ".safetensors", "transformer-lens": ""}
# Errors of a path that cannot name what is written (bad input, exit 2); any other OSError
# is a failed write (read-only filesystem, full disk, permissions: exit 4).
_BAD_PATH_ERRNOS = (errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EEXIST, errno.ENOTEMPTY, errno.ELOOP)
# os.link is the atomic "create, never replace"; where a filesystem has no hard links, an
# existence check then os.replace.
_NO_LINK_ERRNOS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK, errno.ENOSYS,
                   errno.EACCES)


class ExportError(WeightsError):
    """An export target that is not allowed: a run directory's own files, an existing file or
    folder without `overwrite`, a folder where a file goes (one line; the CLI exits 2)."""


def select_member(params: dict, member: int | None) -> tuple[dict[str, np.ndarray], bool]:
    """(arrays, single): one member without the ensemble axis, or (member None) every member.

    `params` is stacked `[E, ...]` or a single model's (no ensemble axis, member 0).
    """
    single = np.ndim(params.get("W_E")) == 2
    stacked = stacked_params(params, ensemble=not single)
    E = stacked["W_E"].shape[0]
    if member is None:
        return ({k: v[0] for k, v in stacked.items()}, True) if single else (stacked, False)
    if not isinstance(member, (int, np.integer)) or isinstance(member, bool) or not 0 <= member < E:
        raise WeightsError(f"member {member!r}: out of range; allowed: 0..{E - 1} "
                           f"({E} member{'s' if E > 1 else ''})")
    return {k: v[member] for k, v in stacked.items()}, True


def export_params(params: dict, member: int | None, fmt: str, out_path: str | Path,
                  model_cfg=None, *, overwrite: bool = False, arg: str | None = "out",
                  flag: str = "overwrite=True") -> Path:
    """Write `params` (stacked `[E, ...]` or single) as `fmt`; returns the path written.

    `member=None` writes every member (npz, safetensors); `transformer-lens` holds one model,
    so it needs `member` unless the ensemble has one member.

    Refuses (`ExportError`, nothing touched) a path inside a run directory other than under
    its `exports/`, a folder where a file goes, and an existing file, or non-empty folder,
    that this export did not write unless `overwrite` (which replaces only a file, or a
    folder holding just a TransformerLens export). A failed write is a `StorageError` and
    leaves what was there. `arg` and `flag` name the argument and the overwrite switch in
    messages (`"--out"`, `"--overwrite"` on the command line; `arg=None`: a default path).
    """
    if fmt not in FORMATS:
        raise WeightsError(f"format {fmt!r}: unknown; allowed: {', '.join(FORMATS)}")
    arrays, single = select_member(params, member)
    out = Path(out_path)
    if fmt == "transformer-lens":
        if not single:
            E = arrays["W_E"].shape[0]
            if E != 1:
                raise WeightsError(f"format transformer-lens: holds one model; pick a member in 0..{E - 1}")
            arrays = {k: v[0] for k, v in arrays.items()}
        # Everything that can be refused is refused before the disk is touched.
        config, state = to_transformer_lens(arrays, model_cfg)
        import torch

        files = {CONFIG_FILE: lambda f: f.write((json.dumps(config, indent=2) + "\n").encode()),
                 STATE_FILE: lambda f: torch.save(state, f)}
        return _Target(out, fmt, overwrite, arg, flag).write_folder(files)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    if fmt == "npz":
        # Through a file object: np.savez given a name appends ".npz" when it is missing.
        def write(f):
            np.savez(f, **arrays)
    else:
        try:
            from safetensors.numpy import save
        except ImportError:
            raise MissingDependency("format safetensors: needs the safetensors package "
                                    "(pip install safetensors)") from None

        def write(f):
            f.write(save(arrays))
    return _Target(out, fmt, overwrite, arg, flag).write_file(write)


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (where the filesystem allows fsync of a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class _Target:
    """Where an export goes: checked against run directories and what is already there, then
    written through a temporary file (or folder) beside it and renamed into place."""

    def __init__(self, out: Path, fmt: str, overwrite: bool, arg: str | None, flag: str):
        self.out, self.fmt, self.overwrite, self.flag = out, fmt, overwrite, flag
        self.label = f"{arg} {out}" if arg else str(out)
        # The place the write lands: the folder resolved (symlinks, ..), the name itself, which
        # os.replace acts on (a symlink there is replaced, not followed).
        absolute = Path(os.path.abspath(out))
        self.full = absolute.parent.resolve() / absolute.name if absolute.name else absolute
        self.run, self.rel = self._owner()

    def _owner(self):
        """(RunDir, path relative to it) of the innermost run directory holding the target, or
        (None, None); refuses a path among any run directory's own files."""
        from induction_jax.rundir import RunDir

        owner = None
        for folder in [self.full, *self.full.parents]:
            run = RunDir(folder)
            if not run.is_run():
                continue
            parts = self.full.relative_to(folder).parts
            allowed = f"allowed: a path under {folder / 'exports'}/ or outside any run directory"
            if not parts:
                raise ExportError(f"{self.label}: is the run directory {folder}; export never writes a run "
                                  f"directory's own files; {allowed}")
            if parts[0] != "exports" or len(parts) < 2:
                raise ExportError(f"{self.label}: inside the run directory {folder}, whose own files export "
                                  f"never writes (not even with {self.flag}); {allowed}")
            if owner is None:
                owner = (run, "/".join(parts))
        return owner or (None, None)

    # ---- checks ------------------------------------------------------------------------------
    def _ours(self, folder: bool) -> bool:
        """Whether the run's manifest lists the target (this project wrote it there)."""
        if self.run is None or not self.run.manifest.is_file():
            return False
        return (self.rel + "/" if folder else self.rel) in self.run._recorded()

    def _check_parent(self) -> None:
        for folder in [self.full.parent, *self.full.parent.parents]:
            if os.path.lexists(folder):
                if not folder.is_dir():
                    raise ExportError(f"{self.label}: {folder} is not a folder; choose another path")
                return

    def _check_file(self) -> bool:
        """Whether an existing file is replaced (else the target must not exist)."""
        self._check_parent()
        if self.full.is_dir():
            example = self.out / f"weights{SUFFIXES[self.fmt]}"
            raise ExportError(f"{self.label}: is a folder; {self.fmt} writes one file: name a file, e.g. "
                              f"{example}")
        if not os.path.lexists(self.full):
            return False
        if not (self.overwrite or self._ours(folder=False)):
            raise ExportError(f"{self.label}: already exists; pass {self.flag} to replace it, or choose a new "
                              f"path")
        return True

    def _check_folder(self) -> bool:
        """Whether an existing non-empty folder is replaced (else it must be new or empty)."""
        self._check_parent()
        if os.path.islink(self.full) or (os.path.lexists(self.full) and not self.full.is_dir()):
            raise ExportError(f"{self.label}: is a file; transformer-lens writes a folder ({CONFIG_FILE}, "
                              f"{STATE_FILE}): name a new or empty folder")
        if not self.full.is_dir():
            return False
        try:
            held = sorted(p.name for p in self.full.iterdir())
        except OSError as e:
            raise ExportError(f"{self.label}: cannot be read ({e.strerror}); choose another path") from None
        if not held:
            return False
        if self._ours(folder=True):
            return True
        if not self.overwrite:
            raise ExportError(f"{self.label}: is a folder that is not empty; pass {self.flag} to replace the "
                              f"TransformerLens export there, or name a new or empty folder")
        foreign = [n for n in held if n not in (CONFIG_FILE, STATE_FILE) or not (self.full / n).is_file()
                   or (self.full / n).is_symlink()]
        if foreign:
            raise ExportError(f"{self.label}: holds {foreign[0]}, which is not part of a TransformerLens export; "
                              f"{self.flag} replaces only a folder holding {CONFIG_FILE} and {STATE_FILE}: name "
                              f"a new or empty folder")
        return True

    # ---- writing -----------------------------------------------------------------------------
    def _failed(self, e: OSError) -> Exception:
        from induction_jax.rundir import StorageError

        if e.errno in _BAD_PATH_ERRNOS:
            return ExportError(f"{self.label}: cannot be written there ({e.strerror}); choose another path")
        return StorageError(f"{self.label}: {(e.strerror or str(e)).lower()} while writing it; nothing already "
                            f"there was changed: choose a writable path")

    def _lock(self):
        return self.run.lock() if self.run is not None else contextlib.nullcontext()

    def _make_parent(self) -> list[Path]:
        """Create the target's folder; returns the folders created (removed again on failure)."""
        made = []
        for folder in reversed([self.full.parent, *self.full.parent.parents]):
            if not os.path.lexists(folder):
                os.mkdir(folder)
                made.append(folder)
        return made

    def _temporary(self) -> Path:
        return self.full.parent / f".{self.full.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"

    @staticmethod
    def _write_synced(path: Path, write) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())

    def _record(self, folder: bool) -> None:
        if self.run is not None and self.run.manifest.is_file():
            self.run.record(self.rel + "/" if folder else self.rel)

    def write_file(self, write) -> Path:
        with self._lock():
            replace = self._check_file()
            made, tmp = [], None
            try:
                made = self._make_parent()
                tmp = self._temporary()
                self._write_synced(tmp, write)
                if replace:
                    os.replace(tmp, self.full)
                else:
                    self._create(tmp)
                tmp = None
                _fsync_dir(self.full.parent)
            except OSError as e:
                self._clean(tmp, made)
                raise self._failed(e) from None
            except BaseException:
                self._clean(tmp, made)
                raise
            self._record(folder=False)
        return self.out

    def _create(self, tmp: Path) -> None:
        """Rename `tmp` to the target only if nothing is there (atomically where hard links work)."""
        try:
            os.link(tmp, self.full)
        except FileExistsError:
            raise ExportError(f"{self.label}: already exists; pass {self.flag} to replace it, or choose a new "
                              f"path") from None
        except OSError as e:
            if e.errno not in _NO_LINK_ERRNOS:
                raise
            if os.path.lexists(self.full):
                raise ExportError(f"{self.label}: already exists; pass {self.flag} to replace it, or choose a "
                                  f"new path") from None
            os.replace(tmp, self.full)
            return
        os.unlink(tmp)

    def write_folder(self, files: dict) -> Path:
        with self._lock():
            replace = self._check_folder()
            made, tmp = [], None
            try:
                made = self._make_parent()
                tmp = self._temporary()
                os.mkdir(tmp, 0o777)
                for name, write in files.items():
                    self._write_synced(tmp / name, write)
                _fsync_dir(tmp)
                if replace:
                    old = self.full.parent / f".{self.full.name}.{os.getpid()}.{secrets.token_hex(4)}.old"
                    os.rename(self.full, old)
                    try:
                        os.rename(tmp, self.full)
                    except BaseException:
                        os.rename(old, self.full)
                        raise
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.rename(tmp, self.full)        # onto nothing, or an empty folder
                tmp = None
                _fsync_dir(self.full.parent)
            except OSError as e:
                self._clean(tmp, made)
                if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    raise ExportError(f"{self.label}: a folder that is not empty appeared there while writing; "
                                      f"nothing in it was changed: name a new or empty folder") from None
                raise self._failed(e) from None
            except BaseException:
                self._clean(tmp, made)
                raise
            self._record(folder=True)
        return self.out

    @staticmethod
    def _clean(tmp: Path | None, made: list[Path]) -> None:
        if tmp is not None:
            if os.path.isdir(tmp) and not os.path.islink(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(folder)
