"""How many members fit: memory estimates and the member-group plan, checked before anything
is written.

Two budgets are checked. Device memory holds one group's state and the activations of the
compiled chunk (training batch, probe batch); the host holds every member's state between
groups and one chunk of metrics rows. What cannot fit is refused up front, in one line with
the estimate, before the run directory is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import jax

from induction_jax import layout
from induction_jax.config import RunConfig

F32 = 4


class ResourceError(RuntimeError):
    """A device count, member group or ensemble that cannot work (one line, with the estimate)."""


def member_loop(cfg: RunConfig | None = None) -> str:
    """'map' or 'vmap': how the members placed on one device share it (`TrainConfig.member_loop`;
    `auto`, or no config: `map` on a CPU, `vmap` on an accelerator). Every batched axis of
    independent models (members, LLC chains and step sizes) follows this one rule."""
    loop = "auto" if cfg is None else cfg.train.member_loop
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
    """One member's parameter count, from the layout (`layout.LAYOUT`) the model is built from."""
    return layout.n_params(cfg.model)


def state_bytes(cfg: RunConfig) -> int:
    """One member's training state: parameters and both AdamW moments (fp32)."""
    return 3 * F32 * n_params(cfg) + 256


def activation_bytes(cfg: RunConfig) -> int:
    """One member's live activations in the chunk: the larger of the training step (forward and
    backward) and the probe (forward with every head's pattern and output)."""
    m, d = cfg.model, cfg.data
    T, L, H, D, V = cfg.task.seq_len, m.n_layers, m.n_heads, m.d_model, m.d_vocab
    per_seq = L * (H * T * T * 3 + T * D * 8 + T * max(m.d_mlp, 1) * 2) + T * V * 3
    train = 2 * F32 * d.batch_size * per_seq
    probe = F32 * cfg.task.probe_sequences(d.probe_batch_size) * (L * (H * T * T + T * H * D + T * D * 2) + T * V * 2)
    return max(train, probe)


def chunk_output_bytes(cfg: RunConfig) -> int:
    """One member's metrics for one compiled chunk, on the device and as host rows and text."""
    t = cfg.train
    steps = max(t.eval_every, t.chunk_steps // t.eval_every * t.eval_every)
    n_step, n_probe = len(cfg.task.step_metrics), len(cfg.task.probe_metric_info)
    return steps * (n_step * F32 + 12 * 8 * 2 + 120) + n_probe * F32 * steps // t.eval_every


def rough_member_bytes(cfg: RunConfig) -> tuple[int, int]:
    """`(bytes per member, bytes per device)` on the devices: activations count per member under
    `vmap`, once per device under `map`; state and chunk outputs count per member."""
    per_member = state_bytes(cfg) + chunk_output_bytes(cfg)
    acts = activation_bytes(cfg)
    return (per_member, acts) if member_loop(cfg) == "map" else (per_member + acts, 0)


def host_member_bytes(cfg: RunConfig) -> int:
    """One member's share of the host at a run's peak, besides what is on the devices: a
    checkpoint holds a host copy of the state (its digest) while Orbax writes its own copy of
    the state and of the params in the background, and one chunk of metrics rows is in flight.
    (Between member groups the whole state is on the host too, in about as many copies.)"""
    return 2 * state_bytes(cfg) + F32 * n_params(cfg) + chunk_output_bytes(cfg)


@dataclass(frozen=True)
class Estimate:
    """The one memory estimate: what the refusal (`check_host`) and the group planner
    (`plan_groups`) both read, so they cannot disagree.

    Training `n` members in groups of `g` needs `host_member * n` bytes of host memory, and
    `device_member * g + device_fixed` per device-set on the devices. On a CPU the devices are
    the host's RAM (`shared`): both count against the one budget. Checked against the peak RSS
    of real runs in tests/test_estimates_and_wording.py (benchmarks/memory_estimate.py)."""

    host_member: int       # bytes per member on the host (checkpoint copies, metrics rows)
    device_member: int     # bytes per member of a group on the devices (state, outputs; activations under vmap)
    device_fixed: int      # bytes per device (activations under map)
    n_devices: int
    shared: bool           # the devices use the host's RAM (CPU)
    host_avail: int
    device_avail: int      # all devices together

    def device_bytes(self, group: int) -> int:
        return self.device_member * group + self.device_fixed * self.n_devices

    def host_bytes(self, n_members: int, group: int) -> int:
        return self.host_member * n_members + (self.device_bytes(group) if self.shared else 0)

    def fits(self, n_members: int, group: int) -> bool:
        return (self.host_bytes(n_members, group) <= self.host_avail
                and self.device_bytes(group) <= self.device_avail)

    def smallest_group(self, n_members: int) -> int:
        return min(n_members, self.n_devices)

    def max_members(self) -> int:
        """The most members that fit at all (trained in the smallest groups, one per device)."""
        spare = self.host_avail - (self.device_bytes(self.n_devices) if self.shared else 0)
        if spare < 0 or self.device_bytes(self.n_devices) > self.device_avail:
            return 0
        return int(spare // max(self.host_member, 1))

    def max_group(self, n_members: int) -> int:
        """The largest group (a multiple of the device count, at most `n_members`) that fits."""
        spare = min(self.device_avail, self.host_avail - self.host_member * n_members if self.shared
                    else self.device_avail) - self.device_fixed * self.n_devices
        group = int(spare // max(self.device_member, 1)) // self.n_devices * self.n_devices
        return min(n_members, max(group, self.smallest_group(n_members)))


def estimate(cfg: RunConfig, devices=None, measured=None) -> Estimate:
    """The estimate for this config on these devices (default: all). `measured` (optional)
    gives XLA's `(bytes per member, bytes per device)` of the compiled chunk; the larger of it
    and the rough figure is used."""
    devices = list(devices if devices is not None else jax.devices())
    per_member, per_device = rough_member_bytes(cfg)
    if measured is not None:
        m_member, m_device = measured(cfg)
        if m_member:
            per_member, per_device = max(per_member, m_member), max(per_device, m_device)
    shared = devices[0].platform == "cpu"
    return Estimate(host_member_bytes(cfg), per_member, per_device, len(devices), shared,
                    host_memory_bytes(), available_memory_bytes(devices))


def _gib(b: float) -> str:
    return f"{b / 2**30:.1f} GiB"


def _mib(b: float) -> str:
    return f"{b / 2**20:.2f} MiB"


def check_host(cfg: RunConfig, n_members: int, devices=None, est: Estimate | None = None) -> None:
    """Refuse an ensemble that cannot fit even trained in the smallest groups, by `est` (the
    estimate `plan_groups` uses; computed here when not given)."""
    est = est or estimate(cfg, devices)
    group = est.smallest_group(n_members)
    if est.host_bytes(n_members, group) > est.host_avail:
        devices_too = (f", plus {_mib(est.device_bytes(group))} for a group of {group} on the devices, which share "
                       f"the RAM" if est.shared else "")
        raise ResourceError(f"{n_members} members need about {_gib(est.host_bytes(n_members, group))} of host "
                            f"memory for their parameters, AdamW state, checkpoint copies and metrics "
                            f"({_mib(est.host_member)} each{devices_too}), more than the {_gib(est.host_avail)} "
                            f"available; at most {est.max_members()} members fit")


def plan_groups(cfg: RunConfig, n_members: int, devices, log=print, measured=None) -> int:
    """How many members train together per call: `member_group`, or as many as fit.

    One `Estimate` answers both questions: whether the ensemble fits at all (`check_host`) and
    in which groups. `measured` (optional) returns XLA's `(bytes per member, bytes per device)`
    for the compiled chunk; it is consulted only when the rough estimate is not clearly inside
    the budget.
    """
    est = estimate(cfg, devices)
    n_dev = est.n_devices
    if measured is not None and (est.host_bytes(n_members, n_members) * 4 >= est.host_avail
                                 or est.device_bytes(n_members) * 4 >= est.device_avail):
        est = estimate(cfg, devices, measured)
    one = est.device_member + est.device_fixed
    if one > est.device_avail // n_dev:
        raise ResourceError(f"one member needs about {one / 2**20:.0f} MiB, more than the "
                            f"{est.device_avail / n_dev / 2**20:.0f} MiB available per device; reduce batch_size, "
                            f"probe_batch_size, n_ctx or d_model")
    check_host(cfg, n_members, est=est)
    if cfg.train.member_group:
        if cfg.train.member_group > n_members:
            raise ResourceError(f"member_group={cfg.train.member_group}: larger than the ensemble "
                                f"({n_members} members); allowed: 0 (auto) to {n_members}")
        return cfg.train.member_group
    group = n_members if est.fits(n_members, n_members) else est.max_group(n_members)
    where = "of host memory (devices included)" if est.shared else "on the devices"
    need = est.host_bytes(n_members, group) if est.shared else est.device_bytes(group)
    avail = est.host_avail if est.shared else est.device_avail
    estimate_text = (f"{_mib(est.host_member)} per member on the host + {_mib(est.device_member)} per member and "
                     f"{est.device_fixed / 2**20:.1f} MiB per device on the devices; {n_members} members need "
                     f"about {_gib(need)} {where} of {_gib(avail)} available")
    if group >= n_members:
        if n_members >= 256:
            log(f"memory estimate: {estimate_text}: one group")
        return n_members
    log(f"memory estimate: {estimate_text}: training in groups of {group}")
    return group
