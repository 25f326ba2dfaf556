"""Ensembles: the single-member run over seeds and per-member hyperparameters, sharded over
the devices on a 1-D `ensemble` mesh; on each device `vmap`ped (accelerators) or `lax.map`ped
(CPU), see `member_loop`.

`jit`, `vmap`/`shard_map` and donation are applied here, where the functions are composed.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from induction_jax import distributed
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


class ResourceError(RuntimeError):
    """A device count or member group that cannot work (one line, with the estimate)."""


def select_devices(requested: int = 0) -> list:
    devices = jax.devices()
    if requested > len(devices):
        raise ResourceError(f"devices={requested}: only {len(devices)} {devices[0].platform} device(s) here; "
                            f"allowed: 0 (all) to {len(devices)}")
    return devices[:requested] if requested else devices


def ensemble_sharding(n_members: int, devices=None) -> NamedSharding:
    """Shard the leading (ensemble) axis over the largest number of devices that divides the
    ensemble, on a 1-D mesh named `ensemble`; across hosts the same mesh spans processes."""
    devices = list(devices if devices is not None else jax.devices())
    if jax.process_count() > 1 and n_members % len(devices):
        raise ResourceError(f"{n_members} members over {len(devices)} devices in {jax.process_count()} "
                            f"processes: the ensemble must be a multiple of the device count")
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


def member_loop(cfg: RunConfig) -> str:
    """'map' or 'vmap': how the members placed on one device share it (`TrainConfig.member_loop`)."""
    loop = cfg.train.member_loop
    if loop == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return loop


def _state_mesh(state) -> Mesh:
    """The 1-D `ensemble` mesh the state is laid out on (a one-device mesh if it is not sharded)."""
    sharding = getattr(jax.tree.leaves(state)[0], "sharding", None)
    if isinstance(sharding, NamedSharding):
        return sharding.mesh
    devices = sorted(sharding.device_set, key=lambda d: d.id) if sharding is not None else jax.devices()
    return Mesh(np.asarray(devices[:1]), ("ensemble",))


def _over_members(cfg: RunConfig, fn, mesh: Mesh | None, donate: bool):
    """`fn` of one member, compiled for the whole ensemble: `vmap`, or (`map`) `shard_map` over
    the mesh with a `lax.map` over each device's members. Both compute the same per-member
    math; `map` keeps one member's activations in cache on a CPU (measured: 1.16-1.34x the
    model-steps/s of `vmap` at 8 members on a 2-core CPU, benchmarks/throughput.py)."""
    donate_argnums = (0,) if donate else ()
    if member_loop(cfg) == "vmap":
        return jax.jit(jax.vmap(fn), donate_argnums=donate_argnums)
    spec = PartitionSpec("ensemble")
    return jax.jit(jax.shard_map(lambda xs: jax.lax.map(fn, xs), mesh=mesh, in_specs=spec, out_specs=spec),
                   donate_argnums=donate_argnums)


@functools.lru_cache(maxsize=None)
def _compiled_chunk(cfg: RunConfig, n_evals: int, eval_every: int, mesh: Mesh | None = None):
    chunk = functools.partial(train_lib.run_chunk, cfg, n_evals=n_evals, eval_every=eval_every)
    return _over_members(cfg, chunk, mesh, donate=True)


def _mesh_for(cfg: RunConfig, state) -> Mesh | None:
    return _state_mesh(state) if member_loop(cfg) == "map" else None


def compiled_chunk(cfg: RunConfig, n_evals: int, eval_every: int, state):
    """The compiled chunk for this state's layout (the mesh matters only to `map`)."""
    return _compiled_chunk(cfg, n_evals, eval_every, _mesh_for(cfg, state))


def run_chunk(cfg: RunConfig, n_evals: int, eval_every: int, state):
    return compiled_chunk(cfg, n_evals, eval_every, state)(state)


@functools.lru_cache(maxsize=None)
def _compiled_probe(cfg: RunConfig, mesh: Mesh | None):
    return _over_members(cfg, lambda p: probe_metrics(cfg, *p), mesh, donate=False)


def run_probe(cfg: RunConfig, state):
    return _compiled_probe(cfg, _mesh_for(cfg, state))((state.params, state.probe_key))


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


def initial_probe(cfg: RunConfig, state: train_lib.MemberState, group: int | None = None) -> ChunkResult:
    """The probes at step 0, `group` members per call (like the chunks, for bounded memory)."""
    probes = distributed.to_host(_run_grouped(functools.partial(run_probe, cfg), state,
                                              group or len(state.step)))
    E = len(state.step)
    return ChunkResult(np.zeros(0, int), {k: np.zeros((E, 0)) for k in train_lib.STEP_METRICS},
                       np.zeros(1, int), {k: v[:, None] for k, v in probes.items()},
                       diverged_steps(state), 0.0)


def diverged_steps(state: train_lib.MemberState) -> np.ndarray:
    return distributed.to_host({"d": state.diverged_step})["d"]


def available_memory_bytes(devices) -> int:
    """What the ensemble may use: 80% of each accelerator's limit, or 40% of the host's RAM in
    all on a CPU (whose devices share it)."""
    local = [d for d in devices if d.process_index == jax.process_index()] or jax.local_devices()
    stats = local[0].memory_stats() if hasattr(local[0], "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"] * 0.8) * len(devices)
    # XLA's memory analysis misses some runtime allocations: keep well inside the RAM.
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.4) * jax.process_count()


def rough_member_bytes(cfg: RunConfig) -> tuple[int, int]:
    """A quick upper-bound-style estimate (fp32): `(bytes per member, bytes per device)`.

    Activations (attention patterns and residuals of forward and backward) count per member
    under `vmap`, once per device under `map`; parameters and AdamW moments count per member."""
    m, d = cfg.model, cfg.data
    B, T = d.batch_size, d.seq_len
    acts = m.n_layers * B * (m.n_heads * T * T * 3 + T * m.d_model * 8 + T * max(m.d_mlp, 1) * 2)
    acts += B * T * m.d_vocab * 3
    n_params = m.d_vocab * m.d_model * 2 + m.n_ctx * m.d_model + m.n_layers * 4 * m.d_model * m.d_model
    state, acts = 4 * 4 * n_params, 4 * 2 * acts
    return (state, acts) if member_loop(cfg) == "map" else (state + acts, 0)


def member_bytes(cfg: RunConfig) -> tuple[int, int]:
    """XLA's memory analysis of a one-member chunk: `(bytes per member, bytes per device)`.
    Under `vmap` everything scales with the members; under `map` the temporaries do not."""
    abstract = jax.eval_shape(lambda: init_ensemble(cfg, Members.from_config(cfg.replace(seeds=1)),
                                                     jax.devices()[:1]))
    n_evals = max(1, cfg.train.chunk_steps // cfg.train.eval_every)
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("ensemble",))
    mem = _compiled_chunk(cfg, n_evals, cfg.train.eval_every, mesh).lower(abstract).compile().memory_analysis()
    if mem is None:
        return 0, 0
    io, temp = int(mem.argument_size_in_bytes + mem.output_size_in_bytes), int(mem.temp_size_in_bytes)
    return (io, temp) if member_loop(cfg) == "map" else (io + temp, 0)


def plan_groups(cfg: RunConfig, n_members: int, devices, log=print) -> int:
    """How many members train together per call: `member_group`, or as many as fit."""
    n_dev = len(devices)
    if cfg.train.member_group:
        if cfg.train.member_group > n_members:
            raise ResourceError(f"member_group={cfg.train.member_group}: larger than the ensemble "
                                f"({n_members} members); allowed: 0 (auto) to {n_members}")
        return cfg.train.member_group
    avail = available_memory_bytes(devices)
    rough_member, rough_device = rough_member_bytes(cfg)
    rough_total = rough_member * n_members + rough_device * n_dev
    if rough_total * 4 < avail:     # clearly fits: skip the compile that measures it
        if n_members >= 256:
            log(f"memory estimate (rough): {rough_member / 2**20:.1f} MiB per member + "
                f"{rough_device / 2**20:.1f} MiB per device; {n_members} members need about "
                f"{rough_total / 2**30:.1f} GiB of {avail / 2**30:.1f} GiB available: one group")
        return n_members
    per_member, per_device = member_bytes(cfg)
    if per_member == 0:
        return n_members
    if per_member + per_device > avail // n_dev:
        raise ResourceError(f"one member needs about {(per_member + per_device) / 2**20:.0f} MiB, more "
                            f"than the {avail / n_dev / 2**20:.0f} MiB available per device; reduce "
                            f"batch_size, n_ctx or d_model")
    fit = int((avail - per_device * n_dev) // per_member)
    if fit >= n_members:
        return n_members
    group = max(n_dev, fit // n_dev * n_dev)
    log(f"memory estimate: {per_member / 2**20:.1f} MiB per member + {per_device / 2**20:.1f} MiB per "
        f"device; {n_members} members need {(per_member * n_members + per_device * n_dev) / 2**30:.1f} GiB "
        f"> {avail / 2**30:.1f} GiB available: training in groups of {group}")
    return group


def _groups(n: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _run_grouped(fn, state, group: int):
    """Apply a compiled chunk to member groups one after another (bounded memory).

    Between groups the whole state lives on the host, and each group is placed on the devices
    with its own even sharding: slicing the device-sharded ensemble at boundaries that cut
    across shards needs cross-device collectives, which deadlocked on the CPU backend.
    """
    n = len(state.step)
    if group >= n:
        return fn(state)
    host = jax.device_get(state)
    outs = []
    for s in _groups(n, group):
        part = jax.tree.map(lambda x, s=s: x[s], host)
        outs.append(jax.device_get(fn(shard(part, ensemble_sharding(s.stop - s.start)))))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *outs)


def train(cfg: RunConfig, state: train_lib.MemberState, start: int,
          on_chunk: Callable[[train_lib.MemberState, ChunkResult], None] | None = None,
          group: int | None = None):
    """Train from step `start` to `cfg.train.steps`, handing each chunk's metrics to `on_chunk`.

    `group` members train per compiled call (default: all of them at once)."""
    t = cfg.train
    step = start
    group = group or len(state.step)
    for n_evals, every in train_lib.chunk_plan(start, t.steps, t.chunk_steps, t.eval_every):
        tic = time.perf_counter()
        state, metrics, probes = _run_grouped(functools.partial(run_chunk, cfg, n_evals, every), state, group)
        metrics, probes = distributed.to_host(metrics), distributed.to_host(probes)
        n = n_evals * every
        result = ChunkResult(np.arange(step + 1, step + n + 1), metrics,
                             step + every * np.arange(1, n_evals + 1), probes,
                             diverged_steps(state), time.perf_counter() - tic)
        step += n
        if on_chunk is not None:
            on_chunk(state, result)
    return state


__all__ = ["Members", "ChunkResult", "init_ensemble", "initial_probe", "train", "PROBE_METRICS"]


def enable_compilation_cache(cache_dir: str | None = None) -> str | None:
    """Persistent XLA compilation cache, so a repeated run does not compile again.

    Default directory: $INDUCTION_JAX_CACHE_DIR or ~/.cache/induction-jax/xla; "off" disables.
    """
    path = cache_dir or os.environ.get("INDUCTION_JAX_CACHE_DIR",
                                       os.path.join(os.path.expanduser("~"), ".cache", "induction-jax", "xla"))
    if path == "off":
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
