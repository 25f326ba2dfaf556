"""How many members fit: memory estimates and the member-group plan, checked before anything
is written.

Two budgets are checked. Device memory holds one group's state and the activations of the
compiled chunk (training batch, probe batch); the host holds every member's state between
groups and one chunk of metrics rows. What cannot fit is refused up front, in one line with
the estimate, before the run directory is touched.
"""

from __future__ import annotations

import os

import jax

from induction_jax.config import RunConfig
from induction_jax.probes import PROBE_METRICS
from induction_jax.training import STEP_METRICS

F32 = 4


class ResourceError(RuntimeError):
    """A device count, member group or ensemble that cannot work (one line, with the estimate)."""


def member_loop(cfg: RunConfig) -> str:
    """'map' or 'vmap': how the members placed on one device share it (`TrainConfig.member_loop`)."""
    loop = cfg.train.member_loop
    if loop == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return loop


def host_memory_bytes() -> int:
    """What the host copies may use: 40% of the RAM (XLA and Python need the rest)."""
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.4)


def available_memory_bytes(devices) -> int:
    """What the ensemble may use on its devices: 80% of each accelerator's limit, or the host
    budget on a CPU (whose devices share the RAM)."""
    local = [d for d in devices if d.process_index == jax.process_index()] or jax.local_devices()
    stats = local[0].memory_stats() if hasattr(local[0], "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"] * 0.8) * len(devices)
    return host_memory_bytes() * jax.process_count()


def n_params(cfg: RunConfig) -> int:
    m = cfg.model
    return (m.d_vocab * m.d_model * 2 + m.n_ctx * m.d_model + m.n_layers * 4 * m.d_model * m.d_model
            + m.n_layers * 2 * m.d_model * m.d_mlp + (m.n_layers * 4 + 2) * m.d_model * m.layer_norm)


def state_bytes(cfg: RunConfig) -> int:
    """One member's training state: parameters and both AdamW moments (fp32)."""
    return 3 * F32 * n_params(cfg) + 256


def activation_bytes(cfg: RunConfig) -> int:
    """One member's live activations in the chunk: the larger of the training step (forward and
    backward) and the probe (forward with every head's pattern and output)."""
    m, d = cfg.model, cfg.data
    T, L, H, D, V = d.seq_len, m.n_layers, m.n_heads, m.d_model, m.d_vocab
    per_seq = L * (H * T * T * 3 + T * D * 8 + T * max(m.d_mlp, 1) * 2) + T * V * 3
    train = 2 * F32 * d.batch_size * per_seq
    probe = F32 * d.probe_batch_size * (L * (H * T * T + T * H * D + T * D * 2) + T * V * 2)
    return max(train, probe)


def chunk_output_bytes(cfg: RunConfig) -> int:
    """One member's metrics for one compiled chunk, on the device and as host rows and text."""
    t = cfg.train
    steps = max(t.eval_every, t.chunk_steps // t.eval_every * t.eval_every)
    return steps * (len(STEP_METRICS) * F32 + 12 * 8 * 2 + 120) + len(PROBE_METRICS) * F32 * steps // t.eval_every


def rough_member_bytes(cfg: RunConfig) -> tuple[int, int]:
    """`(bytes per member, bytes per device)` on the devices: activations count per member under
    `vmap`, once per device under `map`; state and chunk outputs count per member."""
    per_member = state_bytes(cfg) + chunk_output_bytes(cfg)
    acts = activation_bytes(cfg)
    return (per_member, acts) if member_loop(cfg) == "map" else (per_member + acts, 0)


def _gib(b: float) -> str:
    return f"{b / 2**30:.1f} GiB"


def check_host(cfg: RunConfig, n_members: int) -> None:
    """Refuse an ensemble whose state alone cannot be held by the host."""
    need = (state_bytes(cfg) + chunk_output_bytes(cfg)) * n_members
    avail = host_memory_bytes()
    if need > avail:
        fit = avail // (state_bytes(cfg) + chunk_output_bytes(cfg))
        raise ResourceError(f"{n_members} members need about {_gib(need)} of host memory for their parameters, "
                            f"AdamW state and metrics ({(need / n_members) / 2**20:.2f} MiB each), more than the "
                            f"{_gib(avail)} available; at most {fit} members fit")


def plan_groups(cfg: RunConfig, n_members: int, devices, log=print, measured=None) -> int:
    """How many members train together per call: `member_group`, or as many as fit.

    `measured` (optional) returns XLA's `(bytes per member, bytes per device)` for the compiled
    chunk; it is consulted only when the rough estimate is not clearly inside the budget.
    """
    n_dev = len(devices)
    check_host(cfg, n_members)
    if cfg.train.member_group:
        if cfg.train.member_group > n_members:
            raise ResourceError(f"member_group={cfg.train.member_group}: larger than the ensemble "
                                f"({n_members} members); allowed: 0 (auto) to {n_members}")
        return cfg.train.member_group
    avail = available_memory_bytes(devices)
    per_member, per_device = rough_member_bytes(cfg)
    total = per_member * n_members + per_device * n_dev
    if total * 4 >= avail and measured is not None:
        m_member, m_device = measured(cfg)
        if m_member:
            per_member, per_device = max(per_member, m_member), max(per_device, m_device)
            total = per_member * n_members + per_device * n_dev
    if per_member + per_device > avail // n_dev:
        raise ResourceError(f"one member needs about {(per_member + per_device) / 2**20:.0f} MiB, more than the "
                            f"{avail / n_dev / 2**20:.0f} MiB available per device; reduce batch_size, "
                            f"probe_batch_size, n_ctx or d_model")
    estimate = (f"{per_member / 2**20:.2f} MiB per member + {per_device / 2**20:.1f} MiB per device; "
                f"{n_members} members need about {_gib(total)} of {_gib(avail)} available")
    if total <= avail:
        if n_members >= 256:
            log(f"memory estimate: {estimate}: one group")
        return n_members
    group = max(n_dev, int((avail - per_device * n_dev) // per_member) // n_dev * n_dev)
    log(f"memory estimate: {estimate}: training in groups of {group}")
    return group
