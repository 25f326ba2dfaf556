"""Several processes (hosts) training one ensemble: `jax.distributed` with the same mesh.

Every process runs the same program; the ensemble axis is sharded over the devices of all
processes (one global mesh named `ensemble`), each process computes its own members, the
per-chunk metrics are all-gathered so every process holds the whole table, and process 0
alone writes the run directory's files (Orbax checkpoints are written by all, cooperatively).
On CPUs the cross-process collectives use gloo.
"""

from __future__ import annotations

import jax
import numpy as np

from induction_jax.gather import host_copy  # noqa: F401 - also this module's, for its callers


def initialize(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process run (call before any other JAX work: even asking for the backend
    starts it). gloo serves the CPU client's collectives and leaves accelerators alone."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)


def is_writer() -> bool:
    """Whether this process writes the run directory's files (process 0)."""
    return jax.process_index() == 0


def to_host(tree) -> dict[str, np.ndarray]:
    """A dict of global arrays as numpy arrays on every process."""
    return dict(host_copy(dict(tree)))


def barrier(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


def member_block(n_members: int, index: int, count: int) -> slice:
    """Members of block `index` of `count`: contiguous, in member order, sizes differing by at
    most one. The one partition of an ensemble's members among workers: the `ensemble` mesh
    gives each of `count` processes this block when `count` divides the ensemble, and `--shard
    I/N` trains block I of N as its own run (`arrayjob.py`)."""
    base, extra = divmod(n_members, count)
    start = index * base + min(index, extra)
    return slice(start, start + base + (index < extra))
