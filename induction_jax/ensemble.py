"""Ensembles: `vmap` of the single-member run over seeds and per-member hyperparameters.

`jit`, `vmap` and donation are applied here, where the functions are composed.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from induction_jax import train as train_lib
from induction_jax.config import RunConfig
from induction_jax.probes import PROBE_METRICS, probe_metrics


@dataclass(frozen=True)
class Members:
    """Who the ensemble's members are: one seed, lr and weight decay each."""

    seed: np.ndarray
    lr: np.ndarray
    weight_decay: np.ndarray

    def __len__(self) -> int:
        return len(self.seed)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "Members":
        t = cfg.train
        seeds = np.arange(t.first_seed, t.first_seed + t.seeds, dtype=np.int64)
        return cls(seeds, np.full(t.seeds, t.lr), np.full(t.seeds, t.weight_decay))

    @classmethod
    def grid(cls, cfg: RunConfig, lrs, weight_decays) -> "Members":
        """Every (lr, weight decay) crossed with every seed; seeds vary fastest."""
        t = cfg.train
        lr, wd, seed = np.meshgrid(np.asarray(lrs, float), np.asarray(weight_decays, float),
                                   np.arange(t.first_seed, t.first_seed + t.seeds), indexing="ij")
        return cls(seed.ravel(), lr.ravel(), wd.ravel())

    def table(self) -> dict[str, list]:
        return {"seed": self.seed.tolist(), "lr": self.lr.tolist(),
                "weight_decay": self.weight_decay.tolist()}


def ensemble_sharding(n_members: int, devices=None) -> NamedSharding:
    """Shard the leading (ensemble) axis over the largest number of local devices that divides
    the ensemble, on a 1-D mesh named `ensemble`; across hosts the same mesh spans processes."""
    devices = list(devices if devices is not None else jax.devices())
    n = max(d for d in range(1, len(devices) + 1) if n_members % d == 0)
    mesh = Mesh(np.asarray(devices[:n]), ("ensemble",))
    return NamedSharding(mesh, PartitionSpec("ensemble"))


def shard(state, sharding: NamedSharding):
    return jax.device_put(state, sharding)


def init_ensemble(cfg: RunConfig, members: Members, devices=None) -> train_lib.MemberState:
    """Every member's initial state, stacked on a leading axis sharded across the devices."""
    sharding = ensemble_sharding(len(members), devices)
    init = jax.jit(jax.vmap(functools.partial(train_lib.init_member, cfg)), out_shardings=sharding)
    args = (jnp.asarray(members.seed, jnp.uint32), jnp.asarray(members.lr, jnp.float32),
            jnp.asarray(members.weight_decay, jnp.float32))
    return init(*shard(args, sharding))


@functools.lru_cache(maxsize=None)
def _compiled_chunk(cfg: RunConfig, n_evals: int, eval_every: int):
    chunk = functools.partial(train_lib.run_chunk, cfg, n_evals=n_evals, eval_every=eval_every)
    return jax.jit(jax.vmap(chunk), donate_argnums=0)


@functools.lru_cache(maxsize=None)
def _compiled_probe(cfg: RunConfig):
    return jax.jit(jax.vmap(functools.partial(probe_metrics, cfg)))


@dataclass
class ChunkResult:
    """One chunk's metrics on the host: step metrics `[E, n]` at `steps`, probes `[E, k]` at
    `probe_steps`. Step s: the training loss computed in update s (on its batch, before the
    update); probes measured after s updates. Step 0 holds only the probes at init."""

    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    probe_steps: np.ndarray
    probes: dict[str, np.ndarray]
    diverged_step: np.ndarray
    seconds: float


def initial_probe(cfg: RunConfig, state: train_lib.MemberState) -> ChunkResult:
    probes = train_lib.to_host(_compiled_probe(cfg)(state.params, state.probe_key))
    E = len(state.step)
    return ChunkResult(np.zeros(0, int), {k: np.zeros((E, 0)) for k in train_lib.STEP_METRICS},
                       np.zeros(1, int), {k: v[:, None] for k, v in probes.items()},
                       np.asarray(state.diverged_step), 0.0)


def train(cfg: RunConfig, state: train_lib.MemberState, start: int,
          on_chunk: Callable[[train_lib.MemberState, ChunkResult], None] | None = None):
    """Train from step `start` to `cfg.train.steps`, handing each chunk's metrics to `on_chunk`."""
    t = cfg.train
    step = start
    for n_evals, every in train_lib.chunk_plan(start, t.steps, t.chunk_steps, t.eval_every):
        tic = time.perf_counter()
        state, metrics, probes = _compiled_chunk(cfg, n_evals, every)(state)
        metrics, probes = train_lib.to_host(metrics), train_lib.to_host(probes)
        n = n_evals * every
        result = ChunkResult(np.arange(step + 1, step + n + 1), metrics,
                             step + every * np.arange(1, n_evals + 1), probes,
                             np.asarray(state.diverged_step), time.perf_counter() - tic)
        step += n
        if on_chunk is not None:
            on_chunk(state, result)
    return state


__all__ = ["Members", "ChunkResult", "init_ensemble", "initial_probe", "train", "PROBE_METRICS"]
