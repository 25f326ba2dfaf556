"""Frozen, typed run configuration: one dataclass per concern (model, data, training).

Every field carries its help text and allowed range as metadata, so the command line,
`config.json` and the validation all come from this one place.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class ConfigError(ValueError):
    """A configuration value out of range; the message is one line naming field, value, rule."""


def config_field(default: Any, help: str, *, lo: float | None = None, hi: float | None = None,
                 lo_open: bool = False, choices: tuple | None = None):
    """A dataclass field with its help text and allowed range, read by `check_fields`, the
    command line's flags and the report."""
    return field(default=default,
                 metadata={"help": help, "lo": lo, "hi": hi, "lo_open": lo_open, "choices": choices})


def check_fields(obj) -> None:
    """Type- and range-check every field of a dataclass built from `config_field`s."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        meta = f.metadata
        expected = f.type if isinstance(f.type, type) else {"int": int, "float": float, "bool": bool,
                                                             "str": str}.get(str(f.type))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            object.__setattr__(obj, f.name, value)
        if expected is not None and (not isinstance(value, expected)
                                     or (expected is not bool and isinstance(value, bool))):
            raise ConfigError(f"{f.name}={value!r}: must be of type {expected.__name__}")
        if expected is float and not math.isfinite(value):
            raise ConfigError(f"{f.name}={value!r}: must be a finite number")
        lo, hi = meta.get("lo"), meta.get("hi")
        if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
            rule = f"> {lo}" if meta.get("lo_open") else f">= {lo}"
            if hi is not None:
                rule += f" and <= {hi}"
            raise ConfigError(f"{f.name}={value!r}: must be {rule}")
        if hi is not None and value > hi:
            raise ConfigError(f"{f.name}={value!r}: must be <= {hi}")
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(f"{f.name}={value!r}: must be one of {', '.join(map(str, choices))}")


@dataclass(frozen=True)
class ModelConfig:
    """The transformer. Reference: 2-layer, 4-head, attention-only, no LayerNorm, no biases."""

    d_vocab: int = config_field(64, "vocabulary size V (tokens are 0..V-1)", lo=2, hi=1_000_000)
    n_ctx: int = config_field(50, "context length (number of learned positions)", lo=2, hi=100_000)
    n_layers: int = config_field(2, "number of transformer layers (1 is the control that cannot do induction)",
                           lo=1, hi=64)
    n_heads: int = config_field(4, "attention heads per layer", lo=1, hi=256)
    d_model: int = config_field(64, "residual stream width D (d_head = D / n_heads)", lo=1, hi=65_536)
    d_mlp: int = config_field(0, "MLP hidden width per layer; 0 = attention-only (reference)", lo=0, hi=1_000_000)
    layer_norm: bool = config_field(False, "pre-LayerNorm before each block and the unembedding (reference: off)")
    init_std: float = config_field(0.0, "std of the normal init of every weight; 0 = 0.8/sqrt(d_model), "
                             "TransformerLens' default", lo=0.0, hi=100.0)

    def __post_init__(self):
        check_fields(self)
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model={self.d_model}: must be divisible by n_heads={self.n_heads}")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def attn_only(self) -> bool:
        return self.d_mlp == 0

    @property
    def weight_std(self) -> float:
        return self.init_std or 0.8 / math.sqrt(self.d_model)


@dataclass(frozen=True)
class DataConfig:
    """How batches are drawn and probed; what they hold is the task's (`RunConfig.task`)."""

    batch_size: int = config_field(64, "sequences per training step", lo=1, hi=1_000_000)
    probe_batch_size: int = config_field(64, "sequences in the fixed probe batch used for evaluation",
                                         lo=1, hi=1_000_000)
    probe_seed: int = config_field(0, "seed of the probe batch, shared by every member so that members are "
                                   "compared on the same sequences", lo=0, hi=2**31 - 1)
    per_member_probes: bool = config_field(False, "give each member its own probe batch, drawn from its data "
                                           "seed, instead of the shared one")

    def __post_init__(self):
        check_fields(self)


def snapshot_schedule(spec: str, steps: int, eval_every: int) -> list[int]:
    """The steps a snapshot spec names (sorted, on the probe grid, with 0 and the last step);
    a spec that names no step or more steps than the run has raises ConfigError."""
    kind, _, count = spec.partition(":")
    if spec == "none":
        return []
    allowed = "allowed: none, log, log:N (N >= 2), every:N (N >= 1)"
    grid = steps // eval_every                     # probe-grid points after step 0
    try:
        n = int(count) if count else (min(40, grid + 1) if kind == "log" else None)
    except ValueError:
        n = None
    if kind not in ("log", "every") or n is None:
        raise ConfigError(f"snapshots={spec!r}: not a snapshot schedule; {allowed}")
    if kind == "every":
        if n < 1:
            raise ConfigError(f"snapshots={spec!r}: a schedule with no steps; {allowed}")
        chosen = set(range(0, steps, n))
    else:
        if n < 2:
            raise ConfigError(f"snapshots={spec!r}: a schedule with no steps between the first and the last; {allowed}")
        if n > grid + 1:
            raise ConfigError(f"snapshots={spec!r}: {n} snapshots, more than the {grid + 1} probe steps of this run "
                              f"(steps={steps}, eval_every={eval_every}); use at most log:{grid + 1}")
        chosen = set(np.geomspace(eval_every, steps, n - 1).tolist())
    snapped = {0, steps} | {min(steps, max(eval_every, int(round(s / eval_every)) * eval_every))
                            for s in chosen if s > 0}
    return sorted(snapped)


@dataclass(frozen=True)
class TrainConfig:
    """AdamW on fresh batches; an ensemble of `seeds` members with seeds first_seed, first_seed+1, ...
    (the shorthand in which a member's init seed and data seed are the same)."""

    seeds: int = config_field(8, "ensemble size: members trained at once, one per seed (init seed = data seed)",
                        lo=1, hi=1_000_000)
    first_seed: int = config_field(0, "seed of member 0; member i has seed first_seed + i", lo=0, hi=2**31 - 1)
    steps: int = config_field(2000, "optimiser steps per member", lo=1, hi=100_000_000)
    lr: float = config_field(1e-2, "AdamW learning rate (the reference experiment uses 1e-3: see docs/task.md)", lo=0.0, hi=10.0, lo_open=True)
    weight_decay: float = config_field(0.01, "AdamW decoupled weight decay (PyTorch's AdamW default)",
                                 lo=0.0, hi=10.0)
    b1: float = config_field(0.9, "AdamW beta1", lo=0.0, hi=0.999999)
    b2: float = config_field(0.999, "AdamW beta2", lo=0.0, hi=0.99999999)
    eps: float = config_field(1e-8, "AdamW epsilon", lo=0.0, hi=1.0, lo_open=True)
    chunk_steps: int = config_field(250, "most steps per compiled lax.scan call (rounded to a multiple of "
                              "eval_every); each call runs as many of them as take about a second, so "
                              "metrics and progress reach the host about once a second", lo=1, hi=1_000_000)
    eval_every: int = config_field(10, "steps between in-training probes on the fixed probe batch",
                             lo=1, hi=1_000_000)
    checkpoint_every: int = config_field(500, "steps between checkpoints of the whole ensemble state (taken at "
                                   "the end of the chunk that reaches them)", lo=1, hi=100_000_000)
    keep_checkpoints: int = config_field(3, "how many of the latest checkpoints to keep", lo=1, hi=1000)
    devices: int = config_field(0, "local devices to shard the ensemble over; 0 = all", lo=0, hi=65_536)
    member_group: int = config_field(0, "members trained together per compiled call; 0 = as many as fit in "
                               "memory (estimated per member), larger ensembles run in groups", lo=0,
                               hi=100_000_000)
    member_loop: str = config_field("auto", "how the members on one device train: 'vmap' batches them into one "
                              "program (best on GPU/TPU), 'map' runs them one after another inside it "
                              "(best on CPU, where one member's activations stay in cache); auto = map "
                              "on CPU, vmap elsewhere", choices=("auto", "vmap", "map"))
    weight_probes: bool = config_field(True, "at every probe step, also the per-head weight-based scores (positional "
                                 "previous-token score of every head, Q/K/V composition of every head pair) "
                                 "into head_metrics.csv (attention-only models without LayerNorm)")
    snapshots: str = config_field("none", "parameters of every member saved during training, one file per step: "
                            "'log' (40 log-spaced steps, fewer on a short run; dense early), 'log:N', 'every:N' (every N "
                            "steps), or 'none'; steps are snapped to the probe grid, step 0 and the last "
                            "included")
    divergence_loss: float = config_field(10.0, "a member whose training loss exceeds this multiple of ln V, or is "
                                    "not finite, has diverged: its updates stop at that step (the default "
                                    "run's largest loss is 1.003 ln V)", lo=1.0, hi=1e30, lo_open=True)
    compute_dtype: str = config_field("float32", "dtype of the training forward and backward pass; parameters, "
                                "AdamW state, softmax and loss stay float32, and probes and analysis "
                                "always run in float32", choices=("float32", "bfloat16"))

    def __post_init__(self):
        check_fields(self)
        snapshot_schedule(self.snapshots, self.steps, self.eval_every)

    @property
    def snapshot_steps(self) -> list[int]:
        return snapshot_schedule(self.snapshots, self.steps, self.eval_every)


@dataclass(frozen=True)
class TrackConfig:
    """Where the run's metrics also go, besides metrics.csv (induction_jax/tracking.py); a resumed
    run may change these."""

    log: str = config_field("none", "also send every value of metrics.csv to TensorBoard (event files in "
                            "RUN_DIR/tensorboard/) or Weights & Biases (RUN_DIR/wandb/, offline unless "
                            "WANDB_MODE is set), or both; needs pip install 'induction-jax[track]'",
                            choices=("none", "tensorboard", "wandb", "tensorboard+wandb"))
    log_group: str = config_field("ensemble", "with --log: one tracker run for the ensemble (scalars "
                                  "member<i>/<metric>, the members table as hyperparameters) or one per member "
                                  "(its row as hyperparameters)", choices=("ensemble", "member"))

    def __post_init__(self):
        check_fields(self)


def default_task():
    from induction_jax.tasks import Repeated
    return Repeated()


@dataclass(frozen=True)
class RunConfig:
    """The whole configuration: the model, how data is drawn, training, and the task
    (a `tasks.Task`, whose own fields are its settings)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: Any = field(default_factory=default_task)
    track: TrackConfig = field(default_factory=TrackConfig)

    def __post_init__(self):
        from induction_jax.tasks import Task

        if not isinstance(self.task, Task):
            raise ConfigError(f"task: must be an induction_jax.tasks.Task, got {type(self.task).__name__}")
        self.task.check(self.model)

    def to_dict(self) -> dict:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS} | {"task": self.task.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Build from a (possibly partial) dict; unknown sections or keys are rejected by name.
        A config written before tasks were a parameter (no `task` section; the repeated task's
        settings in `data`) reads as the repeated task."""
        from induction_jax import tasks

        if not isinstance(d, dict):
            raise ConfigError(f"config: must be a JSON object with sections {', '.join(ALL_SECTIONS)}")
        unknown = set(d) - set(ALL_SECTIONS)
        if unknown:
            raise ConfigError(f"config: unknown section {sorted(unknown)[0]!r}; allowed: "
                              f"{', '.join(ALL_SECTIONS)}")
        d = upgrade_config_dict(d)
        parts = {}
        for name, klass in SECTIONS.items():
            sub = d.get(name, {})
            if not isinstance(sub, dict):
                raise ConfigError(f"config.{name}: must be a JSON object")
            allowed = {f.name for f in dataclasses.fields(klass)}
            bad = set(sub) - allowed
            if bad:
                raise ConfigError(f"config.{name}: unknown key {sorted(bad)[0]!r}; allowed: "
                                  f"{', '.join(sorted(allowed))}")
            parts[name] = klass(**sub)
        parts["task"] = tasks.from_dict(d.get("task", {"name": "repeated"}))
        return cls(**parts)

    @classmethod
    def preset(cls, name: str) -> "RunConfig":
        """A named configuration (`PRESETS`)."""
        if name not in PRESETS:
            raise ConfigError(f"preset {name!r}: unknown; allowed: {', '.join(PRESETS)}")
        return cls().replace(**PRESETS[name]["fields"])

    def replace(self, **overrides) -> "RunConfig":
        """Copy with flat field overrides, e.g. replace(n_layers=1, lr=3e-3). `task` (a name or a
        Task) switches the task (a name: with its defaults); the task's own fields are set by
        name, like any other."""
        from induction_jax import tasks

        task = overrides.pop("task", self.task)
        if isinstance(task, str):
            task = self.task if task == self.task.name else tasks.task_class(task)()
        task_fields = {f.name for f in dataclasses.fields(task)}
        sections = {name: {} for name in SECTIONS}
        task_overrides = {}
        for key, value in overrides.items():
            section = FIELD_SECTION.get(key)
            if section is not None:
                sections[section][key] = value
            elif key in task_fields:
                task_overrides[key] = value
            else:
                raise ConfigError(f"{key}: not a config field" + (f" (nor a parameter of task {task.name})"
                                                                   if key in task_field_names() else ""))
        return RunConfig(**{name: dataclasses.replace(getattr(self, name), **sections[name]) for name in SECTIONS},
                         task=dataclasses.replace(task, **task_overrides) if task_overrides else task)


def task_field_names() -> set[str]:
    """The fields of every registered task."""
    from induction_jax import tasks

    return {f.name for klass in tasks.classes() for f in dataclasses.fields(klass)}


def upgrade_config_dict(d: dict) -> dict:
    """A config.json of version 0.2 (no `task` section: the repeated task's settings sat in
    `data`) in today's layout; a current one unchanged."""
    from induction_jax.tasks.repeated import LEGACY_DATA_FIELDS

    if not isinstance(d, dict) or "task" in d or not isinstance(d.get("data", {}), dict):
        return d
    data = dict(d.get("data", {}))
    task = {"name": "repeated", **{k: data.pop(k) for k in LEGACY_DATA_FIELDS if k in data}}
    return {**d, "data": data, "task": task}


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "track": TrackConfig}
ALL_SECTIONS = (*SECTIONS, "task")

# Named configurations: flat field overrides on the defaults, and what they are.
PRESETS = {
    "seed001": {
        "fields": {"min_half_length": 25, "half_length": 25, "d_vocab": 64, "n_layers": 2, "n_heads": 4,
                   "d_model": 64, "lr": 1e-3, "batch_size": 64, "steps": 3000},
        "about": "the seed document's experiment exactly: fixed period 25, vocabulary 64, 2 layers x 4 "
                 "heads, d_model 64, AdamW lr 1e-3, batch 64, 3000 steps",
    },
}
FIELD_SECTION = {f.name: name for name, klass in SECTIONS.items() for f in dataclasses.fields(klass)}
