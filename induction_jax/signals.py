"""SIGINT / SIGTERM as a flag that the command checks at safe points, from its first line on.

Python's default SIGINT handler raises KeyboardInterrupt wherever the interpreter happens to
be, including inside callbacks whose exceptions are ignored (JAX's garbage-collection hook
printed "Exception ignored in _xla_gc_callback" and training went on). A flag set by the
handler and checked between chunks, before training starts and between analysis steps,
stops the command at a moment where it can save what it has.
"""

from __future__ import annotations

import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_caught: list[int] = []


class Interrupted(RuntimeError):
    """A signal stopped the command at a safe point; the message says what was kept."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def _handler(signum, frame) -> None:
    _caught.append(signum)


def install() -> dict:
    """Catch SIGINT and SIGTERM (the command line does this first); returns the old handlers."""
    _caught.clear()
    return {s: signal.signal(s, _handler) for s in SIGNALS}


def restore(old: dict) -> None:
    """Put back the handlers `install` replaced (tests run commands inside pytest)."""
    for s, h in old.items():
        signal.signal(s, h)


def caught() -> int | None:
    """The first signal received since `install`, or None."""
    return _caught[0] if _caught else None


def name(signum: int) -> str:
    return signal.Signals(signum).name


def check(what: str) -> None:
    """Raise `Interrupted` if a signal arrived; `what` completes 'interrupted by SIGINT ...'."""
    signum = caught()
    if signum is not None:
        raise Interrupted(f"interrupted by {name(signum)} {what}", signum)
