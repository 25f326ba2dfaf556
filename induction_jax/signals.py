"""SIGINT / SIGTERM as a flag that the command checks at safe points, from its first line on.

Python's default SIGINT handler raises KeyboardInterrupt wherever the interpreter happens to
be, including inside callbacks whose exceptions are ignored (JAX's garbage-collection hook
printed "Exception ignored in _xla_gc_callback" and training went on). A flag set by the
handler and checked between chunks, before training starts and between analysis steps,
stops the command at a moment where it can save what it has.

Long compiled calls (JIT compilation and the computation itself; a minute or more for `llc`)
would hold the flag unseen until they return, so `run` calls them in a worker thread while the
main thread checks the flag every `POLL` seconds: the command leaves within a fraction of a
second, abandoning a computation that writes nothing, and `leave` ends the process at once
instead of waiting for it.

This module imports only the standard library: the console script (`induction_jax.entry`)
installs the handlers before anything heavy is imported.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)
POLL = 0.1                       # seconds between checks while a worker computes
_caught: list[int] = []
_abandoned: list[threading.Thread] = []


class Interrupted(RuntimeError):
    """A signal stopped the command at a safe point; the message says what was kept."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum


def _handler(signum, frame) -> None:
    _caught.append(signum)


def installed() -> bool:
    """Whether SIGINT and SIGTERM are already caught here (the console script does it first)."""
    return all(signal.getsignal(s) is _handler for s in SIGNALS)


def install() -> dict:
    """Catch SIGINT and SIGTERM (the command line does this first); returns the old handlers.
    Already installed (by the console script), it changes nothing and keeps what was caught."""
    if installed():
        return {}
    _caught.clear()
    return {s: signal.signal(s, _handler) for s in SIGNALS}


def restore(old: dict) -> None:
    """Put back the handlers `install` replaced (tests run commands inside pytest), forgetting
    the signal the command acted on (a later library call in this process must not see it)."""
    for s, h in old.items():
        signal.signal(s, h)
    if old:
        _caught.clear()


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


def run(fn, *args, what: str, **kwargs):
    """`fn(*args, **kwargs)`, interruptible: `Interrupted` (completing `what`, as `check`) within
    `POLL` s of a signal, even while `fn` compiles or waits on a long device computation.

    `fn` runs in a daemon worker thread while the main thread polls the flag; on a signal the
    worker is abandoned, so `fn` must write nothing (pure computation: its result is returned,
    its exception re-raised). Where the handlers are not installed (the library called from
Python) or off the main thread (no signal reaches it), `fn` runs directly."""
    check(what)
    if not installed() or threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    out: dict = {}

    def work() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:        # re-raised in the main thread
            out["error"] = e

    worker = threading.Thread(target=work, name=f"induction-jax {getattr(fn, '__name__', 'call')}", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(POLL)
        if caught() is not None:
            if worker.is_alive():
                _abandoned.append(worker)
            check(what)
    if "error" in out:
        raise out["error"]
    return out["value"]


def abandoned() -> bool:
    """Whether an interrupted `run` left a worker computing."""
    return any(t.is_alive() for t in _abandoned)


def leave(code: int) -> int:
    """The process's exit code; where a worker was abandoned mid-computation, exit now instead:
    interpreter shutdown would wait for it (or tear JAX down under it). Output is flushed first;
    what the OS releases anyway (the run directory's flock) is left to it.

    The command's work is over here, so SIGINT and SIGTERM are ignored from now on: interpreter
    shutdown (seconds with JAX loaded) puts a handled signal back to its default disposition, and
    a signal then would kill the process (exit -2 / -15) after it had reported its own outcome."""
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    if abandoned():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    return code
