"""Global arrays as host numpy arrays on every process: below both `distributed` (the trainer's
multi-process plumbing, which re-exports `host_copy`) and `checkpoint` (whose digests are of the
host bytes of the whole state), so the run directory's modules need nothing of the trainer.
It imports nothing of the package."""

from __future__ import annotations

import jax
import numpy as np


def host_copy(tree):
    """A pytree of global (possibly multi-process) arrays as full numpy arrays on every process
    (a collective when there are several processes: every process must call it)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils
    return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
