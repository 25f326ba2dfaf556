"""The run's metrics also where researchers already look: TensorBoard and Weights & Biases.

Optional and off by default (`--log none`). `--log tensorboard`, `--log wandb` or
`--log tensorboard+wandb` send every value of metrics.csv (the task's training metrics and
probes, every member, every step it was measured at) to a tracker as it is written; the files
live in the run directory (`RUN_DIR/tensorboard/`, `RUN_DIR/wandb/`). `--log-group ensemble`:
one TensorBoard run / W&B run for the whole ensemble, scalars named `member<i>/<metric>`, the
config and the members table as its hyperparameters; `--log-group member`: one run per
member (`member<i>`), scalars named `<metric>`, the config and that member's row of the
members table as its hyperparameters. `<i>` is the member's id in the sweep, also in a slice of
it (`--shard`), so slices never log two members under one name; `merge` logs the merged run's
metrics.csv afresh into the merged run's own tracker folders, as one run of the whole ensemble.

Each tracker is a sink of `metrics.RunTables`: it gets the rows of every chunk metrics.csv gets.
Resumed runs never log a point twice: on opening, a tracker reads back what its earlier files
hold (with the tracker's own reader) and from then on writes a value only at a step past the
last one its tag holds; the rows of metrics.csv it lacks (a tracker switched on at the resume,
or events lost in a kill) are written first, from the table. W&B runs are offline unless the
user set `WANDB_MODE`; a resumed offline run is a second offline-run folder with the same run id
and only the later steps (`wandb sync --append` uploads it after the first).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np

from induction_jax import shards
from induction_jax.config import ConfigError
from induction_jax.files import RunDirError, write_text_atomic

PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def backends(log: str) -> list[str]:
    """The trackers a `--log` value names."""
    return [] if log == "none" else log.split("+")


def check_available(log: str) -> None:
    """A tracker whose package is not installed is a one-line error before anything is written."""
    for name in backends(log):
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ConfigError(f"--log {log}: needs the {PACKAGES[name]} package, which is not installed "
                              f"(pip install 'induction-jax[track]')")


def _scalar(v):
    """A hyperparameter value TensorBoard's hparams accept: bool, int, float or str."""
    v = v.item() if isinstance(v, np.generic) else v
    return v if isinstance(v, (bool, int, float, str)) else json.dumps(v)


def hyperparameters(config: dict, members, member: int | None = None, first: int = 0) -> dict:
    """Flat `section.field` of the config, with member `member`'s row of the members table
    (`member`: its id in the sweep; `first`: the sweep's id of the table's row 0, in a slice)."""
    flat = {f"{section}.{k}": _scalar(v) for section, fields in config.items() for k, v in fields.items()}
    if member is not None:
        flat |= {"member": member, **{k: _scalar(v[member - first]) for k, v in members.table().items()}}
    return flat


def points(columns: tuple[str, ...], rows: np.ndarray) -> Iterator[tuple[int, int, dict[str, float]]]:
    """(step, member, {metric: value}) of metrics.csv rows (in their step-major order), with the
    finite values of the columns after `step` (NaN: not measured at that step)."""
    at = columns.index("step")
    names = columns[at + 1:]
    for row in rows:
        values = {n: float(v) for n, v in zip(names, row[at + 1:]) if np.isfinite(v)}
        if values:
            yield int(row[at]), int(row[0]), values


class Tracker:
    """One interface, one subclass per backend: `write(columns, rows)` the rows of metrics.csv,
    `close(failed)`. A stream is what the backend calls a run (the ensemble, or one member);
    `_logged` reads back what a stream's earlier files hold, `_emit` writes one step of it."""

    def __init__(self, cfg, run, members):
        self.config, self.members, self.run = cfg.to_dict(), members, run
        self.by_member = cfg.track.log_group == "member"
        # Members are named by their id in the sweep: a slice (--shard) of it starts at its `first`.
        self.first = (shards.read(run) or {}).get("first", 0)
        self.streams = ([f"member{self.first + i}" for i in range(len(members))] if self.by_member
                        else ["ensemble"])
        self.marks = {s: self._logged(s) for s in self.streams}    # stream -> tag -> last step logged
        for stream in self.streams:
            self._open(stream, fresh=not self.marks[stream])

    def hyperparameters(self, stream: str) -> dict:
        return hyperparameters(self.config, self.members, int(stream[6:]) if self.by_member else None, self.first)

    def write(self, columns: tuple[str, ...], rows: np.ndarray) -> None:
        pending: dict[str, dict] = {}       # stream -> tag -> value, of the current step
        step = None
        for s, member, values in points(columns, rows):
            member += self.first
            if s != step:
                self._flush_step(step, pending)
                step, pending = s, {}
            stream = f"member{member}" if self.by_member else "ensemble"
            marks = self.marks[stream]
            tags = {(k if self.by_member else f"member{member}/{k}"): v for k, v in values.items()}
            tags = {k: v for k, v in tags.items() if marks.get(k, -1) < s}
            pending.setdefault(stream, {}).update(tags)
        self._flush_step(step, pending)
        self._flush()

    def _flush_step(self, step, pending: dict) -> None:
        for stream, tags in pending.items():
            if tags:
                self._emit(stream, step, tags)
                self.marks[stream].update(dict.fromkeys(tags, step))

    def _logged(self, stream: str) -> dict[str, int]:
        raise NotImplementedError

    def _open(self, stream: str, fresh: bool) -> None:
        raise NotImplementedError

    def _emit(self, stream: str, step: int, tags: dict[str, float]) -> None:
        raise NotImplementedError

    def _flush(self) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        raise NotImplementedError


class TensorBoard(Tracker):
    """Event files in RUN_DIR/tensorboard/<stream>/ (a run of TensorBoard each), written with
    TensorBoard's own writer (no TensorFlow); a new event file per session, flushed every chunk."""

    def __init__(self, cfg, run, members):
        self.root = run.owned_dir("tensorboard")
        self.writers = {}
        super().__init__(cfg, run, members)

    def _logged(self, stream: str) -> dict[str, int]:
        from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader

        marks: dict[str, int] = {}
        for path in sorted(glob.glob(str(self.root / stream / "events.out.tfevents.*"))):
            for event in LegacyEventFileLoader(path).Load():     # stops at a record cut off by a kill
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        marks[value.tag] = max(marks.get(value.tag, -1), event.step)
        return marks

    def _open(self, stream: str, fresh: bool) -> None:
        from tensorboard.plugins.hparams import summary_v2 as hp
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writers[stream] = EventFileWriter(str(self.root / stream), max_queue_size=1000, flush_secs=60)
        if fresh:
            self._event(stream, 0, hp.hparams_pb(self.hyperparameters(stream), trial_id=f"{self.run.path.name}/{stream}"))
            if not self.by_member:
                self._event(stream, 0, _text_summary("members", _markdown_table(self.members.table())))

    def _event(self, stream: str, step: int, summary) -> None:
        from tensorboard.compat.proto import event_pb2

        self.writers[stream].add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _emit(self, stream: str, step: int, tags: dict[str, float]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._event(stream, step, Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in tags.items()]))

    def _flush(self) -> None:
        for w in self.writers.values():
            w.flush()

    def close(self, failed: bool = False) -> None:
        for w in self.writers.values():
            w.close()


def _text_summary(tag: str, text: str):
    """A summary for TensorBoard's text plugin (its own `text.summary.pb` needs TensorFlow)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.text import metadata
    from tensorboard.util import tensor_util

    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(tag, ""),
                                        tensor=tensor_util.make_tensor_proto(np.array(text.encode())))])


def _markdown_table(table: dict[str, list]) -> str:
    names = list(table)
    lines = ["| member | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {i} | " + " | ".join(str(table[n][i]) for n in names) + " |" for i in range(len(table[names[0]]))]
    return "\n".join(lines)


def wandb_records(path) -> Iterator[dict]:
    """The records of a .wandb file, read by wandb's own reader (`wandb leet inspect --json`)."""
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(path)],
                         capture_output=True, text=True, check=False)
    if out.returncode:
        raise RunDirError(f"{path}: wandb cannot read it ({(out.stderr.strip().splitlines() or ['?'])[-1]})")
    for line in out.stdout.splitlines():
        if line.strip():
            yield json.loads(line)


class WandB(Tracker):
    """W&B runs in RUN_DIR/wandb/ (offline unless WANDB_MODE says otherwise), grouped under the
    run directory's name; run ids `<id>` (ensemble) or `<id>-member<i>`, where `<id>` is drawn
    once and kept in RUN_DIR/wandb/run_id, so a resumed run continues the same W&B runs."""

    def __init__(self, cfg, run, members):
        import wandb

        self.wandb = wandb
        self.root = run.owned_dir("wandb")
        id_file = self.root / "run_id"
        if not id_file.is_file():
            self.root.mkdir(exist_ok=True)
            write_text_atomic(id_file, secrets.token_hex(4) + "\n")
        self.base_id = id_file.read_text().strip()
        self.runs = {}
        super().__init__(cfg, run, members)

    def _id(self, stream: str) -> str:
        return self.base_id if stream == "ensemble" else f"{self.base_id}-{stream}"

    def _logged(self, stream: str) -> dict[str, int]:
        marks: dict[str, int] = {}
        for path in sorted(glob.glob(str(self.root / f"*run-*-{self._id(stream)}" / "*.wandb"))):
            for record in wandb_records(path):
                if record.get("type") == "history":
                    step = int(record["history"]["step"]["num"])
                    for tag in record["history"]["item"]:
                        if not tag.startswith("_"):
                            marks[tag] = max(marks.get(tag, -1), step)
        return marks

    def _open(self, stream: str, fresh: bool) -> None:
        config = dict(self.config)
        if self.by_member:
            config["member"] = {k: v for k, v in self.hyperparameters(stream).items() if "." not in k}
        else:
            config["members"] = self.members.table()
        name = self.run.path.resolve().name
        self.runs[stream] = self.wandb.init(
            dir=str(self.run.path), id=self._id(stream), resume="allow", reinit="create_new", config=config,
            group=name, name=name if stream == "ensemble" else f"{name}/{stream}",
            project=None if os.environ.get("WANDB_PROJECT") else "induction-jax",
            mode=None if os.environ.get("WANDB_MODE") else "offline",
            settings=self.wandb.Settings(silent=True, console="off", x_disable_stats=True))

    def _emit(self, stream: str, step: int, tags: dict[str, float]) -> None:
        self.runs[stream].log(tags, step=step)

    def close(self, failed: bool = False) -> None:
        for r in self.runs.values():
            r.finish(exit_code=1 if failed else 0)
        self.runs = {}
        if self.wandb.run is None:      # no run of the user's own is open: stop wandb's service process
            self.wandb.teardown()


BACKENDS = {"tensorboard": TensorBoard, "wandb": WandB}


def log_table(cfg, run, members) -> None:
    """Every row of `run`'s metrics.csv to the trackers `cfg.track.log` names (those it holds
    already skipped), then closed: what a merge gives its merged run."""
    from induction_jax.metrics import table_rows

    trackers = open_trackers(cfg, run, members)
    failed = True
    try:
        columns, rows = table_rows(run.path / "metrics.csv")
        for t in trackers:
            t.write(columns, rows)
        failed = False
    finally:
        for t in trackers:
            t.close(failed)


def open_trackers(cfg, run, members) -> list[Tracker]:
    """The trackers `cfg.track.log` names, open on `run` (a RunDir) and caught up with what they hold."""
    opened = []
    try:
        for name in backends(cfg.track.log):
            opened.append(BACKENDS[name](cfg, run, members))
    except BaseException:
        for t in opened:
            t.close(failed=True)
        raise
    return opened
