"""A terminal progress bar for training: steps, steps/s, model-steps/s, ETA, second-half loss,
and a ticking 'compiling' line while XLA compiles."""

from __future__ import annotations

import contextlib
import sys
import threading
import time


def _fmt_seconds(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """Redrawn in place on a terminal at every update (about once a second); elsewhere one line
    every `log_every` seconds and at the end, so logs stay readable.

    The first call of a compiled program compiles it and trains one probe interval; rates and
    the ETA are measured from the end of that call on (the first line shows none yet)."""

    def __init__(self, total: int, start: int = 0, members: int = 1, stream=None, width: int = 28,
                 log_every: float = 10.0, metric: str = "loss_second_half"):
        self.total, self.done, self.start, self.members = total, start, start, members
        self.metric = metric
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
    def compiling(self, what: str):
        """Say that `what` is compiling, with the elapsed time (every half second on a terminal)."""
        tic = time.perf_counter()
        stop = threading.Event()

        def tick():
            while not stop.wait(0.5 if self.tty else 10.0):
                self._write(f"compiling {what} ... {time.perf_counter() - tic:.0f} s")

        self._write(f"compiling {what} ...")
        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            yield
        finally:
            stop.set()
            ticker.join()
            self._write(f"compiled {what} in {time.perf_counter() - tic:.1f} s")
            if self.tty:
                self.stream.write("\n")

    def update(self, done: int, value: float) -> None:
        """`done` steps; `value`: the members' mean of the task's progress metric."""
        now = time.perf_counter()
        if not self.tty and self.first is not None and now - self.last_line < self.log_every and done < self.total:
            self.done = done
            return
        self.last_line = now
        if self.first is None:
            self.first = (now, done)
            speed, eta = "-- steps/s", "--:--"
        else:
            rate = (done - self.first[1]) / max(now - self.first[0], 1e-9)
            speed = f"{rate:.1f} steps/s ({rate * self.members:.0f} model-steps/s)"
            eta = _fmt_seconds((self.total - done) / rate) if rate > 0 else "--:--"
        self.done = done
        filled = int(self.width * done / max(self.total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        self._write(f"train [{bar}] {done}/{self.total} steps | {speed} | ETA {eta} | "
                    f"{self.metric} {value:.3f}")

    def close(self) -> None:
        if self.tty:
            with self._lock:
                self.stream.write("\n")
                self.stream.flush()
