"""Real small filesystems for the fault tests (a full disk, a read-only mount)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    """A real tmpfs at `path` mounted with `options` (e.g. "size=400k", "ro") where root may
    mount one; yields None where it cannot be made (the test then skips or injects the error)."""
    path.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0 if os.geteuid() == 0 else False
    try:
        yield path if made else None
    finally:
        if made:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
