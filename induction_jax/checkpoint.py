"""Orbax checkpoints of the whole ensemble state, each with an integrity digest of its arrays.

Orbax stores arrays compressed, but a flipped byte can still decompress to wrong numbers
without complaint (measured: a resumed run then reported a false divergence, or ended with
a parameter of 4.85e7). So every save records a BLAKE2b digest of the host bytes of the
state and of the params in the checkpoint's JSON meta, and every restore recomputes it. A
mismatch is treated like any unreadable checkpoint: reported in one line, moved aside to
`checkpoints_broken/`, and the previous checkpoint used.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp

from induction_jax.arrays import tree_digest
from induction_jax.files import RunDirError, StorageError, owned_dir, storage_error
from induction_jax.gather import host_copy


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be trusted: unreadable, or the digest of its arrays does not match."""


def _is_orbax_noise(unraisable) -> bool:
    """TensorStore completion callbacks that fire into an asyncio loop Orbax has already closed
    (after a failed read or write, some at interpreter exit): harmless, but each printed a
    traceback (127 of them around one correct recovery)."""
    exc = unraisable.exc_value
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _DropUnretrievedOrbaxFailures(logging.Filter):
    """asyncio's 'Task/Future exception was never retrieved' for Orbax's own failed writes,
    logged when those tasks are collected (often at exit), and Orbax's background-save threads
    logging their own failure through absl ('_SignalingThread.run() raised an exception', a
    traceback each, possibly after the checkpoints were closed and absl's level restored): the
    failure reaches the caller as one line (`_writing`, when it waits or closes), or the command
    is already stopping on an earlier error; the traceback would only repeat it."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "_SignalingThread.run() raised an exception" in text:
            return False
        return "exception was never retrieved" not in text or not any(
            mark in text for mark in ("orbax", "RESOURCE_EXHAUSTED", "No space left on device"))


def _is_orbax_write_failure(args) -> bool:
    """An Orbax background-save thread dying of a full disk: the save's caller reports it in one
    line (`_writing`), so the thread's own traceback would only repeat it (after that line)."""
    text = f"{getattr(args.exc_type, '__name__', '')}: {args.exc_value}"
    where = "".join(traceback.format_tb(args.exc_traceback)) if args.exc_traceback is not None else ""
    return "orbax" in where and any(m in text for m in ("RESOURCE_EXHAUSTED", "No space left on device"))


def _filter_orbax_noise() -> None:
    """Drop only `_is_orbax_noise` unraisables, `_is_orbax_write_failure` thread deaths and
    `_DropUnretrievedOrbaxFailures` log records, process-wide (they can fire after any close);
    everything else still reaches its hook or handler. Idempotent."""
    previous = sys.unraisablehook
    if getattr(previous, "_induction_jax", False):
        return

    def hook(unraisable):
        if not _is_orbax_noise(unraisable):
            previous(unraisable)

    previous_thread = threading.excepthook

    def thread_hook(args):
        if not _is_orbax_write_failure(args):
            previous_thread(args)

    hook._induction_jax = True
    sys.unraisablehook = hook
    threading.excepthook = thread_hook
    for logger in ("asyncio", "absl"):
        logging.getLogger(logger).addFilter(_DropUnretrievedOrbaxFailures())


_failed_since_collect = False


@contextlib.contextmanager
def quiet():
    """Silence what a failing Orbax / TensorStore read prints on the way out (asyncio's
    'Exception ignored in coroutine' and 'Event loop is closed' tracebacks, absl warnings):
    the caller reports the failure in one line instead."""
    loggers = [logging.getLogger(n) for n in ("absl", "asyncio", "orbax", "jax")]
    levels = [lg.level for lg in loggers]
    hook = sys.unraisablehook
    sys.unraisablehook = lambda *_: None
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    global _failed_since_collect
    failed = False
    try:
        yield
    except BaseException:
        failed = _failed_since_collect = True
        raise
    finally:
        # Collect a failed read's coroutines while the hook is quiet: at the failure, and again at
        # the next quiet exit (while the exception propagates, its traceback may still hold them).
        # Only then: a full collection takes seconds in a process holding many objects (a
        # notebook, the test suite), and reads that never failed leave nothing to silence.
        if _failed_since_collect:
            gc.collect()
            _failed_since_collect = failed
        sys.unraisablehook = hook
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextlib.contextmanager
def _writing(directory: Path):
    """A failed checkpoint write (raised by Orbax's background save, as OSError or as
    TensorStore's ValueError) as one line: the previous checkpoints are intact."""
    try:
        yield
    except OSError as e:
        raise storage_error(e, directory) from None
    except Exception as e:  # noqa: BLE001 - Orbax wraps the OS error in its own exceptions
        if "No space left on device" in str(e) or "RESOURCE_EXHAUSTED" in str(e):
            raise StorageError(f"no space left on device while writing {directory}; the run can be resumed "
                               f"once space is freed") from None
        raise StorageError(f"a checkpoint could not be written to {directory} ({type(e).__name__}: "
                           f"{str(e).splitlines()[0][:200]})") from None


class Checkpoints:
    """`save` writes the stacked state, the stacked params (for the analysis, readable with no
    template) and a JSON meta holding both digests; restores verify them.

    While it is open, absl's logger (Orbax logs background failures through it, a traceback
    each) is held at CRITICAL: failures reach the caller as one-line errors instead."""

    def __init__(self, directory: str | Path, max_to_keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=async_save, create=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "params": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        self.directory = Path(directory)
        _filter_orbax_noise()
        self._absl = logging.getLogger("absl")
        self._absl_level = self._absl.level
        self._absl.setLevel(logging.CRITICAL)
        with quiet(), _writing(self.directory):
            self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options,
                                                 item_handlers=handlers)

    def save(self, step: int, state, meta: dict) -> None:
        host = host_copy(state)
        meta = {**meta, "digest": {"state": tree_digest(host), "params": tree_digest(host.params)}}
        with _writing(self.directory):
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), params=ocp.args.StandardSave(state.params),
                meta=ocp.args.JsonSave(meta)), force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def read_meta(self, step: int) -> dict:
        try:
            with quiet():
                return dict(self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
        except Exception as e:  # noqa: BLE001 - any failure to read means "not a good checkpoint"
            raise CheckpointError(f"its meta is unreadable ({type(e).__name__})") from None

    def restore_state(self, step: int, template) -> tuple[object, dict]:
        """The state (laid out like `template`) and its meta, digest verified."""
        meta = self.read_meta(step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        absent = self._absent_fields(step, template)
        if absent:      # a state saved before these (array-free) fields existed: restore the rest by name
            abstract = {k: v for k, v in abstract._asdict().items() if k not in absent}
        try:
            with quiet():
                state = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract))).state
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"its arrays are unreadable ({type(e).__name__})") from None
        if absent:
            state = type(template)(**state, **{k: None for k in absent})
        _verify(host_copy(state), meta, "state")
        return state, meta

    def _absent_fields(self, step: int, template) -> list[str]:
        """Fields of a NamedTuple `template` that hold no arrays (None) and that the checkpoint's
        state does not have: it was written by a version without them (e.g. 0.2, before a
        member's task parameters were part of its state)."""
        fields = [f for f in getattr(template, "_fields", ()) if getattr(template, f) is None]
        if not fields:
            return []
        try:
            with quiet():
                stored = self.manager.item_metadata(step)["state"].tree
        except Exception:  # noqa: BLE001  (unreadable metadata: the restore itself reports it)
            return []
        return [f for f in fields if isinstance(stored, dict) and f not in stored]

    def restore_params(self, step: int) -> tuple[dict[str, np.ndarray], dict]:
        """The params alone and the meta, onto one local device whatever topology saved them."""
        meta = self.read_meta(step)
        try:
            with quiet():
                item = self.manager.item_metadata(step)["params"]
                device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
                abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                                        dict(item), is_leaf=lambda m: hasattr(m, "shape"))
                out = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"its params are unreadable ({type(e).__name__})") from None
        params = jax.tree.map(np.asarray, dict(out.params))
        _verify(params, meta, "params")
        return params, meta

    def wait(self) -> None:
        with _writing(self.directory):
            self.manager.wait_until_finished()

    def close(self) -> None:
        try:
            with _writing(self.directory):
                self.manager.wait_until_finished()
        finally:
            with contextlib.suppress(Exception):
                self.manager.close()
            self._absl.setLevel(self._absl_level)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self.close()
            return
        # Already failing: finish or drop the save in flight quietly; the first error is the one to report.
        with contextlib.suppress(Exception), quiet():
            self.close()


def _verify(tree, meta: dict, item: str) -> None:
    want = meta.get("digest", {}).get(item)
    if want is None:
        raise CheckpointError(f"it records no digest of its {item}")
    if tree_digest(tree) != want:
        raise CheckpointError(f"the digest of its {item} does not match the one recorded (the files were altered "
                              f"or damaged)")


def restore_latest_good(ckpt: Checkpoints, run_path: Path, restore: Callable[[int], tuple],
                        log=lambda m: print(m, file=sys.stderr)) -> tuple:
    """`restore(step)` for the newest checkpoint that restores and verifies; each one that does
    not is reported in one line and moved aside to RUN_DIR/checkpoints_broken/ (recorded in the
    run's manifest)."""
    steps = ckpt.steps()
    for step in reversed(steps):
        try:
            return restore(step)
        except CheckpointError as e:
            log(f"induction-jax: checkpoint step {step} in {ckpt.directory} cannot be used: {e}; "
                f"using the previous one")
            aside = owned_dir(run_path, "checkpoints_broken")
            aside.mkdir(exist_ok=True)
            target = aside / str(step)
            if target.exists():
                target = aside / f"{step}.{os.getpid()}"
            (ckpt.directory / str(step)).rename(target)
            ckpt.manager.reload()
            log(f"induction-jax: moved it to {target}")
    raise RunDirError(f"{run_path}: no usable checkpoint (tried steps {steps or 'none'}); start again with "
                      f"--overwrite" + (" (the damaged ones are kept in checkpoints_broken/)" if steps else ""))
