"""Ensembles: the single-member run over every member's seeds and hyperparameters, sharded over
the devices on a 1-D `ensemble` mesh; on each device `vmap`ped (accelerators) or `lax.map`ped
(CPU), see `memory.member_loop`.

`jit`, `vmap`/`shard_map` and donation are applied here, where the functions are composed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import time
from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from induction_jax import distributed, interventions
from induction_jax import training as train_lib
from induction_jax.config import RunConfig
from induction_jax.members import Members
from induction_jax.memory import ResourceError, member_loop

# A compiled call runs as many probe intervals as take about this long, so progress, metrics
# and signals reach the host about once a second whatever the ensemble size or device.
CHUNK_SECONDS = 1.0


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


def task_arrays(cfg: RunConfig, members: Members) -> dict | None:
    """The members' task parameters as arrays `[E]` (int32 or float32, as each is declared);
    None for a members table without task columns (a run written before tasks were a
    parameter), whose members all train with the task's defaults."""
    if not members.task:
        return None
    kinds = {p.name: p.kind for p in cfg.task.member_params()}
    return {name: jnp.asarray(v, jnp.int32 if kinds[name] is int else jnp.float32)
            for name, v in members.task_values(cfg.task).items()}


def _member_args(cfg: RunConfig, members: Members):
    """The per-member inputs of `init_member`, stacked: seeds, lr, weight decay, intervention,
    task parameters."""
    return (jnp.asarray(members.init_seed, jnp.uint32), jnp.asarray(members.data_seed, jnp.uint32),
            jnp.asarray(members.lr, jnp.float32), jnp.asarray(members.weight_decay, jnp.float32),
            jax.tree.map(jnp.asarray, interventions.build(members.arm, cfg)), task_arrays(cfg, members))


def init_ensemble(cfg: RunConfig, members: Members, devices=None, group: int | None = None):
    """Every member's initial state, stacked on a leading axis sharded across the devices.

    With `group` smaller than the ensemble, members are initialised a group at a time into
    host memory (numpy), so no more than one group's state is ever on the devices."""
    init = functools.partial(train_lib.init_member, cfg)
    if group is None or group >= len(members):
        sharding = ensemble_sharding(len(members), devices)
        return jax.jit(jax.vmap(init), out_shardings=sharding)(*shard(_member_args(cfg, members), sharding))
    args = _member_args(cfg, members)            # built once: every group has the same structure
    parts = []
    for s in _groups(len(members), group):
        sharding = ensemble_sharding(s.stop - s.start, devices)
        compiled = jax.jit(jax.vmap(init), out_shardings=sharding)
        parts.append(jax.device_get(compiled(*shard(jax.tree.map(lambda x, s=s: x[s], args), sharding))))
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def abstract_state(cfg: RunConfig, members: Members):
    """The state's shapes and dtypes (a template for restoring a checkpoint), computing nothing."""
    return jax.eval_shape(jax.vmap(functools.partial(train_lib.init_member, cfg)),
                          *jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), _member_args(cfg, members)))


def _state_mesh(state) -> Mesh:
    """The 1-D `ensemble` mesh the state is laid out on (a one-device mesh if it is not sharded)."""
    sharding = getattr(jax.tree.leaves(state)[0], "sharding", None)
    if isinstance(sharding, NamedSharding):
        return sharding.mesh
    devices = sorted(sharding.device_set, key=lambda d: d.id) if sharding is not None else jax.devices()
    return Mesh(np.asarray(devices[:1]), ("ensemble",))


def over_members(cfg: RunConfig, fn, mesh: Mesh | None, donate: bool, n_shared: int = 0):
    """`fn(member, *shared)` of one member, compiled for the whole ensemble: `vmap`, or (`map`)
    `shard_map` over the mesh with a `lax.map` over each device's members. The `n_shared`
    trailing arguments are the same for every member (replicated, not batched). Both compute
    the same per-member math; `map` keeps one member's activations in cache on a CPU
    (measured: 1.16-1.34x the model-steps/s of `vmap` at 8 members on a 2-core CPU)."""
    return _over_axis(member_loop(cfg), fn, mesh, donate, n_shared)


def _over_axis(loop: str, fn, mesh: Mesh | None, donate: bool, n_shared: int):
    return jax.jit(lambda xs, *shared: map_traced(loop, fn, xs, *shared, mesh=mesh),
                   donate_argnums=(0,) if donate else ())


def local_mesh() -> Mesh:
    """Every device of this process on a 1-D `ensemble` mesh."""
    return Mesh(np.asarray(jax.local_devices()), ("ensemble",))


def map_traced(loop: str, fn, xs, *shared, mesh: Mesh | None = None):
    """Inside a trace: `fn(x, *shared)` for every x along the leading axis of the pytree `xs`,
    stacked. `vmap`; or (`map`) `shard_map` over `mesh` (default: this process's devices) with a
    `lax.map` over each device's share, the axis padded to a multiple of the mesh with copies of
    its last entry (their results dropped). `fn` may close over traced values (replicated).
    The one rule by which members train, LLC chains sample and analyses score their models."""
    if loop == "vmap":
        return jax.vmap(fn, in_axes=(0,) + (None,) * len(shared))(xs, *shared)
    mesh = local_mesh() if mesh is None else mesh
    n = jax.tree.leaves(xs)[0].shape[0]
    pad = -n % mesh.size
    if pad:
        xs = jax.tree.map(lambda x: jnp.concatenate([x, jnp.repeat(x[-1:], pad, 0)]), xs)
    spec = PartitionSpec("ensemble")

    def per_device(xs, *shared):
        return jax.lax.map(lambda x: fn(x, *shared), xs)

    # check_vma off: the members never communicate, and library loops (betainc's while_loop in the
    # LLC diagnostics) start from carries that the check would call replicated, not varying.
    out = jax.shard_map(per_device, mesh=mesh, in_specs=(spec,) + (PartitionSpec(),) * len(shared),
                        out_specs=spec, check_vma=False)(xs, *shared)
    return jax.tree.map(lambda y: y[:n], out) if pad else out


@functools.lru_cache(maxsize=32)
def _compiled_axis(loop: str, fn, n_shared: int):
    return _over_axis(loop, fn, None, False, n_shared)


def map_axis(loop: str, fn, xs, *shared):
    """`map_traced` compiled: one call over this process's devices. The compiled program is
    cached by (loop, fn, shapes): pass an `fn` that compares equal across calls (a module-level
    function or a frozen dataclass), not a fresh lambda, or every call compiles again."""
    return _compiled_axis(loop, fn, len(shared))(xs, *shared)


# What the host loop, the run directory and the trackers read, and no compiled program does
# (tests/test_train.py::test_compiled_programs_never_read_the_host_only_settings checks it, per
# task): cleared from the key of the compiled-program caches, so the same model and task at
# another length, seed range or checkpoint cadence (a resume to more steps, a slice of a sweep,
# a notebook's second run) reuses what this process compiled instead of compiling it again.
HOST_ONLY_TRAIN = ("steps", "first_seed", "seeds", "checkpoint_every", "keep_checkpoints", "snapshots",
                   "chunk_steps", "eval_every", "devices", "member_group")


@functools.lru_cache(maxsize=64)
def program_config(cfg: RunConfig) -> RunConfig:
    """`cfg` with its host-only settings (`HOST_ONLY_TRAIN`, tracking) at their defaults: the
    key under which its compiled programs are cached (itself cached: building a config checks
    it again, and this runs at every chunk)."""
    defaults = {f.name: f.default for f in dataclasses.fields(cfg.train) if f.name in HOST_ONLY_TRAIN}
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **defaults), track=type(cfg.track)())


def _compiled_chunk(cfg: RunConfig, n_evals: int, eval_every: int, mesh: Mesh | None = None):
    return _compiled_chunk_of(program_config(cfg), n_evals, eval_every, mesh)


@functools.lru_cache(maxsize=None)
def _compiled_chunk_of(cfg: RunConfig, n_evals: int, eval_every: int, mesh: Mesh | None = None):
    def chunk(state, n_active, shared):
        return train_lib.run_chunk(cfg, state, n_active, n_evals=n_evals, eval_every=eval_every, shared=shared)

    return over_members(cfg, chunk, mesh, donate=True, n_shared=2)


def _mesh_for(cfg: RunConfig, state) -> Mesh | None:
    return _state_mesh(state) if member_loop(cfg) == "map" else None


def compiled_chunk(cfg: RunConfig, n_evals: int, eval_every: int, state):
    """The compiled chunk for this state's layout (the mesh matters only to `map`):
    `fn(state, n_active, shared) -> (state, step metrics, probes)`, `shared` the task's arrays
    shared by every member (`training.shared_arrays`), un-batched."""
    return _compiled_chunk(cfg, n_evals, eval_every, _mesh_for(cfg, state))


def run_compiled_chunk(cfg: RunConfig, chunk: train_lib.Chunk, state):
    """One `Chunk` of the whole ensemble through its compiled program (`training.run_chunk` per member)."""
    fn = compiled_chunk(cfg, chunk.n_evals, chunk.eval_every, state)
    return fn(state, jnp.int32(chunk.n_active), train_lib.shared_arrays(cfg))


def _compiled_probe(cfg: RunConfig, mesh: Mesh | None):
    return _compiled_probe_of(program_config(cfg), mesh)


@functools.lru_cache(maxsize=None)
def _compiled_probe_of(cfg: RunConfig, mesh: Mesh | None):
    return over_members(cfg, functools.partial(train_lib.member_probes, cfg), mesh, donate=False, n_shared=1)


def run_probe(cfg: RunConfig, state):
    return _compiled_probe(cfg, _mesh_for(cfg, state))(state, train_lib.shared_arrays(cfg))


@dataclass
class ChunkResult:
    """One chunk's metrics on the host: step metrics `[E, n]` at `steps`, probes `[E, k]` and
    per-head weight probes `[E, k, ...]` at `probe_steps`. Step s: the training loss computed
    in update s (on its batch, before the update); probes measured after s updates. Step 0
    holds only the probes at init."""

    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    probe_steps: np.ndarray
    probes: dict[str, np.ndarray]
    head_probes: dict[str, np.ndarray]
    diverged_step: np.ndarray
    seconds: float


def initial_probe(cfg: RunConfig, state: train_lib.MemberState, group: int | None = None) -> ChunkResult:
    """The probes at step 0, `group` members per call (like the chunks, for bounded memory)."""
    probes, heads = _run_grouped(functools.partial(run_probe, cfg), state, group or len(state.step))
    probes, heads = distributed.to_host(probes), distributed.to_host(heads)
    E = len(state.step)
    return ChunkResult(np.zeros(0, int), {k: np.zeros((E, 0)) for k in cfg.task.step_metric_names()},
                       np.zeros(1, int), {k: v[:, None] for k, v in probes.items()},
                       {k: v[:, None] for k, v in heads.items()}, diverged_steps(state), 0.0)


def diverged_steps(state: train_lib.MemberState) -> np.ndarray:
    return distributed.to_host({"d": state.diverged_step})["d"]


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
          group: int | None = None, stops=(), chunk_seconds: float | None = CHUNK_SECONDS,
          on_compile: Callable[[str], contextlib.AbstractContextManager] | None = None):
    """Train from step `start` to `cfg.train.steps`, handing each chunk's metrics to `on_chunk`.

    `group` members train per compiled call (default: all of them at once). Each call ends at
    the next of `stops` (checkpoint or snapshot steps) when it reaches it and otherwise runs
    about `chunk_seconds` of training (None: always the full `chunk_steps`). The chunk length
    changes no number: every length runs in the same compiled program. `on_compile(what)`
    wraps the first call of each program, which compiles it.
    """
    t = cfg.train
    step = start
    group = group or len(state.step)
    stops = sorted(set(stops))
    per_interval = None          # seconds per probe interval, measured
    compiled = set()
    while step < t.steps:
        stop = next((s for s in stops if s > step), t.steps)
        if chunk_seconds is None:
            want = t.chunk_steps
        elif per_interval is None:
            want = 1                         # the first calls measure how long an interval takes
        else:
            want = max(1, int(chunk_seconds / per_interval))
        chunk = train_lib.next_chunk(step, t.steps, t.chunk_steps, t.eval_every, stop, want)
        program = (chunk.n_evals, chunk.eval_every)
        new = program not in compiled
        compiled.add(program)
        tic = time.perf_counter()
        ctx = on_compile("the training step") if new and on_compile else contextlib.nullcontext()
        with ctx:
            state, metrics, probes, heads = _run_grouped(functools.partial(run_compiled_chunk, cfg, chunk), state, group)
            metrics, probes, heads = (distributed.to_host(x) for x in (metrics, probes, heads))
        seconds = time.perf_counter() - tic
        if not new and chunk.eval_every == t.eval_every:
            per_interval = seconds / chunk.n_active
        n = chunk.steps
        metrics = {k: v[:, :n] for k, v in metrics.items()}
        probes = {k: v[:, :chunk.n_active] for k, v in probes.items()}
        heads = {k: v[:, :chunk.n_active] for k, v in heads.items()}
        result = ChunkResult(np.arange(step + 1, step + n + 1), metrics,
                             step + chunk.eval_every * np.arange(1, chunk.n_active + 1), probes, heads,
                             diverged_steps(state), seconds)
        step += n
        if on_chunk is not None:
            on_chunk(state, result)
    return state


def measured_member_bytes(cfg: RunConfig) -> tuple[int, int]:
    """XLA's memory analysis of a one-member chunk: `(bytes per member, bytes per device)`.
    Under `vmap` everything scales with the members; under `map` the temporaries do not; the
    task's shared arrays never do."""
    abstract = abstract_state(cfg, Members.from_config(cfg.replace(seeds=1)))
    n_evals = max(1, cfg.train.chunk_steps // cfg.train.eval_every)
    mesh = Mesh(np.asarray(jax.devices()[:1]), ("ensemble",))
    shared = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), train_lib.shared_arrays(cfg))
    compiled = _compiled_chunk(cfg, n_evals, cfg.train.eval_every, mesh).lower(abstract, jnp.int32(1), shared).compile()
    mem = compiled.memory_analysis()
    if mem is None:
        return 0, 0
    # The task's shared arrays (a text corpus' token stream) are arguments too, but held once per
    # device whatever the member count: counted per device, never per member.
    once = sum(int(a.size) * a.dtype.itemsize for a in jax.tree.leaves(shared))
    io = int(mem.argument_size_in_bytes + mem.output_size_in_bytes) - once
    temp = int(mem.temp_size_in_bytes)
    return (io, temp + once) if member_loop(cfg) == "map" else (io + temp, once)


def machine_key(cpuinfo: str | None = None) -> str:
    """What an XLA executable compiled here depends on beyond JAX's own cache key: the CPU's
    instruction-set flags and the jax/jaxlib build. A home directory shared by machines with
    different CPUs (a cluster's NFS home) would otherwise hand one machine's executable to another,
    and XLA aborts the whole process reading it, which no Python code can catch."""
    import hashlib
    import platform

    import jaxlib

    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            cpuinfo = ""
    flags = next((line.split(":", 1)[1] for line in cpuinfo.splitlines()
                  if line.startswith(("flags", "Features"))), "")
    ident = " ".join([platform.machine(), platform.processor(), jax.__version__, jaxlib.__version__,
                      " ".join(sorted(flags.split()))])
    return hashlib.blake2b(ident.encode(), digest_size=6).hexdigest()


def enable_compilation_cache(cache_dir: str | None = None) -> str | None:
    """Persistent XLA compilation cache, so a repeated run does not compile again.

    On by default on accelerators, in ~/.cache/induction-jax/xla; off by default on a CPU, where
    jaxlib's cache of CPU executables is not reliable (it rejects them on some CPUs,
    jax-ml/jax#38445, and two CI runs of the suite aborted inside it, loading and serializing).
    `cache_dir` or $INDUCTION_JAX_CACHE_DIR chooses the folder (and turns it on, also on a CPU);
    "off" disables.
    Each folder has one sub-folder per machine_key(), so machines sharing a home directory never
    share executables.
    """
    root = cache_dir or os.environ.get("INDUCTION_JAX_CACHE_DIR")
    if root is None and jax.default_backend() != "cpu":
        root = os.path.join(os.path.expanduser("~"), ".cache", "induction-jax", "xla")
    if root is None or root == "off":
        return None
    path = os.path.join(root, machine_key())
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
