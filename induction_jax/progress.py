"""A terminal progress bar for training (steps, steps/s, model-steps/s, ETA, second-half loss)
and for the chunked analyses (`llc`, `dynamics`: chunks, s/chunk, ETA), with a ticking line while
XLA compiles or a chunk computes."""

from __future__ import annotations

import contextlib
import sys
import threading
import time


def fmt_seconds(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """Redrawn in place on a terminal at every update (about once a second); elsewhere one line
    every `log_every` seconds and at the end, so logs stay readable.

    The first call of a compiled program compiles it and trains one probe interval; rates and
    the ETA are measured from the end of that call on (the first line shows none yet)."""

    def __init__(self, total: int, start: int = 0, members: int = 1, stream=None, width: int = 28,
                 log_every: float = 10.0, metric: str | None = "loss_second_half", name: str = "train",
                 unit: str = "steps"):
        self.total, self.done, self.start, self.members = total, start, start, members
        self.metric, self.name, self.unit = metric, name, unit
        self.log_every, self.last_line = log_every, float("-inf")
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.first: tuple[float, int] | None = None
        self._lock = threading.Lock()

    def _write(self, line: str) -> None:
        with self._lock:
            self.stream.write(("\r\033[K" + line) if self.tty else line + "\n")
            self.stream.flush()

    @contextlib.contextmanager
    def _ticking(self, line, every: float):
        """`line(elapsed)` written now and every half second on a terminal (`every` s elsewhere)."""
        tic = time.perf_counter()
        stop = threading.Event()

        def tick():
            while not stop.wait(0.5 if self.tty else every):
                self._write(line(time.perf_counter() - tic))

        self._write(line(0.0))
        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield tic
        finally:
            stop.set()
            ticker.join()

    @contextlib.contextmanager
    def compiling(self, what: str):
        """Say that `what` is compiling, with the elapsed time (every half second on a terminal)."""
        with self._ticking(lambda t: f"compiling {what} ..." + (f" {t:.0f} s" if t else ""), 10.0) as tic:
            try:
                yield
            finally:
                self._write(f"compiled {what} in {time.perf_counter() - tic:.1f} s")
                if self.tty:
                    self.stream.write("\n")

    @contextlib.contextmanager
    def working(self, what: str):
        """While `what` (one chunk) computes: the bar with its elapsed time, every half second on a
        terminal and every `log_every` s in a log, so a long chunk still shows it is alive."""
        with self._ticking(lambda t: f"{self._line(self.done)} | {what} {t:.0f} s", self.log_every):
            yield

    def update(self, done: int, value: float | None = None) -> None:
        """`done` steps (or chunks); `value`: the members' mean of the task's progress metric."""
        now = time.perf_counter()
        if not self.tty and self.first is not None and now - self.last_line < self.log_every and done < self.total:
            self.done = done
            return
        self.last_line = now
        if self.first is None:
            self.first = (now, done)
        self.done = done
        self._write(self._line(done) + ("" if value is None else f" | {self.metric} {value:.3f}"))

    def _line(self, done: int) -> str:
        """The bar, the rate since the first update and the ETA."""
        rate = None
        if self.first is not None and done > self.first[1]:
            rate = (done - self.first[1]) / max(time.perf_counter() - self.first[0], 1e-9)
        if rate is None:
            speed, eta = "-- steps/s" if self.unit == "steps" else f"-- s/{self.unit.rstrip('s')}", "--:--"
        else:
            eta = fmt_seconds((self.total - done) / rate)
            if self.unit == "steps":
                speed = f"{rate:.1f} steps/s ({rate * self.members:.0f} model-steps/s)"
            else:       # chunks take seconds to minutes each: seconds per chunk reads better
                speed = f"{1 / rate:.1f} s/{self.unit.rstrip('s')}"
        filled = int(self.width * done / max(self.total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        return f"{self.name} [{bar}] {done}/{self.total} {self.unit} | {speed} | ETA {eta}"

    def close(self) -> None:
        if self.tty:
            with self._lock:
                self.stream.write("\n")
                self.stream.flush()
