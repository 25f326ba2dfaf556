"""The run directory: what a training run writes, and how it is read back.

    RUN_DIR/config.json     full config, members, package / JAX versions, device
    RUN_DIR/metrics.csv     long format, one row per (member, step)
    RUN_DIR/checkpoints/    Orbax checkpoints of the stacked ensemble state
    RUN_DIR/summary.json    per member: final losses, divergence
    RUN_DIR/plots/loss.png  first- and second-half loss against step
"""

from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from induction_jax import __version__
from induction_jax.config import ConfigError, RunConfig
from induction_jax.probes import PROBE_METRICS
from induction_jax.train import STEP_METRICS

RUN_KIND = "induction-jax run"
ID_COLUMNS = ("member", "seed", "lr", "weight_decay", "step")
METRIC_COLUMNS = ID_COLUMNS + STEP_METRICS + PROBE_METRICS
# What a run writes; --overwrite removes exactly these and nothing else of the user's.
RUN_ENTRIES = ("config.json", "metrics.csv", "summary.json", "checkpoints", "checkpoints_broken", "plots",
               "analysis", "phase", "report.html")


class RunDirError(RuntimeError):
    """A run directory that is missing, foreign, already used, or broken (one-line message)."""


@dataclass(frozen=True)
class RunDir:
    path: Path

    config_json = property(lambda self: self.path / "config.json")
    metrics_csv = property(lambda self: self.path / "metrics.csv")
    summary_json = property(lambda self: self.path / "summary.json")
    checkpoints = property(lambda self: self.path / "checkpoints")
    plots = property(lambda self: self.path / "plots")

    def is_run(self) -> bool:
        try:
            return json.loads(self.config_json.read_text()).get("kind") == RUN_KIND
        except (OSError, ValueError, AttributeError):
            return False

    def read_meta(self) -> dict:
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: no such directory; expected a run directory written by "
                              f"'induction-jax train'")
        if not self.config_json.is_file():
            raise RunDirError(f"{self.path}: not a run directory (no config.json); expected one written "
                              f"by 'induction-jax train'")
        try:
            meta = json.loads(self.config_json.read_text())
        except ValueError as e:
            raise RunDirError(f"{self.config_json}: not valid JSON ({e})") from None
        if not isinstance(meta, dict) or meta.get("kind") != RUN_KIND:
            raise RunDirError(f"{self.path}: config.json was not written by induction-jax "
                              f"(no \"kind\": \"{RUN_KIND}\")")
        return meta

    def read_config(self) -> RunConfig:
        meta = self.read_meta()
        try:
            return RunConfig.from_dict(meta["config"])
        except (ConfigError, KeyError, TypeError) as e:
            raise RunDirError(f"{self.config_json}: config cannot be read by induction-jax "
                              f"{__version__}: {e}") from None

    def members(self) -> dict[str, list]:
        return self.read_meta()["members"]

    def prepare_new(self, overwrite: bool) -> None:
        """Make the directory ready for a new run; refuse to replace a run unless asked."""
        if self.path.exists() and not self.path.is_dir():
            raise RunDirError(f"{self.path}: exists and is not a directory")
        if self.is_run() or self.metrics_csv.exists() or self.checkpoints.exists():
            if not overwrite:
                raise RunDirError(f"{self.path}: already holds a run; pass --overwrite to replace it, "
                                  f"or choose another --out")
            for name in RUN_ENTRIES:
                p = self.path / name
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def write_config(self, cfg: RunConfig, members: dict, extra: dict) -> None:
        meta = {"kind": RUN_KIND, "version": __version__, "config": cfg.to_dict(),
                "members": members, **extra}
        write_json_atomic(self.config_json, meta)


def json_safe(obj):
    """`obj` with numpy scalars as Python numbers and non-finite floats as None (JSON null)."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def write_json_atomic(path: Path, obj) -> None:
    """Write to a temporary file and rename, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)


def chunk_rows(members: dict, steps: np.ndarray, metrics: dict, probe_steps: np.ndarray,
               probes: dict, diverged_step: np.ndarray) -> np.ndarray:
    """`[rows, len(METRIC_COLUMNS)]` floats for one chunk, member-major; NaN where not measured.

    A diverged member's rows stop at the step whose loss or gradient was not finite.
    """
    all_steps = np.union1d(steps, probe_steps).astype(int)
    E, n = len(members["seed"]), len(all_steps)
    table = np.full((E, n, len(METRIC_COLUMNS)), np.nan)
    table[..., 0] = np.arange(E)[:, None]
    for col, key in ((1, "seed"), (2, "lr"), (3, "weight_decay")):
        table[..., col] = np.asarray(members[key], float)[:, None]
    table[..., 4] = all_steps[None, :]
    for names, at, values in ((STEP_METRICS, steps, metrics), (PROBE_METRICS, probe_steps, probes)):
        idx = np.searchsorted(all_steps, at)
        for name in names:
            table[:, idx, METRIC_COLUMNS.index(name)] = values[name]
    keep = (diverged_step[:, None] < 0) | (all_steps[None, :] <= diverged_step[:, None] + 1)
    return table[keep]


def format_rows(table: np.ndarray) -> str:
    buf = io.StringIO()
    fmt = ["%d", "%d", "%.6g", "%.6g", "%d"] + ["%.6g"] * (len(METRIC_COLUMNS) - len(ID_COLUMNS))
    np.savetxt(buf, table, fmt=fmt, delimiter=",")
    return buf.getvalue()


class MetricsWriter:
    """Appends whole chunks to metrics.csv, each with a single write() system call and an fsync,
    so a killed process leaves whole rows (at worst a whole chunk missing)."""

    def __init__(self, path: Path, append: bool = False):
        self.path = path
        if not append:
            self._append((",".join(METRIC_COLUMNS) + "\n").encode(), truncate=True)

    def _append(self, data: bytes, truncate: bool = False) -> None:
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else os.O_APPEND)
        fd = os.open(self.path, flags, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def write(self, table: np.ndarray) -> None:
        self._append(format_rows(table).encode())

    def size(self) -> int:
        return self.path.stat().st_size

    def truncate(self, n_bytes: int) -> None:
        """Drop what was written after a checkpoint (rows that the resumed run re-computes)."""
        if self.size() < n_bytes:
            raise RunDirError(f"{self.path}: shorter ({self.size()} bytes) than its checkpoint recorded "
                              f"({n_bytes}); the metrics were modified or lost")
        os.truncate(self.path, n_bytes)


def read_metrics(path: Path) -> dict[str, np.ndarray]:
    """metrics.csv as columns of one flat table (NaN where a metric was not measured)."""
    try:
        with open(path) as f:
            header = f.readline().strip().split(",")
        data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path}: cannot be read as a metrics table ({e})") from None
    if not set(ID_COLUMNS) <= set(header) or data.shape[1:] != (len(header),):
        raise RunDirError(f"{path}: not an induction-jax metrics table (columns {header})")
    return {name: data[:, i] for i, name in enumerate(header)}


def metric_matrix(table: dict[str, np.ndarray], name: str, n_members: int):
    """One metric as `(steps [n], values [E, n])` over the steps where it was measured.

    Members that stopped early (divergence) are NaN-padded after their last row.
    """
    have = ~np.isnan(table[name])
    steps = np.unique(table["step"][have]).astype(int)
    values = np.full((n_members, len(steps)), np.nan)
    member = table["member"][have].astype(int)
    values[member, np.searchsorted(steps, table["step"][have].astype(int))] = table[name][have]
    return steps, values
