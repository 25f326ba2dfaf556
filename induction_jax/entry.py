"""The console script `induction-jax`: SIGINT / SIGTERM are caught before anything heavy loads.

Importing the command line loads numpy (and a command then JAX), which takes seconds on a busy
machine; a signal in that time would get Python's default behaviour (a KeyboardInterrupt
traceback, or death by SIGTERM). `main` therefore installs the handlers first (`signals`
imports only the standard library) and only then imports `induction_jax.cli`, which reports
a signal that came before the command started its work as one line, exit 128 + signum.
"""

import sys

from induction_jax import signals     # the standard library only


def main() -> int:
    signals.install()                         # first: from here on a signal is a flag, never a traceback

    from induction_jax.cli import main as cli_main
    return signals.leave(cli_main(sys.argv[1:]))
