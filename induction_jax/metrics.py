"""The run's tables, written chunk by chunk and read back as columns.

metrics.csv: one row per (member, step): the member's settings (every column of its
`Members` table, task parameters included), the step, then the task's training metrics of
that step and its probes measured after it (NaN where not measured); the task names them. head_metrics.csv: one row per (member, step, layer, head, metric) of the per-head
weight probes. curve_metrics.csv: one row per (member, step, curve) of the task's curve probes
(e.g. the loss at every token index), the values across. Each chunk is appended with one `write` and an `fsync`; a write that fails (a
full disk) is rolled back to the size before the chunk, so a table only ever holds whole chunks.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np

from induction_jax.rundir import RunDirError, storage_error

# The columns every metrics.csv starts with; the members table may add task parameters
# after `arm`, and the task names the metric columns after `step`.
ID_COLUMNS = ("member", "init_seed", "data_seed", "lr", "weight_decay", "arm", "step")
_FORMATS = {"member": "%d", "init_seed": "%d", "data_seed": "%d", "step": "%d", "arm": "%s"}
TEXT_COLUMNS = ("arm",)


def member_columns(members) -> tuple[str, ...]:
    """`member`, then every column of the members table (`Members.columns`)."""
    return ("member", *members.columns())


def metric_columns(task, members) -> tuple[str, ...]:
    """metrics.csv's header: the member columns, `step`, the task's training metrics, its probes."""
    return member_columns(members) + ("step",) + task.step_metric_names() + task.probe_metric_names()


def chunk_rows(columns: tuple[str, ...], members, steps: np.ndarray, metrics: dict, probe_steps: np.ndarray,
               probes: dict, diverged_step: np.ndarray) -> np.ndarray:
    """`[rows, len(columns)]` floats for one chunk, step-major (every member's row of a step,
    then the next step), so the file's bytes do not depend on where chunks end; NaN where not
    measured. A diverged member's rows stop at the step after the one whose update diverged.
    """
    all_steps = np.union1d(steps, probe_steps).astype(int)
    E, n = len(members), len(all_steps)
    table = np.full((n, E, len(columns)), np.nan)
    table[..., 0] = np.arange(E)[None, :]
    member_cols = members.columns()
    for col, name in enumerate(columns[1:columns.index("step")], start=1):
        if name not in TEXT_COLUMNS:            # text columns are filled in by format_rows
            table[..., col] = np.asarray(member_cols[name], float)[None, :]
    table[..., columns.index("step")] = all_steps[:, None]
    for at, values in ((steps, metrics), (probe_steps, probes)):
        idx = np.searchsorted(all_steps, at)
        for name, v in values.items():
            table[idx, :, columns.index(name)] = np.asarray(v).T
    keep = (diverged_step[None, :] < 0) | (all_steps[:, None] <= diverged_step[None, :] + 1)
    return table[keep]


def format_rows(columns: tuple[str, ...], table: np.ndarray, members) -> str:
    """CSV lines of `chunk_rows`' table, each member's text settings (its arm) filled in."""
    rows = table.astype(object)
    member = table[:, 0].astype(int)
    for name in TEXT_COLUMNS:
        rows[:, columns.index(name)] = np.asarray(members.columns()[name], dtype=object)[member]
    buf = io.StringIO()
    np.savetxt(buf, rows, fmt=[_FORMATS.get(c, "%.6g") for c in columns], delimiter=",")
    return buf.getvalue()


class TableWriter:
    """Appends whole chunks of CSV lines to a file, each with a single write() system call and an
    fsync, so a killed process leaves whole rows (at worst a whole chunk missing), and a failed
    write leaves the file exactly as it was before that chunk."""

    def __init__(self, path: Path, header: tuple[str, ...], append: bool = False):
        self.path = path
        if not append:
            self._append((",".join(header) + "\n").encode(), truncate=True)

    def _append(self, data: bytes, truncate: bool = False) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
        try:
            fd = os.open(self.path, flags, 0o644)
        except OSError as e:
            raise storage_error(e, self.path) from None
        before = os.fstat(fd).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, before)     # shrinking frees space, so this works on a full disk
            except OSError:
                pass
            raise storage_error(e, self.path) from None
        finally:
            os.close(fd)

    def write(self, text: str) -> None:
        if text:
            self._append(text.encode())

    def size(self) -> int:
        return self.path.stat().st_size

    def truncate(self, n_bytes: int) -> None:
        """Drop what was written after a checkpoint (rows that the resumed run re-computes)."""
        if not self.path.is_file():
            raise RunDirError(f"{self.path}: missing; a resumed run would lack the rows up to its checkpoint. "
                              f"Restore the file or start a new run")
        if self.size() < n_bytes:
            raise RunDirError(f"{self.path}: shorter ({self.size()} bytes) than its checkpoint recorded "
                              f"({n_bytes}); the metrics were modified or lost")
        os.truncate(self.path, n_bytes)


HEAD_COLUMNS = ("member", "step", "layer", "head", "metric", "value")


def head_rows(probe_steps: np.ndarray, heads: dict[str, np.ndarray], diverged_step: np.ndarray) -> str:
    """head_metrics.csv lines for one chunk, step-major: one row per (member, step, head,
    metric). A pair score (Q/K/V composition) is a row of the later head named after the
    earlier one: `k_composition_from_L0H2`. Diverged members stop as in metrics.csv."""
    if not heads:
        return ""
    columns, names = [], []
    for name, values in heads.items():                 # [E, k, L, H] or [E, k, L, H, L, H]
        L, H = values.shape[2:4]
        for la, ha in np.ndindex(L, H):
            if values.ndim == 4:
                columns.append(values[:, :, la, ha])
                names.append(f"{la},{ha},{name}")
                continue
            for lb, hb in np.ndindex(L, H):
                if lb > la:
                    columns.append(values[:, :, la, ha, lb, hb])
                    names.append(f"{lb},{hb},{name}_from_L{la}H{ha}")
    values_EKM = np.stack(columns, -1)
    keep = (diverged_step[:, None] < 0) | (np.asarray(probe_steps)[None, :] <= diverged_step[:, None] + 1)
    lines = []
    for j, step in enumerate(np.asarray(probe_steps).tolist()):
        for e in np.flatnonzero(keep[:, j]).tolist():
            lines.extend(f"{e},{step},{n},{v:.6g}\n" for n, v in zip(names, values_EKM[e, j].tolist()))
    return "".join(lines)


CURVE_COLUMNS = ("member", "step", "metric")


def curve_header(task) -> tuple[str, ...]:
    """curve_metrics.csv's header: member, step, metric, then where each value is (the task's
    `curve_positions`, e.g. the token positions)."""
    return CURVE_COLUMNS + tuple(str(i) for i in task.curve_positions)


def curve_rows(probe_steps: np.ndarray, curves: dict[str, np.ndarray], diverged_step: np.ndarray) -> str:
    """curve_metrics.csv lines for one chunk, step-major: one row per (member, step, curve), the
    curve's values `[E, k, n]` across. Diverged members stop as in metrics.csv."""
    keep = (diverged_step[:, None] < 0) | (np.asarray(probe_steps)[None, :] <= diverged_step[:, None] + 1)
    lines = []
    for j, step in enumerate(np.asarray(probe_steps).tolist()):
        for e in np.flatnonzero(keep[:, j]).tolist():
            for name, values in curves.items():
                lines.append(f"{e},{step},{name}," + ",".join(f"{v:.6g}" for v in values[e, j].tolist()) + "\n")
    return "".join(lines)


def read_curves(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """curve_metrics.csv as `{curve: (member [R], step [R], positions [P], values [R, P])}`."""
    with open(path) as f:
        header = f.readline().rstrip("\n").split(",")
        rows = [line.rstrip("\n").split(",") for line in f if line.strip()]
    positions = np.asarray(header[len(CURVE_COLUMNS):], float)
    out = {}
    for name in dict.fromkeys(r[2] for r in rows):
        mine = [r for r in rows if r[2] == name and len(r) == len(header)]
        out[name] = (np.asarray([r[0] for r in mine], int), np.asarray([r[1] for r in mine], int), positions,
                     np.asarray([r[3:] for r in mine], float).reshape(len(mine), len(positions)))
    return out


class RunTables:
    """A run's append-only tables, written together chunk by chunk and cut back together on
    resume: metrics.csv, head_metrics.csv when the weight probes run, and curve_metrics.csv when
    the task has curve probes (`Task.curve_probe_metrics`). Sinks (`attach`: the
    trackers of `tracking.py`) get metrics.csv's rows too, `sink.write(columns, rows)`."""

    def __init__(self, run, task, members, heads: bool, append: bool = False):
        self.members, self.sinks, self.path = members, (), run.metrics_csv
        self.columns = metric_columns(task, members)
        self.writers = {"metrics": TableWriter(run.output("metrics.csv"), self.columns, append)}
        if heads:
            self.writers["head_metrics"] = TableWriter(run.output("head_metrics.csv"), HEAD_COLUMNS, append)
        self.curves = task.curve_probe_metrics
        if self.curves:
            self.writers["curve_metrics"] = TableWriter(run.output("curve_metrics.csv"), curve_header(task), append)

    def write(self, result) -> None:
        rows = chunk_rows(self.columns, self.members, result.steps, result.metrics, result.probe_steps,
                          result.probes, result.diverged_step)
        self.writers["metrics"].write(format_rows(self.columns, rows, self.members))
        for sink in self.sinks:
            sink.write(self.columns, rows)
        heads = {k: v for k, v in result.head_probes.items() if k not in self.curves}
        if "head_metrics" in self.writers:
            self.writers["head_metrics"].write(head_rows(result.probe_steps, heads, result.diverged_step))
        if "curve_metrics" in self.writers:
            curves = {k: result.head_probes[k] for k in self.curves}
            self.writers["curve_metrics"].write(curve_rows(result.probe_steps, curves, result.diverged_step))

    def sizes(self) -> dict[str, int]:
        return {name: w.size() for name, w in self.writers.items()}

    def truncate(self, sizes: dict[str, int]) -> None:
        for name, w in self.writers.items():
            w.truncate(sizes[name])

    def attach(self, sinks) -> None:
        """From now on `sinks` get every chunk; first, every row metrics.csv holds (each sink
        skips what it logged before: a resumed run's trackers catch up with the table)."""
        self.sinks = tuple(sinks)
        with open(self.path, "rb") as f:
            has_rows = bool(f.readline()) and bool(f.read(1))
        if self.sinks and has_rows:
            columns, rows = table_rows(self.path)
            for sink in self.sinks:
                sink.write(columns, rows)

    def close(self, failed: bool = False) -> None:
        for sink in self.sinks:
            sink.close(failed)


class NullTables:
    """What processes other than process 0 hold instead of the tables."""

    def write(self, result) -> None:
        pass

    def sizes(self) -> dict[str, int]:
        return {}

    def truncate(self, sizes: dict[str, int]) -> None:
        pass

    def attach(self, sinks) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


def table_rows(path: Path) -> tuple[tuple[str, ...], np.ndarray]:
    """metrics.csv as its columns (the file's own: an older run's may lack a task column) and
    its rows as floats (text columns NaN), as the tables hand them to their sinks."""
    table = read_metrics(path)
    columns = tuple(table)
    return columns, np.column_stack([np.full(len(table["step"]), np.nan) if c in TEXT_COLUMNS
                                     else table[c].astype(float) for c in columns])


def read_metrics(path: Path, warn=lambda m: print(m, file=sys.stderr)) -> dict[str, np.ndarray]:
    """metrics.csv as columns of one flat table (NaN where a metric was not measured).

    A last line that is not a whole row (a write cut off by a crash of an older version, or
    by hand) is dropped, saying so; a broken row anywhere else is refused.
    """
    import pandas as pd

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise RunDirError(f"{path}: cannot be read ({e.strerror})") from None
    header_end = data.find(b"\n")
    header = data[:header_end].decode(errors="replace").strip().split(",") if header_end >= 0 else []
    if not set(ID_COLUMNS) - set(TEXT_COLUMNS) <= set(header):
        raise RunDirError(f"{path}: not an induction-jax metrics table (columns {header}); expected "
                          f"{', '.join(ID_COLUMNS)} and the task's metrics")
    body = data[header_end + 1:]
    last_start = body.rfind(b"\n", 0, len(body) - 1) + 1
    last = body[last_start:]
    if body and (not body.endswith(b"\n") or last.count(b",") != len(header) - 1):
        warn(f"induction-jax: {path}: dropped an incomplete last line ({len(last)} bytes): a write was cut off")
        body = body[:last_start]
    try:
        frame = pd.read_csv(io.BytesIO(body), header=None, names=header,
                            dtype={c: (str if c in TEXT_COLUMNS else np.float64) for c in header},
                            na_values={c: ["nan"] for c in header if c not in TEXT_COLUMNS}, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as e:
        raise RunDirError(f"{path}: not a valid metrics table ({str(e).splitlines()[0]})") from None
    return {name: frame[name].to_numpy() for name in header}


def metric_matrix(table: dict[str, np.ndarray], name: str, n_members: int):
    """One metric as `(steps [n], values [E, n])` over the steps where it was measured.

    Members that stopped early (divergence) are NaN-padded after their last row.
    """
    member_all = table["member"]
    if len(member_all) and (np.nanmax(member_all) >= n_members or np.nanmin(member_all) < 0
                            or not np.all(member_all == np.round(member_all))):
        bad = member_all[(member_all >= n_members) | (member_all < 0) | (member_all != np.round(member_all))][0]
        raise RunDirError(f"metrics.csv: a row for member {bad:g}, but the run has members 0..{n_members - 1}")
    have = ~np.isnan(table[name])
    steps = np.unique(table["step"][have]).astype(int)
    values = np.full((n_members, len(steps)), np.nan)
    member = member_all[have].astype(int)
    values[member, np.searchsorted(steps, table["step"][have].astype(int))] = table[name][have]
    return steps, values
