"""Long analyses (`llc`, `dynamics`) as chunks that are kept: each chunk one compiled call of
seconds to a minute, its arrays written atomically the moment it finishes, so a signal costs at
most the chunk in flight and a rerun continues where the last one stopped.

A chunk is kept under RUN_DIR/<analysis>/chunks/<settings id>/chunk-NNNNN.npz beside
settings.json, the settings it was computed under; the id is a digest of those settings, so a
rerun with other settings starts afresh in a folder of its own and never mixes chunks (the
other settings' chunks stay, for a rerun with those). Each chunk also records a digest of its
own inputs (`inputs`: the snapshot weights it read), and one whose inputs have changed since
(a retrained run) is computed again. The folder is recorded in the manifest whole, so
`--overwrite` removes it with the run.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from induction_jax import signals
from induction_jax.arrays import load_arrays, save_arrays, tree_digest
from induction_jax.files import RunDirError, json_safe, owned_dir, write_json_atomic
from induction_jax.progress import ProgressBar, fmt_seconds

FOLDER = "chunks"
INPUTS = "__inputs__"       # the digest of a chunk's inputs, kept inside its file


def settings_id(settings: dict) -> str:
    return hashlib.blake2b(json.dumps(json_safe(settings), sort_keys=True).encode(), digest_size=6).hexdigest()


class ChunkStore:
    """The kept chunks of one analysis of one run under one set of settings."""

    def __init__(self, run_path: Path, analysis: str, settings: dict):
        self.run_path, self.analysis = Path(run_path), analysis
        self.settings = json_safe(settings)
        self.path = self.run_path / analysis / FOLDER / settings_id(self.settings)

    def file(self, i: int) -> Path:
        return self.path / f"chunk-{i:05d}.npz"

    def load(self, i: int, inputs: str) -> dict | None:
        """Chunk `i`'s arrays if it is kept and was computed from these inputs; else None (a
        damaged or stale file is computed again, and overwritten: the project wrote it)."""
        if not self.file(i).is_file():
            return None
        try:
            arrays = load_arrays(self.file(i))
        except RunDirError as e:
            print(f"{self.analysis}: {e}; computing that chunk again", file=sys.stderr)
            return None
        if str(arrays.pop(INPUTS, "")) != inputs:
            print(f"{self.analysis}: {self.file(i)} was computed from other snapshot weights; computing it again",
                  file=sys.stderr)
            return None
        return arrays

    def save(self, i: int, arrays: dict, inputs: str) -> None:
        if not self.path.is_dir():       # created with the first chunk: an early signal leaves nothing
            owned_dir(self.run_path, f"{self.analysis}/{FOLDER}")
            self.path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path / "settings.json", self.settings)
        save_arrays(self.file(i), {**arrays, INPUTS: np.array(inputs)})


def run_chunks(store: ChunkStore, n_chunks: int, compute, inputs, *, plan: str, what: str,
               stream=None) -> list[dict]:
    """Every chunk's arrays (numpy): loaded where kept, else `compute(i)` (a pure computation,
    interruptible within `signals.POLL` s, `what` completing the one-line message) and kept at
    once. `inputs(i)` is what chunk `i` reads (a pytree; its digest is kept with it); `plan`
    says what the chunks hold. Says up front what it will do, after the first chunk how long
    the rest should take, and shows progress (the bar on a terminal, a line every 5 s in a log)
    on `stream` (stdout)."""
    stream = stream or sys.stdout
    digests = [tree_digest(inputs(i)) for i in range(n_chunks)]
    results = [store.load(i, digests[i]) for i in range(n_chunks)]
    todo = [i for i in range(n_chunks) if results[i] is None]
    name = store.analysis
    print(f"{name}: {plan}: {n_chunks} chunks, {n_chunks - len(todo)} already done, {len(todo)} to compute "
          f"(kept in {store.path})", file=stream, flush=True)
    bar = ProgressBar(n_chunks, start=n_chunks - len(todo), stream=stream, log_every=5.0, metric=None,
                      name=name, unit="chunks")
    bar.update(n_chunks - len(todo))          # rates from here: the ETA counts compilation until it is amortised
    for k, i in enumerate(todo):
        tic = time.perf_counter()
        with bar.working(f"chunk {i + 1} of {n_chunks}" + (" (compiling first)" if k == 0 else "")):
            out = signals.run(compute, i, what=what)
        out = {key: np.asarray(v) for key, v in out.items()}
        store.save(i, out, digests[i])
        results[i] = out
        if k == 0:
            took = time.perf_counter() - tic
            bar.close()
            print(f"{name}: the first chunk took {took:.1f} s with compilation; the other {len(todo) - 1} should "
                  f"take at most about {fmt_seconds(took * (len(todo) - 1))}", file=stream, flush=True)
        bar.update(n_chunks - len(todo) + k + 1)
    bar.close()
    return results
