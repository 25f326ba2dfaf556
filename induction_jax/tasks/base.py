"""The task protocol: what a training task is, to the trainer, the tables and the analyses.

A task is a frozen, hashable dataclass (static under `jit`), like purejaxrl's static `env`:
its fields are the settings that fix shapes and the program (sequence length, vocabulary
use); they are config fields (`config_field`), so the command line, `config.json` and the
validation come from them. What may differ per member (purejaxrl's per-seed `env_params`)
is declared in `member_params` and arrives as data: `sample(key, params, ...)` receives
this member's values as scalars, so one compiled program trains members with different
values side by side.

A task family is one file in `induction_jax/tasks/` (or anywhere: `register` it) that
subclasses `Task` and fills in:

- `sample(key, params, batch_size, d_vocab) -> Batch`: one training batch, drawn on the
  device, a dict of arrays with at least `tokens [B, T]`;
- `losses(logits_BTV, batch) -> dict` of scalar training metrics, `loss` the one trained on;
- `probe(key, params, batch_size, d_vocab) -> Batch` (`params`: the member's, as in `sample`)
  and `probe_metrics(logits_BTV, acts, batch) -> dict` of scalars (and per-head `[L, H]` values, named in `head_probe_metrics`);
- optionally `weight_probe_metrics(weights, batch) -> dict` of scalars read off one member's
  weights (circuit layout, no ensemble axis) at each probe step, beside `probe_metrics`
  (`batch`: its probe batch, which carries what the task draws for the member);
- `step_metrics`, `probe_metric_info`: the names of both sets with how each is read;
- `timing_curves`: the probe curves `phase` times by default (`primary_curve` the one its
  planning and paired effects use) and `step_curve`, a per-step training metric timed too;
  `formation_order`: two of them whose order of formation `phase` reports;
- optionally `member_data(key, params) -> dict` of arrays fixed for a member over its whole
  training (e.g. its finite set of tasks), drawn once from `key` (from its data seed); they
  reach `sample` and `probe` inside `params`, beside its member parameters;
- optionally `fixed_params(key, params, model) -> dict` of model parameters the task sets for a
  member at initialisation and training never changes (no gradient step, no weight decay),
  drawn from `key` (from its data seed), their names in `fixed_param_names` (e.g. the bursty
  task's Gaussian items: `W_E` holds fixed feature vectors, as Reddy 2023's inputs are);
- optionally `shared_data(model) -> dict` of arrays that every member reads and none owns
  (e.g. the natural-text task's token stream). They are computed on the host once per process
  from the task's fields (deterministically: not checkpointed, re-derived on resume), passed
  un-batched (replicated, not on the ensemble axis, not baked into the program as constants)
  as an argument of the compiled step, probe, initial-quantity and LLC programs, and reach
  `sample` and `probe` inside `params`, beside the member's own (`training.task_inputs`);
- optionally `curve_probe_metrics`: names of probe outputs that are a vector per member and
  probe step (e.g. the loss at every token index), returned by `probe_metrics` beside the
  scalars and written to curve_metrics.csv (one row per member, step and curve);
- optionally `record(model) -> dict` (what config.json records about the task's inputs, as
  `task_inputs`: e.g. a corpus' path and digest) and `run_files(model) -> {name: bytes}`
  (files copied into the run directory when it is created, e.g. a tokenizer);
- optionally `input_files`: `(path field, digest field)` pairs for inputs read from a user's
  files (a corpus) with `input_digest(path field)`, the task's own digest of what the path
  names now. `to_dict` fills an empty digest field in, so config.json records it when the run
  starts; `verify_inputs()` (called by the task wherever it reads the file to draw data)
  refuses, in one line naming the flag, an input that changed since;
- optionally `knockout_metric`: a probe metric that is 0 where the model learns nothing in
  context; `analyze` then measures what ablating heads costs it (`analysis.knockout`);
- optionally `loss_vocab`: the loss reads only the logits of tokens `0..loss_vocab-1` (a
  classification task's labels), so the training step unembeds only those;
- optionally `ideal_patterns(T)` (the attention pattern each head role would have, for the
  pattern scores and clamps) and `baselines(batch)` (losses of reference predictors).

Built-in tasks import JAX inside their methods, so that the command line, whose parser
lists their flags, starts without loading JAX.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

from induction_jax.config import ConfigError, check_fields

Batch = Mapping[str, Any]


@dataclass(frozen=True)
class Metric:
    """A named scalar curve: which way is better, and how far it must move to count as a change
    (phase timing's `min_rise`, in its own units)."""

    name: str
    help: str
    direction: int = 1          # +1: rises as the model learns; -1: falls
    min_rise: float = 0.0
    unit: str = ""


@dataclass(frozen=True)
class MemberParam:
    """A task setting that may differ per member: data on the ensemble axis."""

    name: str
    help: str
    kind: type                  # int or float
    default: float
    lo: float
    hi: float

    def check(self, values, flag: str) -> list:
        """Values as `kind`, or a one-line ConfigError naming `flag` and the allowed range."""
        out = []
        for v in values:
            try:
                x = self.kind(v)
            except (TypeError, ValueError):
                x = None
            if x is None or (self.kind is int and float(v) != x) or not self.lo <= x <= self.hi:
                raise ConfigError(f"{flag}: {self.name}={v!r} out of range; allowed: "
                                  f"{'integers' if self.kind is int else 'numbers'} {self.lo:g}..{self.hi:g}")
            out.append(x)
        return out


@dataclass(frozen=True)
class Task:
    """Base of every task; see the module docstring for what a subclass provides."""

    name: ClassVar[str] = ""
    step_metrics: ClassVar[tuple[Metric, ...]] = (Metric("loss", "mean next-token loss", -1, 1.0),)
    probe_metric_info: ClassVar[tuple[Metric, ...]] = ()
    head_probe_metrics: ClassVar[tuple[str, ...]] = ()
    curve_probe_metrics: ClassVar[tuple[str, ...]] = ()
    timing_curves: ClassVar[tuple[str, ...]] = ()
    primary_curve: ClassVar[str | None] = None
    step_curve: ClassVar[str | None] = None
    # Two probe curves whose formation order `phase` reports (earlier part, later part), if any.
    formation_order: ClassVar[tuple[str, str] | None] = None
    progress_metric: ClassVar[str] = "loss"
    plot_metrics: ClassVar[tuple[str, ...]] = ("loss",)
    # A probe metric that is 0 where the model learns nothing in context (e.g. the text task's
    # in-context score): what `analyze` knocks heads out against (`analysis.knockout`); None = none.
    knockout_metric: ClassVar[str | None] = None
    # the training loss reads only the logits of tokens 0..loss_vocab-1 (None: all), so the
    # training step computes only those (`functional.apply(logit_vocab=)`); e.g. the bursty
    # task's L labels
    loss_vocab: ClassVar[int | None] = None

    def __post_init__(self):
        check_fields(self)

    # -- shapes and validation -------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        raise NotImplementedError

    @property
    def curve_positions(self) -> tuple[int, ...]:
        """What each value of a curve probe (`curve_probe_metrics`) is at: by default the target
        positions 1..T-1 (curve_metrics.csv's column names)."""
        return tuple(range(1, self.seq_len))

    def check(self, model) -> None:
        """Raise ConfigError (one line) if this task cannot run on `model`."""
        if self.seq_len > model.n_ctx:
            raise ConfigError(f"{self.name}: sequences of {self.seq_len} tokens must fit the context "
                              f"n_ctx={model.n_ctx}")

    def member_params(self) -> tuple[MemberParam, ...]:
        return ()

    def induction_period(self, model) -> int:
        """The period of the repeated random sequences on which the circuit analysis scores
        induction heads (TransformerLens' convention): half the context unless the task says."""
        return model.n_ctx // 2

    # -- the data and what is measured -----------------------------------------------------
    def sample(self, key, params: Mapping[str, Any], batch_size: int, d_vocab: int) -> Batch:
        raise NotImplementedError

    def losses(self, logits_BTV, batch: Batch) -> dict:
        raise NotImplementedError

    def member_data(self, key, params: Mapping[str, Any]) -> dict:
        """Arrays fixed for one member over its training, drawn once from `key` (a key of its
        data seed) and its parameters; `{}` for most tasks. Traceable: `params` may be traced."""
        return {}

    @property
    def fixed_param_names(self) -> tuple[str, ...]:
        """The model parameters `fixed_params` sets (and training leaves unchanged); `()` for most tasks."""
        return ()

    def fixed_params(self, key, params: Mapping[str, Any], model) -> dict:
        """`{name: array}` for each of `fixed_param_names`, in the parameter's own shape, drawn once
        from `key` (a key of the member's data seed) and its task parameters `params` (traced);
        set at initialisation, never trained. `{}` for most tasks."""
        return {}

    def shared_data(self, model) -> dict:
        """Host arrays every member reads (not per member, not checkpointed: re-derived from the
        task's fields); they reach `sample` and `probe` inside `params`. `{}` for most tasks."""
        return {}

    def record(self, model) -> dict:
        """What config.json records about the task's inputs (`task_inputs`); `{}` for most tasks."""
        return {}

    def run_files(self, model) -> dict:
        """Files `{relative path: bytes}` written into a new run directory; `{}` for most tasks."""
        return {}

    def probe(self, key, params: Mapping[str, Any], batch_size: int, d_vocab: int) -> Batch:
        raise NotImplementedError

    def probe_sequences(self, batch_size: int) -> int:
        """How many sequences `probe(..., batch_size, ...)` returns (what its forward pass holds);
        a task whose probe appends a second part of its own says so here."""
        return batch_size

    def probe_metrics(self, logits_BTV, acts, batch: Batch) -> dict:
        return {}

    def weight_probe_metrics(self, weights, batch: Batch) -> dict:
        """Scalars of `probe_metric_info` read off one member's weights (circuit layout, no
        ensemble axis) at a probe step; `batch`: its probe batch. `{}` for most tasks."""
        return {}

    def ideal_patterns(self, T: int) -> dict:
        return {}

    def baselines(self, batch: Batch) -> dict:
        return {}

    # -- names, for the tables and analyses --------------------------------------------------
    @classmethod
    def probe_metric_names(cls) -> tuple[str, ...]:
        return tuple(m.name for m in cls.probe_metric_info)

    @classmethod
    def step_metric_names(cls) -> tuple[str, ...]:
        return tuple(m.name for m in cls.step_metrics)

    @classmethod
    def metric(cls, name: str) -> Metric:
        for m in cls.step_metrics + cls.probe_metric_info:
            if m.name == name:
                return m
        raise KeyError(name)

    def default_member_params(self) -> dict[str, float]:
        return {p.name: p.default for p in self.member_params()}

    def member_param(self, name: str, flag: str = "--task-param") -> MemberParam:
        params = {p.name: p for p in self.member_params()}
        if name not in params:
            allowed = ", ".join(params) or "none"
            raise ConfigError(f"{flag} {name}: not a parameter of task {self.name}; allowed: {allowed}")
        return params[name]

    input_files: ClassVar[tuple[tuple[str, str], ...]] = ()

    def input_digest(self, field: str) -> str:
        """The digest of what the path field `field` names now ('' for no file)."""
        raise NotImplementedError

    def verify_inputs(self) -> None:
        """Refuse (one line naming the flag) an input whose digest differs from the recorded one."""
        for path_field, digest_field in self.input_files:
            recorded = getattr(self, digest_field)
            if recorded and (now := self.input_digest(path_field)) != recorded:
                raise ConfigError(f"--{path_field.replace('_', '-')} {getattr(self, path_field)!r}: changed since "
                                  f"the run started (digest {now}, recorded {recorded}); allowed: the recorded "
                                  f"{path_field.replace('_', ' ')}, unchanged (or start a new run)")

    def to_dict(self) -> dict:
        """The task section of config.json, with the digests of its input files filled in."""
        d = {"name": self.name, **dataclasses.asdict(self)}
        for path_field, digest_field in self.input_files:
            d[digest_field] = d[digest_field] or self.input_digest(path_field)
        return d


_TASKS: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Make a task class known by its `name` (a class decorator); a name is taken once."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a task needs a non-empty `name`")
    if _TASKS.get(cls.name, cls) is not cls:
        raise ValueError(f"task {cls.name!r}: already registered by {_TASKS[cls.name].__module__}")
    _TASKS[cls.name] = cls
    return cls


def names() -> list[str]:
    return sorted(_TASKS)


def task_class(name: str, flag: str = "--task") -> type[Task]:
    if name not in _TASKS:
        raise ConfigError(f"{flag} {name}: unknown task; allowed: {', '.join(names())}")
    return _TASKS[name]


def classes() -> list[type[Task]]:
    return [_TASKS[n] for n in names()]


def from_dict(d: Mapping[str, Any]) -> Task:
    """A task from `{"name": ..., field: value, ...}` (config.json's `task` section)."""
    if not isinstance(d, Mapping) or not isinstance(d.get("name"), str):
        raise ConfigError(f"config.task: must be an object with a \"name\" ({', '.join(names())})")
    cls = task_class(d["name"], "config.task.name")
    allowed = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(d) - allowed - {"name"})
    if bad:
        raise ConfigError(f"config.task: {bad[0]!r} is not a parameter of task {cls.name}; allowed: "
                          f"{', '.join(sorted(allowed)) or 'none'}")
    return cls(**{k: v for k, v in d.items() if k != "name"})
