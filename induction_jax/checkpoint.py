"""Orbax checkpoints of the whole ensemble state (async saves, the last few kept)."""

from __future__ import annotations

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from induction_jax.train import MemberState


class Checkpoints:
    """`save` writes the stacked state, the stacked params (for the analysis, readable with no
    template) and a JSON meta; `restore` falls back past broken checkpoints."""

    def __init__(self, directory: str, max_to_keep: int = 3, async_save: bool = True):
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                               enable_async_checkpointing=async_save, create=True)
        handlers = {"state": ocp.StandardCheckpointHandler(), "params": ocp.StandardCheckpointHandler(),
                    "meta": ocp.JsonCheckpointHandler()}
        self.manager = ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)

    def save(self, step: int, state: MemberState, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), params=ocp.args.StandardSave(state.params),
            meta=ocp.args.JsonSave(meta)), force=True)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_state(self, step: int, template: MemberState) -> tuple[MemberState, dict]:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return out.state, out.meta

    def restore_params(self, step: int) -> dict[str, np.ndarray]:
        """The params alone, onto one local device whatever topology saved them (for analysis)."""
        meta = self.manager.item_metadata(step)["params"]
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), dict(meta),
                                is_leaf=lambda m: hasattr(m, "shape"))
        out = self.manager.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
        return jax.tree.map(np.asarray, dict(out.params))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
