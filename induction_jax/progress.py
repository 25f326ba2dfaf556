"""A terminal progress bar for training: steps, steps/s, ETA, mean second-half loss."""

from __future__ import annotations

import sys
import time


def _fmt_seconds(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """Redrawn in place on a terminal; one line per update otherwise (logs stay readable)."""

    def __init__(self, total: int, start: int = 0, members: int = 1, stream=None, width: int = 28):
        self.total, self.done, self.start, self.members = total, start, start, members
        self.stream = stream or sys.stderr
        self.width = width
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.t0 = time.perf_counter()
        self.first: tuple[float, int] | None = None

    def update(self, done: int, loss_second_half: float) -> None:
        now = time.perf_counter()
        if self.first is None:
            # The first chunk includes compilation: measure the rate from its end onward.
            self.first = (now, done)
            rate = (done - self.start) / max(now - self.t0, 1e-9)
        else:
            rate = (done - self.first[1]) / max(now - self.first[0], 1e-9)
        self.done = done
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        filled = int(self.width * done / max(self.total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        line = (f"train [{bar}] {done}/{self.total} steps | {rate:.1f} steps/s "
                f"({rate * self.members:.0f} model-steps/s) | ETA {_fmt_seconds(eta) if rate else '--:--'}"
                f" | loss_second_half {loss_second_half:.3f}")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
