"""Commands run as the installed console script (the real entry path) in a child whose SIGINT
disposition is reset to the default: a child started from a background shell inherits SIGINT
ignored, which would hide a missing handler. Shared by the signal and long-job tests."""

import os
import signal
import subprocess
import sys
from pathlib import Path

IJ = str(Path(sys.executable).with_name("induction-jax"))


def default_sigint():
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def launch(*args) -> subprocess.Popen:
    """`induction-jax ARGS` running, its output unbuffered and piped."""
    return subprocess.Popen([IJ, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint, env={**os.environ, "PYTHONUNBUFFERED": "1"})
