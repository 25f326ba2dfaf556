"""Array files a run writes besides its checkpoints (analysis arrays, snapshots): `.npz`
readable with plain `numpy.load`, written atomically, with a digest of their contents inside
that every reader of the project checks, so a truncated or altered file is refused in one line
instead of being read as wrong numbers."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import jax
import numpy as np

from induction_jax.files import RunDirError, write_text_atomic

DIGEST_KEY = "__digest__"


def tree_digest(tree) -> str:
    """BLAKE2b of every leaf's path, dtype, shape and bytes, in tree order (dicts by sorted key)."""
    h = hashlib.blake2b(digest_size=16)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write `arrays` to `path` (.npz) with their digest, atomically."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    buf = io.BytesIO()
    np.savez(buf, **arrays, **{DIGEST_KEY: np.array(tree_digest(arrays))})
    write_text_atomic(path, buf.getvalue())


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read and verify a file written by `save_arrays`; a damaged one raises a one-line RunDirError."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise RunDirError(f"{path}: unreadable, truncated or damaged ({type(e).__name__})") from None
    want = arrays.pop(DIGEST_KEY, None)
    if want is None:
        raise RunDirError(f"{path}: records no digest; not written by induction-jax")
    if tree_digest(arrays) != str(want):
        raise RunDirError(f"{path}: its arrays do not match their digest (the file was altered or damaged)")
    return arrays
