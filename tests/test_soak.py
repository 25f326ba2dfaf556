"""Soak and fault campaign: randomised sequences of commands with faults, invariants after each.

Every sequence is drawn from `random.Random(seed)` for a fixed seed (one test per seed, so a
failure names its seed): a short list of operations on a copy of a small reference run cut
back to one of its checkpoints, or on a fresh run. The operations drive the command line in
real processes: train / resume / --overwrite interrupted by SIGINT or SIGTERM at a random
moment; truncated or flipped bytes in a checkpoint, a snapshot or metrics.csv's last line,
then a command that reads it; a second command while a first one writes; a full disk (a real
small tmpfs where this machine lets root mount one, else an injected ENOSPC); exports to
random --out targets, the run's own files among them; analyze / phase / dynamics / llc / sweep,
some of them interrupted. After every operation:

- the exit code is one of 0, 2, 3, 4, 130, 143; a non-zero one ends stderr with one line that
  starts "induction-jax", and no stderr holds a traceback;
- the run directory opens (`induction_jax.open_run`) once it has a config.json;
- metrics.csv and head_metrics.csv hold whole rows only (every line has the header's number of
  fields, the file ends with a newline), unless this campaign itself just damaged them;
- every file in the run directory is listed in its manifest (or lies in a folder the project
  owns whole); the user's files planted in and next to it are byte-identical; nothing else
  appears next to it;
- commands that only read the training record (analyze, phase, dynamics, llc, export) and
  every refusal (exit 2) leave config.json, the tables, summary.json, the snapshots and the
  checkpoints' bytes as they were (a damaged checkpoint may be moved aside, not altered).

At the end of each sequence the run is completed as a user would (`train --resume`, or
`--overwrite` where the tool said to start again) and must equal the uninterrupted reference
run bitwise: metrics.csv, head_metrics.csv, the final parameters and every snapshot.

The operations and their random draws are fixed by the seed; when a signal lands (start-up,
compilation, training) depends on the machine's speed, and each sequence prints its plan and
what happened (`pytest tests/test_soak.py -s`). More seeds: SOAK_SEEDS=0-39. The module prints
the number of sequences, operations and faults it covered, by kind, when it finishes.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.soak

STEPS = 200
CKPT_EVERY = 50
FLAGS = ["--seeds", "2", "--steps", str(STEPS), "--d-vocab", "16", "--half-length", "8", "--n-ctx", "16",
         "--d-model", "32", "--n-heads", "2", "--batch-size", "16", "--probe-batch-size", "8", "--eval-every", "10",
         "--chunk-steps", "50", "--checkpoint-every", str(CKPT_EVERY), "--keep-checkpoints", "10",
         "--snapshots", "every:50", "--no-progress", "--no-analysis"]
# A different, smaller ensemble for the sweep operation (its own run directory).
SWEEP_FLAGS = ["--seeds", "1", "--steps", "30", "--lr", "0.01,0.003", "--d-vocab", "16", "--half-length", "8",
               "--n-ctx", "16", "--d-model", "32", "--n-heads", "2", "--batch-size", "16", "--probe-batch-size", "8",
               "--eval-every", "10", "--chunk-steps", "10", "--checkpoint-every", "10", "--no-progress"]
LLC_FLAGS = ["--draws", "20", "--burn-in", "5", "--chains", "1", "--n", "64"]

EXIT_CODES = {0, 2, 3, 4, 130, 143}
TABLES = ("metrics.csv", "head_metrics.csv")
TRAINING_RECORD = ("config.json", "metrics.csv", "head_metrics.csv", "summary.json")
TIMEOUT = 300

OPS = ("signal", "corrupt_checkpoint", "corrupt_snapshot", "corrupt_metrics", "concurrent", "disk_full",
       "export", "reader", "sweep")
OP_WEIGHTS = (3, 2, 1.5, 1.5, 1.5, 1.5, 2, 1.5, 0.5)
READERS = ("analyze", "dynamics", "llc", "phase")
EXPORT_TARGETS = ("default", "outside-new", "outside-existing", "run-file", "run-snapshot", "run-checkpoint",
                  "run-dir", "run-new", "run-user", "run-exports")
RUN_FILES = ("metrics.csv", "config.json", "head_metrics.csv", ".induction-jax-manifest", "summary.json")
SECOND_COMMANDS = ("resume", "overwrite", "analyze", "phase", "dynamics", "llc", "export")
OPS_PER_SEQUENCE = 3


def _seeds() -> list[int]:
    spec = os.environ.get("SOAK_SEEDS", "0-5")
    lo, _, hi = spec.partition("-")
    return list(range(int(lo), int(hi or lo) + 1))


SEEDS = _seeds()


# ---- the plan: a pure function of the seed ------------------------------------------------------

def plan(seed: int) -> dict:
    """The start and the operations of sequence `seed`, each with its random draws. Over seeds
    0..5 every operation kind and every reader command appears: seed i features kinds i and
    i + 6, with fixed choices. A whole analyze or phase takes most of a minute on a 2-core CI
    machine, so they run interrupted (analyze) or as the refused second writer (phase)."""
    rng = random.Random(seed)
    start = rng.choice(["fresh", "copy"])
    cut = rng.choice([0, 50, 100, 150])
    featured = [OPS[i] for i in (seed % 6, seed % 6 + 6) if i < len(OPS)]
    kinds = featured + rng.choices(OPS, OP_WEIGHTS, k=OPS_PER_SEQUENCE - len(featured))
    rng.shuffle(kinds)
    if start == "fresh":                # a fresh run begins with a command that creates it
        writers = [k for k in kinds if k in ("signal", "concurrent", "disk_full")]
        first = writers[0] if writers else "signal"
        if first in kinds:
            kinds.remove(first)
        elif any(k not in featured for k in kinds):
            kinds.remove(next(k for k in reversed(kinds) if k not in featured))
        kinds.insert(0, first)
    ops, pending = [], list(featured)
    for kind in kinds:
        star = kind in pending            # the first op of a featured kind gets the featured choices
        if star:
            pending.remove(kind)
        op = {"kind": kind,
              "signal": rng.choice(["SIGINT", "SIGTERM"]),
              # a quarter of the signals land in start-up (imports, planning); the rest a random moment
              # after a writer's first new rows (compilation, training, checkpointing) or into a reader's work
              "moment": "startup" if rng.random() < 0.25 else "work",
              "delay": round(rng.uniform(0.25, 1.5), 2),
              "late": round(rng.uniform(0.0, 2.0), 2),
              "reader_delay": round(rng.uniform(1.5, 6.0), 2),
              "overwrite": rng.random() < 0.2,
              "damage": rng.choice(["truncate", "flip"]),
              "at": round(rng.uniform(0.1, 0.8), 3),
              "which": rng.random(),
              "margin_kib": rng.choice([8, 32, 96, 256]),
              "enospc_after": rng.randint(1, 4),
              "reader": rng.choice(("analyze", "dynamics", "llc")),
              "second": rng.choice([c for c in SECOND_COMMANDS if c != "phase"]),
              "target": rng.choice(EXPORT_TARGETS),
              "format": rng.choice(["npz", "npz", "safetensors"]),
              "run_file": rng.choice(RUN_FILES),
              "then": {"corrupt_checkpoint": "export", "corrupt_snapshot": rng.choice(["llc", "dynamics"]),
                       "corrupt_metrics": "resume"}.get(kind)}
        if star:     # what seeds 0..5 cover between them: every reader, phase once
            op.update({"reader": ("analyze", "dynamics", "llc", "phase")[seed % 4],
                       "second": "phase" if seed % 6 == 4 else SECOND_COMMANDS[seed % len(SECOND_COMMANDS)],
                       "then": {"corrupt_checkpoint": "export", "corrupt_snapshot": "llc",
                                "corrupt_metrics": "resume"}.get(kind)})
        if op["reader"] == "phase" and kind == "reader" and not star:
            op["reader"] = "analyze"
        if start == "fresh" and not ops:
            op["moment"] = "work"          # the run is to exist after its first command
        ops.append(op)
    return {"seed": seed, "start": start, "cut": cut, "ops": ops}


# ---- the campaign's record ---------------------------------------------------------------------

COVERED = {"sequences": 0, "operations": 0, "faults": collections.Counter(), "outcomes": collections.Counter(),
           "commands": collections.Counter()}


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    t0 = time.time()
    yield
    c = COVERED
    lines = [f"soak campaign: {c['sequences']} sequences (seeds {SEEDS[0]}-{SEEDS[-1]}), {c['operations']} operations, "
             f"{sum(c['faults'].values())} faults in {time.time() - t0:.0f} s",
             "  faults: " + ", ".join(f"{k} {v}" for k, v in sorted(c["faults"].items())),
             "  commands: " + ", ".join(f"{k} {v}" for k, v in sorted(c["commands"].items())),
             "  outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(c["outcomes"].items()))]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines))
    out = os.environ.get("SOAK_SUMMARY")
    if out:
        Path(out).write_text(json.dumps({k: dict(v) if isinstance(v, collections.Counter) else v
                                         for k, v in c.items()}, indent=2) + "\n")


# ---- helpers --------------------------------------------------------------------------------------

def _spawn(cmd: list[str], **kw) -> subprocess.Popen:
    """Start `cmd` with SIGINT at its default disposition. exec resets a handled signal to its
    default and keeps only an ignored one (as CI shells leave SIGINT for background jobs), so where
    this process ignores SIGINT, Python's own handler is put in place around the start. This does
    what `preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)` does without running
    Python between fork and exec in a process that holds JAX's threads (which warns, and can
    deadlock)."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(cmd, **kw)
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _cli(*args) -> list[str]:
    return [sys.executable, "-m", "induction_jax.cli", *args]


ENOSPC_SHIM = r"""
import errno, os, sys
from induction_jax import metrics
after, seen = int(os.environ["SOAK_ENOSPC_AFTER"]), []
class FullDisk:
    def __getattr__(self, name):
        return getattr(os, name)
    def write(self, fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".csv"):
            seen.append(len(data))
            if len(seen) >= after:
                os.write(fd, bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)
metrics.os = FullDisk()
from induction_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest_tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): _sha(p) for p in sorted(path.rglob("*")) if p.is_file()} if path.is_dir() else {}


def _ckpt_steps(run: Path) -> list[int]:
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / "commit_success.txt").exists())


def _training_record(run: Path) -> dict:
    """What readers must leave alone: the run's config, tables, summary, snapshots and the
    checkpoints' bytes (as a multiset over checkpoints/ and checkpoints_broken/, so that moving a
    damaged checkpoint aside is allowed and altering one is not)."""
    record = {name: _sha(run / name) for name in TRAINING_RECORD if (run / name).is_file()}
    record["snapshots"] = _digest_tree(run / "snapshots")
    ckpts = []
    for folder in ("checkpoints", "checkpoints_broken"):
        for rel, sha in _digest_tree(run / folder).items():
            step, _, inner = rel.partition("/")
            ckpts.append((step.split(".")[0], inner, sha))
    record["checkpoints"] = sorted(ckpts)
    return record


def _manifest(run: Path) -> list[str]:
    try:
        return [line for line in (run / ".induction-jax-manifest").read_text().splitlines() if line]
    except FileNotFoundError:
        return []


def _table_problem(path: Path) -> str | None:
    data = path.read_bytes()
    if not data:
        return None
    if not data.endswith(b"\n"):
        return f"{path.name} does not end with a newline (last line {data.splitlines()[-1][:80]!r})"
    lines = data.decode(errors="replace").splitlines()
    width = lines[0].count(",")
    bad = [(i + 1, line) for i, line in enumerate(lines) if line.count(",") != width]
    if bad:
        return f"{path.name}: line {bad[0][0]} has {bad[0][1].count(',') + 1} fields, the header {width + 1}: {bad[0][1][:80]!r}"
    return None


def _lock_held_by(path: Path, pid: int) -> bool:
    try:
        st = os.stat(path)
        key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and key in fields and fields[fields.index(key) - 1] == str(pid):
                return True
    except OSError:
        pass
    return False


def _damage(path: Path, how: str, at: float, n: int = 64) -> str:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        cut = int(len(data) * at)
        path.write_bytes(bytes(data[:cut]))
        return f"truncated {path.name} from {len(data)} to {cut} bytes"
    start = int(len(data) * at)
    for i in range(start, min(start + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    return f"flipped {min(n, len(data) - start)} bytes of {path.name} at {start}"


class _Filesystem:
    """The sequence's folder: a real tmpfs where root may mount one (a full disk is then a real
    one: `shrink` leaves `margin` bytes free), else a plain folder (the full disk is injected)."""

    BIG = "64m"

    def __init__(self, path: Path):
        self.path = path
        path.mkdir()
        self.mounted = os.geteuid() == 0 and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.BIG}", "tmpfs", str(path)], capture_output=True).returncode == 0

    def shrink(self, margin: int) -> None:
        st = os.statvfs(self.path)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        subprocess.run(["mount", "-o", f"remount,size={used + margin}", str(self.path)], check=True,
                       capture_output=True)

    def grow(self) -> None:
        subprocess.run(["mount", "-o", f"remount,size={self.BIG}", str(self.path)], check=True, capture_output=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


# ---- the reference --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def soak_reference(tmp_path_factory):
    """One uninterrupted run, its final parameters and its snapshots."""
    from induction_jax.analysis.weights import load_run_params
    from induction_jax.arrays import load_arrays

    run = tmp_path_factory.mktemp("soak-ref") / "run"
    proc = _spawn(_cli("train", *FLAGS, "--out", str(run)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err
    snaps = {p.name: load_arrays(p) for p in sorted((run / "snapshots").glob("*.npz"))}
    return {"path": run, "params": load_run_params(run), "snapshots": snaps,
            "tables": {name: (run / name).read_bytes() for name in TABLES}}


# ---- one sequence -------------------------------------------------------------------------------

class Sequence:
    def __init__(self, seed: int, base: Path, reference: dict):
        self.seed, self.ref = seed, reference
        self.plan = plan(seed)
        self.fs = _Filesystem(base / "fs")
        self.base = self.fs.path
        self.run = self.base / "run"
        self.outside = self.base / "out"
        self.sweep = self.base / "sweep"
        self.neighbour = self.base / "neighbour.txt"
        self.planted: dict[str, bytes] = {}
        self.exported: set[Path] = set()            # export targets outside the run that a command wrote
        self.damaged_tables: set[str] = set()
        self.restart = False                        # the tool said: start again with --overwrite
        self.failures: list[str] = []
        self.log: list[str] = []

    # -- bookkeeping
    def note(self, text: str) -> None:
        self.log.append(text)
        print(f"[seed {self.seed}] {text}")

    def fail(self, what: str, cmd=None, result=None) -> None:
        text = f"seed {self.seed}: {what}"
        if cmd is not None:
            text += f"\n    command: {' '.join(map(str, cmd))}"
        if result is not None:
            text += f"\n    exit code: {result[0]}\n    stderr: {result[2].strip()[-3000:]!r}"
        self.failures.append(text)
        print("FAILURE " + text)

    def fault(self, kind: str) -> None:
        COVERED["faults"][kind] += 1

    # -- the run's state
    def is_run(self) -> bool:
        return (self.run / "config.json").is_file()

    def finished(self) -> bool:
        return STEPS in _ckpt_steps(self.run)

    def table_bytes(self, step: int) -> dict:
        meta = json.loads((self.run / "checkpoints" / str(step) / "meta" / "metadata").read_text())
        return meta["table_bytes"]

    # -- running commands
    def popen(self, args: list[str], env: dict | None = None, shim: bool = False):
        cmd = [sys.executable, "-c", ENOSPC_SHIM, *args] if shim else _cli(*args)
        COVERED["commands"][args[0] + (" --resume" if "--resume" in args else "")
                            + (" --overwrite" if "--overwrite" in args else "")] += 1
        proc = _spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                      env={**os.environ, **(env or {})})
        proc.cmd = cmd
        return proc

    def finish(self, proc) -> tuple[int, str, str]:
        try:
            out, err = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            self.fail(f"timed out after {TIMEOUT} s", proc.cmd, (proc.returncode, out, err))
        return proc.returncode, out, err

    def call(self, args: list[str], sig: str | None = None, delay: float = 0.0, when=None,
             **kw) -> tuple[int, str, str]:
        """Run a command; with `sig`, send it `delay` s after the start, or after `when()` first holds."""
        t0 = time.time()
        proc = self.popen(args, **kw)
        sent = ""
        if sig:
            while when is not None and proc.poll() is None and not when() and time.time() < t0 + TIMEOUT:
                time.sleep(0.01)
            deadline = time.time() + delay
            while time.time() < deadline and proc.poll() is None:
                time.sleep(0.01)
            if proc.poll() is None:
                proc.send_signal(getattr(signal, sig))
                sent = f"  [{sig} at {time.time() - t0:.2f} s]"
                COVERED["faults"][f"signal {sig} ({args[0]})"] += 1
            else:
                sent = f"  [ended before {sig}]"
        result = self.finish(proc)
        self.note(f"$ {' '.join(args)}{sent} -> exit {result[0]} in {time.time() - t0:.1f} s; "
                  f"{(result[2].strip().splitlines() or [''])[-1][:200]}")
        return result

    def signal_writer(self, args: list[str], op) -> tuple[int, str, str]:
        """A writer, signalled in start-up or at a random moment after its first new rows."""
        if op["moment"] == "startup":
            return self.call(args, sig=op["signal"], delay=op["delay"])
        metrics = self.run / "metrics.csv"
        size = metrics.stat().st_size if metrics.is_file() else -1

        def wrote() -> bool:
            try:
                now = metrics.stat().st_size
            except OSError:
                return False
            return now != size and now > 0
        return self.call(args, sig=op["signal"], delay=op["late"], when=wrote)

    def writer_args(self, overwrite: bool = False) -> list[str]:
        """What a user runs next: a new run, a resume, or --overwrite where the tool said so."""
        if not self.is_run() and not (self.run / ".induction-jax-manifest").exists():
            return ["train", *FLAGS, "--out", str(self.run)]
        if overwrite or self.restart or not _ckpt_steps(self.run):
            return ["train", *FLAGS, "--out", str(self.run), "--overwrite"]
        return ["train", "--resume", str(self.run), "--no-analysis", "--no-progress"]

    # -- invariants
    def check(self, cmd, result, reads_only: bool = False, before: dict | None = None, sig: str | None = None,
              allowed_outside: tuple[Path, ...] = ()) -> None:
        code, out, err = result
        if code not in EXIT_CODES:
            self.fail(f"exit code {code} is not one of {sorted(EXIT_CODES)}", cmd, result)
        for noise in ("Traceback", "Exception ignored"):
            if noise in err:
                self.fail(f"stderr holds a {noise!r}", cmd, result)
        lines = [line for line in err.splitlines() if line.strip()]
        if code != 0 and (not lines or not lines[-1].startswith("induction-jax")):
            self.fail("a failing command did not end with a one-line 'induction-jax ...' message", cmd, result)
        if code in (130, 143):
            if "interrupted by" not in (lines or [""])[-1]:
                self.fail(f"exit {code} without an 'interrupted by' line", cmd, result)
            if sig and code != 128 + getattr(signal, sig):
                self.fail(f"exit {code} after {sig}", cmd, result)
        if "Resume with" in err or "holds only its config" in err or "no usable checkpoint" in err:
            self.restart = "start again with --overwrite" in err
        if code == 0 and cmd and cmd[0] == "train":
            self.restart = False
        self.check_directory(cmd, result, allowed_outside)
        if before is not None and (reads_only or code == 2):
            after = _training_record(self.run)
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            if changed:
                self.fail(f"{'a read-only command' if reads_only else 'a refused command'} changed the training "
                          f"record: {', '.join(changed)}", cmd, result)

    def check_directory(self, cmd=None, result=None, allowed_outside: tuple[Path, ...] = ()) -> None:
        run = self.run
        # the user's files, in and next to the run
        for rel, data in self.planted.items():
            path = self.base / rel
            if not path.is_file() or path.read_bytes() != data:
                self.fail(f"the user's file {rel} was {'changed' if path.is_file() else 'removed'}", cmd, result)
        # nothing new next to the run but what a command was asked to write there
        expected = {"run", "out", "sweep", "neighbour.txt", "lost+found"}
        extra = sorted(p.name for p in self.base.iterdir() if p.name not in expected)
        if extra:
            self.fail(f"files appeared next to the run directory: {extra}", cmd, result)
        for p in self.outside.rglob("*") if self.outside.is_dir() else []:
            if p.is_file() and p not in self.exported and p not in allowed_outside:
                self.fail(f"{p} was written outside the run directory, not where asked", cmd, result)
        if not run.is_dir():
            return
        # it opens
        if self.is_run():
            try:
                import induction_jax
                induction_jax.open_run(run)
            except Exception as e:  # noqa: BLE001 - any failure to open is the finding
                self.fail(f"the run directory does not open: {type(e).__name__}: {e}", cmd, result)
        # whole rows
        for name in TABLES:
            if (run / name).is_file() and name not in self.damaged_tables:
                problem = _table_problem(run / name)
                if problem:
                    self.fail(f"a table holds a part row: {problem}", cmd, result)
        # every file is the project's (in the manifest) or the user's
        entries = _manifest(run)
        files, folders = set(entries), tuple(e for e in entries if e.endswith("/"))
        planted = {rel.split("/", 1)[1] for rel in self.planted if rel.startswith("run/")}
        stray = sorted(rel for rel in (str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() or p.is_symlink())
                       if rel != ".induction-jax-manifest" and rel not in files and rel not in planted
                       and not rel.startswith(folders))
        if stray:
            self.fail(f"files in the run directory that its manifest does not list: {stray[:6]}", cmd, result)

    # -- the start
    def setup(self) -> None:
        self.outside.mkdir()
        self.neighbour.write_text("the user's own notes, next to the run\n")
        self.planted["neighbour.txt"] = self.neighbour.read_bytes()
        p = self.plan
        if p["start"] == "copy":
            shutil.copytree(self.ref["path"], self.run)
            cut = p["cut"]
            for step in _ckpt_steps(self.run):
                if step > cut:
                    shutil.rmtree(self.run / "checkpoints" / str(step))
            (self.run / "summary.json").unlink()
            self.note(f"start: a copy of the reference killed after checkpoint {cut} (rows and snapshots past it kept)")
            user = {"run/notes.txt": b"my notes\n", "run/plots/my_figure.png": b"\x89PNG mine"}
        else:
            self.run.mkdir()
            self.note("start: a fresh run directory")
            user = {"run/notes.txt": b"my notes\n"}
        for rel, data in user.items():
            (self.base / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.base / rel).write_bytes(data)
        self.planted.update(user)
        self.check_directory()

    # -- operations
    def op_signal(self, op) -> None:
        args = self.writer_args(op["overwrite"] and self.is_run())
        result = self.signal_writer(args, op)
        if result[0] == 0:
            COVERED["outcomes"]["signal after the command ended"] += 1
        elif "before training started" in result[2]:
            COVERED["outcomes"]["signal before training"] += 1
        elif "checkpoint saved" in result[2]:
            COVERED["outcomes"]["signal during training"] += 1
        self.check(args, result, sig=op["signal"])

    def reopen_finished(self, op) -> None:
        """A finished run leaves a resume nothing to do: damage its last checkpoint's state too."""
        if self.finished():
            files = [f for f in sorted((self.run / "checkpoints" / str(STEPS) / "state").rglob("*"))
                     if f.is_file() and f.parent.name == "d"]
            for f in files:
                _damage(f, "truncate", 0.3)
            self.note(f"reopen the finished run: truncated the {len(files)} array files of checkpoint {STEPS}'s state")
            self.fault("corrupt checkpoint (to reopen a finished run)")

    def op_corrupt_checkpoint(self, op) -> None:
        steps = _ckpt_steps(self.run)
        if not steps:
            self.note("corrupt_checkpoint: skipped, no checkpoint yet")
            return
        step = steps[-1] if op["which"] < 0.6 else steps[int(op["which"] * 997) % len(steps)]
        folder = self.run / "checkpoints" / str(step)
        files = [f for f in sorted(folder.rglob("*")) if f.is_file() and f.parent.name == "d"]
        files.append(folder / "meta" / "metadata")
        victim = files[int(op["which"] * 7919) % len(files)]
        self.note(f"corrupt checkpoint {step}: {_damage(victim, op['damage'], op['at'])} "
                  f"({victim.relative_to(self.run)})")
        self.fault(f"corrupt checkpoint ({op['damage']})")
        self.read(op["then"], op)

    def op_corrupt_snapshot(self, op) -> None:
        from induction_jax.arrays import load_arrays
        from induction_jax.rundir import RunDirError

        if not self.is_run() or not _ckpt_steps(self.run):
            self.note("corrupt_snapshot: skipped, no checkpoint yet")
            return
        self.reopen_finished(op)
        latest = _ckpt_steps(self.run)[-1]
        snaps = sorted((self.run / "snapshots").glob("step_*.npz"))
        kept = [p for p in snaps if int(p.stem.split("_")[1]) <= latest] or snaps
        if not kept:
            self.note("corrupt_snapshot: skipped, no snapshot yet")
            return
        victim = kept[int(op["which"] * 997) % len(kept)]
        how, at, damaged = op["damage"], op["at"], False
        for attempt in range(5):       # a flip can land in bytes no reader checks: flip elsewhere
            self.note(f"corrupt snapshot: {_damage(victim, how, at)}")
            try:
                load_arrays(victim)
            except RunDirError:
                damaged = True
                break
            at = (at + 0.137) % 0.9
        self.fault(f"corrupt snapshot ({how})")
        reader = op["then"]
        before = _training_record(self.run)
        args = [reader, str(self.run), *(LLC_FLAGS if reader == "llc" else [])]
        result = self.call(args)
        self.check(args, result, reads_only=True, before=before)
        if damaged and victim.name not in result[2]:
            self.fail(f"{reader} read the damaged snapshot {victim.name} without naming it", args, result)

    def op_corrupt_metrics(self, op) -> None:
        metrics = self.run / "metrics.csv"
        if not self.is_run() or not _ckpt_steps(self.run) or not metrics.is_file():
            self.note("corrupt_metrics: skipped, no checkpoint yet")
            return
        self.reopen_finished(op)
        data = metrics.read_bytes()
        last = data[data.rstrip(b"\n").rfind(b"\n") + 1:]
        recorded = 0           # the most bytes a checkpoint claims: a cut beyond it is re-computed by a resume
        for step in _ckpt_steps(self.run):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                recorded = max(recorded, self.table_bytes(step)["metrics"])
        if len(data) - len(last) >= recorded:
            cut = len(data) - len(last) + max(1, int(len(last) * op["at"]))
            metrics.write_bytes(data[:cut])
            self.note(f"corrupt metrics.csv: cut its last line after {cut - (len(data) - len(last))} of {len(last)} bytes")
            self.fault("corrupt metrics.csv (cut last line)")
        else:       # the last line belongs to a checkpoint: a cut-off write appended after it instead
            metrics.write_bytes(data + last[: max(1, int(len(last) * op["at"]))])
            self.note("corrupt metrics.csv: appended a cut-off row")
            self.fault("corrupt metrics.csv (cut-off row appended)")
        self.damaged_tables.add("metrics.csv")
        if op["then"] == "phase":
            before = _training_record(self.run)
            args = ["phase", str(self.run)]
            result = self.call(args)
            self.check(args, result, reads_only=True, before=before)
            if result[0] == 0 and "dropped an incomplete last line" not in result[2]:
                self.fail("phase read a cut-off metrics.csv without saying so", args, result)
        else:
            args = self.writer_args()
            result = self.call(args)
            if result[0] == 0:
                self.damaged_tables.discard("metrics.csv")
            self.check(args, result)

    def op_concurrent(self, op) -> None:
        args = self.writer_args()
        first = self.popen(args)
        second = {"resume": ["train", "--resume", str(self.run), "--no-analysis", "--no-progress"],
                  "overwrite": ["train", *FLAGS, "--out", str(self.run), "--overwrite"],
                  "analyze": ["analyze", str(self.run)], "phase": ["phase", str(self.run)],
                  "dynamics": ["dynamics", str(self.run)], "llc": ["llc", str(self.run), *LLC_FLAGS],
                  "export": ["export", str(self.run)]}[op["second"]]
        deadline = time.time() + TIMEOUT
        while first.poll() is None and not _lock_held_by(self.run, first.pid) and time.time() < deadline:
            time.sleep(0.02)
        if first.poll() is None and _lock_held_by(self.run, first.pid):
            from induction_jax.cli import main

            out, err = io.StringIO(), io.StringIO()
            COVERED["commands"][f"{op['second']} (in-process, concurrent)"] += 1
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main(second)
            overlapped = first.poll() is None
            result = (code, out.getvalue(), err.getvalue())
            self.note(f"$ {' '.join(second)}  [while pid {first.pid} writes] -> exit {code}; {err.getvalue().strip()[:200]}")
            if overlapped:
                self.fault(f"concurrent {op['second']}")
                lines = [line for line in err.getvalue().splitlines() if line.strip()]
                if code != 2 or len(lines) != 1 or not lines[0].startswith("induction-jax") \
                        or f"in use by pid {first.pid}" not in lines[0] or "Traceback" in err.getvalue():
                    self.fail("a second writer was not refused in one line naming the first (exit 2)", second, result)
            else:
                COVERED["outcomes"]["concurrent: the first command ended first"] += 1
        else:
            COVERED["outcomes"]["concurrent: the first command ended before taking its lock"] += 1
        result = self.finish(first)
        self.note(f"$ {' '.join(args)}  [the first writer] -> exit {result[0]}")
        self.check(args, result)

    def op_disk_full(self, op) -> None:
        if self.is_run() and _ckpt_steps(self.run):
            self.reopen_finished(op)
        args = self.writer_args()
        if self.fs.mounted:
            self.fs.shrink(op["margin_kib"] * 1024)
            self.fault("full disk (tmpfs)")
            try:
                result = self.call(args)
            finally:
                self.fs.grow()
        else:
            self.fault("full disk (injected ENOSPC)")
            result = self.call(args, shim=True, env={"SOAK_ENOSPC_AFTER": str(op["enospc_after"])})
        COVERED["outcomes"][f"full disk: exit {result[0]}"] += 1
        if result[0] not in (0, 4) and not (result[0] == 2 and "No space left" in result[2]):
            self.fail("a full disk did not end in exit 4 (or 0 where everything fitted)", args, result)
        if result[0] == 4 and "no space left on device" not in result[2]:
            self.fail("exit 4 without saying the disk is full", args, result)
        self.check(args, result)

    def op_export(self, op) -> None:
        target = op["target"]
        run = self.run
        steps = _ckpt_steps(run)
        ckpt_files = [f for f in sorted((run / "checkpoints" / str(steps[-1])).rglob("*")) if f.is_file()] if steps else []
        snaps = sorted((run / "snapshots").glob("*.npz")) if (run / "snapshots").is_dir() else []
        suffix = ".safetensors" if op["format"] == "safetensors" else ".npz"
        out = {"default": None,
               "outside-new": self.outside / f"w{len(self.exported)}{suffix}",
               "outside-existing": self.neighbour,
               "run-file": run / op["run_file"],
               "run-snapshot": snaps[int(op["which"] * 997) % len(snaps)] if snaps else run / "metrics.csv",
               "run-checkpoint": ckpt_files[int(op["which"] * 997) % len(ckpt_files)] if ckpt_files else run / "config.json",
               "run-dir": run,
               "run-new": run / f"weights{suffix}",
               "run-user": run / "notes.txt",
               "run-exports": run / "exports" / f"mine{suffix}"}[target]
        args = ["export", str(run), "--format", op["format"], *(["--out", str(out)] if out is not None else [])]
        self.fault(f"export --out {target}")
        before = _training_record(run)
        manifest = set(_manifest(run))
        result = self.call(args)
        if result[0] == 0 and out is not None and out.is_file() and run not in out.parents and out != run:
            self.exported.add(out)
        inside_run_files = out is not None and (out == run or (run in out.parents and "exports" not in
                                                               out.relative_to(run).parts[:1]))
        if inside_run_files and result[0] == 0 and self.is_run():
            self.fail(f"export wrote {out.relative_to(run) if out != run else 'the run directory'}, inside the run "
                      f"directory but not under exports/", args, result)
        if out == self.neighbour and result[0] == 0:
            self.fail("export replaced a file of the user's without --overwrite", args, result)
        added = set(_manifest(run)) - manifest
        if any(not e.startswith("exports/") for e in added):
            self.fail(f"export recorded {sorted(added)} in the manifest", args, result)
        self.check(args, result, reads_only=True, before=before)

    def op_reader(self, op) -> None:
        reader = op["reader"]
        args = [reader, str(self.run), *(LLC_FLAGS if reader == "llc" else [])]
        before = _training_record(self.run)
        delay = op["delay"] if op["moment"] == "startup" else op["reader_delay"]
        result = self.call(args, sig=op["signal"], delay=delay)
        self.check(args, result, reads_only=True, before=before, sig=op["signal"])

    def op_sweep(self, op) -> None:
        args = ["sweep", *SWEEP_FLAGS, "--out", str(self.sweep)]
        result = self.call(args, sig=op["signal"], delay=op["delay"] if op["moment"] == "startup" else op["reader_delay"])
        code, _, err = result
        if code not in EXIT_CODES or "Traceback" in err:
            self.fail("sweep broke a rule", args, result)
        if code != 0 and not [line for line in err.splitlines() if line.strip()][-1:][0].startswith("induction-jax"):
            self.fail("an interrupted sweep did not end with one line", args, result)
        if (self.sweep / "config.json").is_file():
            import induction_jax
            try:
                induction_jax.open_run(self.sweep)
            except Exception as e:  # noqa: BLE001
                self.fail(f"the sweep's run directory does not open: {e}", args, result)
            for name in TABLES:
                if (self.sweep / name).is_file() and _table_problem(self.sweep / name):
                    self.fail(f"the sweep's {_table_problem(self.sweep / name)}", args, result)
            entries = _manifest(self.sweep)
            folders = tuple(e for e in entries if e.endswith("/"))
            stray = [str(p.relative_to(self.sweep)) for p in self.sweep.rglob("*") if p.is_file()
                     and str(p.relative_to(self.sweep)) not in entries + [".induction-jax-manifest"]
                     and not str(p.relative_to(self.sweep)).startswith(folders)]
            if stray:
                self.fail(f"files in the sweep's run directory that its manifest does not list: {stray[:6]}", args, result)
        self.check_directory(args, result)

    def read(self, reader: str, op) -> None:
        before = _training_record(self.run)
        args = {"export": ["export", str(self.run)], "analyze": ["analyze", str(self.run)]}[reader]
        result = self.call(args)     # to its end: it must meet the damage (an interrupted one may not)
        self.check(args, result, reads_only=True, before=before)

    # -- the end
    def complete(self) -> None:
        """Finish the run as a user would, then compare it with the uninterrupted reference."""
        from induction_jax.analysis.weights import load_run_params
        from induction_jax.arrays import load_arrays

        args = self.writer_args()
        result = self.call(args)
        code, _, err = result
        if code == 2 and "start again with --overwrite" in err:     # every checkpoint damaged: as the tool says
            self.check(args, result)
            args = self.writer_args()
            result = self.call(args)
            code, _, err = result
        if code not in (0,) and not (code == 2 and f"already trained to step {STEPS}" in err):
            self.fail("the run could not be completed", args, result)
        if code == 0:
            self.damaged_tables.clear()
        self.check(args, result)
        run = self.run
        for name in TABLES:
            have = (run / name).read_bytes() if (run / name).is_file() else b""
            if have != self.ref["tables"][name]:
                self.fail(f"after completing, {name} differs from the uninterrupted run's "
                          f"({len(have)} bytes, the reference {len(self.ref['tables'][name])})", args, result)
        try:
            params = load_run_params(run)
            differ = [k for k in self.ref["params"] if not np.array_equal(params[k], self.ref["params"][k])]
            if differ:
                self.fail(f"after completing, the final parameters differ from the uninterrupted run's: {differ}",
                          args, result)
        except Exception as e:  # noqa: BLE001
            self.fail(f"after completing, the final parameters cannot be read: {type(e).__name__}: {e}", args, result)
        have = sorted(p.name for p in (run / "snapshots").glob("*.npz")) if (run / "snapshots").is_dir() else []
        if have != sorted(self.ref["snapshots"]):
            self.fail(f"after completing, the snapshots are {have}, the uninterrupted run's "
                      f"{sorted(self.ref['snapshots'])}", args, result)
        for name in have:
            try:
                arrays = load_arrays(run / "snapshots" / name)
            except Exception as e:  # noqa: BLE001
                self.fail(f"after completing, snapshot {name} is damaged: {e}", args, result)
                continue
            ref = self.ref["snapshots"].get(name, {})
            if set(arrays) != set(ref) or any(not np.array_equal(arrays[k], ref[k]) for k in ref):
                self.fail(f"after completing, snapshot {name} differs from the uninterrupted run's", args, result)


@pytest.mark.parametrize("seed", SEEDS, ids=[f"seed{s}" for s in SEEDS])
def test_soak_sequence(seed, soak_reference, tmp_path):
    seq = Sequence(seed, tmp_path, soak_reference)
    seq.note(f"plan: start {seq.plan['start']}" + (f" (cut at {seq.plan['cut']})" if seq.plan["start"] == "copy" else "")
             + "; " + "; ".join(op["kind"] for op in seq.plan["ops"]) + (" (full disk: tmpfs)" if seq.fs.mounted else ""))
    try:
        seq.setup()
        for op in seq.plan["ops"]:
            COVERED["operations"] += 1
            getattr(seq, f"op_{op['kind']}")(op)
        seq.complete()
    finally:
        seq.fs.close()
    COVERED["sequences"] += 1
    assert not seq.failures, (f"{len(seq.failures)} broken invariant(s) in sequence {seed} "
                              f"(reproduce: SOAK_SEEDS={seed} pytest tests/test_soak.py -s):\n"
                              + "\n".join(seq.failures) + "\n  what happened:\n    " + "\n    ".join(seq.log))


def test_the_plans_cover_every_operation_reader_and_second_writer():
    """Seeds 0..5 (the CI campaign) cover every kind of operation, every reader command and every
    second command of the concurrency fault; the plans are a pure function of the seed."""
    plans = [plan(s) for s in range(6)]
    assert plans == [plan(s) for s in range(6)]
    ops = [op for p in plans for op in p["ops"]]
    assert {op["kind"] for op in ops} == set(OPS)
    assert {op["reader"] for op in ops if op["kind"] == "reader"} | {op["second"] for op in ops if op["kind"] == "concurrent"} | {
        op["then"] for op in ops if op["kind"] in ("corrupt_snapshot", "corrupt_checkpoint", "corrupt_metrics")} >= {
        "analyze", "dynamics", "llc", "phase", "export"}, "every reader command"
    assert all(p["ops"][0]["kind"] in ("signal", "concurrent", "disk_full") for p in plans if p["start"] == "fresh")
