"""A hang guard for tests that run a whole user workflow: it stops a process that has stopped
making progress, not one that is merely slow.

A fixed wall-clock limit fails a healthy run on a loaded 2-core host (the README example took
654 s against a 600 s limit once). Progress here is any file under the watched folder being
created, grown or rewritten, or a line on the process's output: a workflow that trains writes
metrics chunk by chunk, so a healthy one never goes quiet for minutes, while a hung one does.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path

QUIET_LIMIT_S = 900.0


def _newest_change(folder: Path) -> float:
    newest = 0.0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
            except OSError:          # a file replaced while we looked
                pass
    return newest


def run_until_quiet(cmd: list[str], cwd: Path, quiet_limit_s: float = QUIET_LIMIT_S,
                    env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` to its end, killing it only if neither its files under `cwd` nor its output
    changed for `quiet_limit_s` seconds; returns the completed process (text stdout/stderr)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err, text=True, env=env)
        last_seen, last_change = (-1.0, -1, -1), time.monotonic()
        while proc.poll() is None:
            time.sleep(2.0)
            seen = (_newest_change(cwd), os.fstat(out.fileno()).st_size, os.fstat(err.fileno()).st_size)
            if seen != last_seen:
                last_seen, last_change = seen, time.monotonic()
            elif time.monotonic() - last_change > quiet_limit_s:
                proc.kill()
                proc.wait()
                raise AssertionError(f"{' '.join(cmd[:3])}...: no progress (no file written under {cwd}, no "
                                     f"output) for {quiet_limit_s:.0f} s: hung")
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
