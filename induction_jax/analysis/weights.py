"""Weights out as plain arrays with a leading ensemble axis, from a run directory or a pytree."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CIRCUIT_NAMES = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")
# Dimensions of each circuit weight after the ensemble axis (L layers, H heads).
CIRCUIT_NDIM = {"W_E": 2, "W_pos": 2, "W_Q": 4, "W_K": 4, "W_V": 4, "W_O": 4, "W_U": 2}


class WeightsError(ValueError):
    pass


def stacked_params(params: dict, ensemble: bool = True) -> dict[str, np.ndarray]:
    """Validate a params pytree (any source) and return it as numpy arrays `[E, ...]`.

    `ensemble=False` takes a single model's params and adds the ensemble axis.
    """
    params = {k: np.asarray(v) for k, v in dict(params).items()}
    missing = [n for n in CIRCUIT_NAMES if n not in params]
    if missing:
        raise WeightsError(f"params: missing {', '.join(missing)}; expected circuit-layout weights "
                           f"{', '.join(CIRCUIT_NAMES)}")
    if not ensemble:
        params = {k: v[None] for k, v in params.items()}
    for name, ndim in CIRCUIT_NDIM.items():
        if params[name].ndim != ndim + 1:
            raise WeightsError(f"params[{name!r}]: shape {params[name].shape}, expected an ensemble "
                               f"axis and {ndim} more dimensions")
    E = params["W_E"].shape[0]
    if any(v.shape[0] != E for v in params.values()):
        raise WeightsError("params: the leading ensemble axis differs between weights")
    return params


def load_run_checkpoint(run_dir: str | Path, step: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """`(params [E, ...], meta)` of a run's checkpoint (latest good, or `step`), digest verified and
    checked against config.json; `meta["step"]` is the step the params describe."""
    from induction_jax.checkpoint import Checkpoints, CheckpointError, restore_latest_good
    from induction_jax.rundir import RESUMABLE_CHANGES, RunDir, RunDirError

    run = RunDir(Path(run_dir))
    run.read_meta()   # raises a one-line error if this is not a run directory
    if not run.checkpoints.is_dir():
        raise RunDirError(f"{run.path}: no checkpoints/ (the run did not finish a checkpoint)")

    def restore(s: int):
        run.check_trained_with(ckpt.read_meta(s), may_differ=RESUMABLE_CHANGES)
        return ckpt.restore_params(s)

    with Checkpoints(run.checkpoints, async_save=False) as ckpt:
        steps = ckpt.steps()
        if not steps:
            raise RunDirError(f"{run.path}: no checkpoint in checkpoints/")
        if step is None:
            params, meta = restore_latest_good(ckpt, run.path, restore)
        elif step not in steps:
            raise RunDirError(f"checkpoint step {step}: not in {run.path}; available: {', '.join(map(str, steps))}")
        else:
            try:
                params, meta = restore(step)
            except CheckpointError as e:
                raise RunDirError(f"checkpoint step {step} in {run.checkpoints} cannot be used: {e}") from None
    return stacked_params(params), meta


def load_run_params(run_dir: str | Path, step: int | None = None) -> dict[str, np.ndarray]:
    """The stacked params of every member from a run's checkpoint (latest good, or `step`)."""
    return load_run_checkpoint(run_dir, step)[0]
