"""Who the members of an ensemble are: one row per member, one representation everywhere.

Each member has an `init_seed` (its initial weights) and a `data_seed` (its training batches),
a learning rate, a weight decay, an arm (what is done to it in training) and a value of each
of the task's member parameters (`Task.member_params`: one column each). The same table is what `config.json` stores, what labels
the rows of `metrics.csv` and every analysis table, and what the compiled ensemble is built
from, so a member is named the same way in all of them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, fields

import numpy as np

from induction_jax.config import ConfigError, RunConfig

SEED_MAX = 2**31 - 1


class MembersError(ConfigError):
    """A member table that cannot describe an ensemble (one-line message)."""


@dataclass(frozen=True)
class Members:
    """Per-member settings, each an array `[E]`; member i is row i of every array."""

    init_seed: np.ndarray
    data_seed: np.ndarray
    lr: np.ndarray
    weight_decay: np.ndarray
    arm: np.ndarray = None            # what is done to it during training (interventions.spec); "none"
    task: dict = None                 # task parameter name -> values [E]; a missing one: the task's default

    def __post_init__(self):
        n = len(self.init_seed)
        if self.arm is None:
            object.__setattr__(self, "arm", np.full(n, "none", dtype=object))
        if n == 0:
            raise MembersError("members: the table is empty; an ensemble needs at least one member")
        task = {}
        for name, values in (self.task or {}).items():
            v = np.asarray(values)
            if v.shape != (n,) or not (np.issubdtype(v.dtype, np.number) and np.all(np.isfinite(v))):
                raise MembersError(f"members.{name}: must be {n} finite numbers, one per member")
            task[str(name)] = v
        object.__setattr__(self, "task", task)
        for f in fields(self):
            if f.name == "task":
                continue
            value = np.asarray(getattr(self, f.name))
            if value.shape != (n,):
                raise MembersError(f"members.{f.name}: {value.shape[0] if value.ndim else 'no'} entries for "
                                   f"{n} members; every column needs one entry per member")
            object.__setattr__(self, f.name, value)
        for name in ("init_seed", "data_seed"):
            v = getattr(self, name)
            if not np.issubdtype(v.dtype, np.integer):
                raise MembersError(f"members.{name}: must be integers in 0..{SEED_MAX}")
            bad = v[(v < 0) | (v > SEED_MAX)]
            if len(bad):
                raise MembersError(f"members.{name}: {bad[0]} out of range; allowed: integers 0..{SEED_MAX}")
        if not np.all(np.isfinite(self.lr)) or self.lr.min() <= 0:
            raise MembersError("members.lr: every learning rate must be a finite number > 0")
        if not np.all(np.isfinite(self.weight_decay)) or self.weight_decay.min() < 0:
            raise MembersError("members.weight_decay: every weight decay must be a finite number >= 0")
        object.__setattr__(self, "arm", np.asarray([str(a).strip() for a in self.arm], dtype=object))
        if any(not a or "," in a for a in self.arm):
            raise MembersError("members.arm: every arm must be 'none' or an intervention spec without commas")

    def __len__(self) -> int:
        return len(self.init_seed)

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "Members":
        """`seeds` members with init seed = data seed = first_seed + i (the `seed` shorthand), each
        with the task's default parameters."""
        return cls.grid(cfg)

    @classmethod
    def grid(cls, cfg: RunConfig, lrs=None, weight_decays=None, init_seeds=None, data_seeds=None,
             arms=None, task_params: dict | None = None) -> "Members":
        """Every task parameter x arm x lr x weight decay x (init seed, data seed) combination;
        data seeds vary fastest.

        Without `init_seeds` / `data_seeds` the config's seeds are used with init seed = data
        seed (one seed per member); with both, they are crossed (a two-way design).
        `task_params`: {name: values} of the task's member parameters (checked against it);
        the others take the task's default.
        """
        t = cfg.train
        lrs = [t.lr] if lrs is None else list(lrs)
        wds = [t.weight_decay] if weight_decays is None else list(weight_decays)
        if init_seeds is None and data_seeds is None:
            seeds = config_seeds(cfg)
            pairs = [(s, s) for s in seeds]
        else:
            default = config_seeds(cfg) if init_seeds is None or data_seeds is None else []
            pairs = list(itertools.product(init_seeds if init_seeds is not None else default,
                                           data_seeds if data_seeds is not None else default))
        swept = {}
        for name, values in (task_params or {}).items():
            swept[name] = cfg.task.member_param(name).check(list(values), f"--task-param {name}")
        defaults = {p.name: p.default for p in cfg.task.member_params()}
        task_values = [dict(zip(swept, combo)) for combo in itertools.product(*swept.values())] or [{}]
        rows = [(arm, lr, wd, a, b, tv) for tv, arm, lr, wd, (a, b)
                in itertools.product(task_values, arms or ["none"], lrs, wds, pairs)]
        arm, lr, wd, a, b = (np.asarray(col, dtype=object if i == 0 else None)
                             for i, col in enumerate(list(zip(*rows))[:5]))
        task = {name: np.asarray([tv.get(name, default) for *_, tv in rows]) for name, default in defaults.items()}
        return cls(a.astype(np.int64), b.astype(np.int64), lr.astype(float), wd.astype(float), arm, task)

    def columns(self) -> dict[str, np.ndarray]:
        """Every column in table order: the fixed ones, then one per task parameter."""
        return {**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "task"}, **self.task}

    def table(self) -> dict[str, list]:
        """JSON-ready columns (as config.json stores them)."""
        return {name: [str(a) for a in v] if name == "arm" else v.tolist() for name, v in self.columns().items()}

    @classmethod
    def from_table(cls, table, task=None) -> "Members":
        """Read back `table()`; a malformed table raises `MembersError` in one line. Columns
        beyond the fixed ones are task parameters (checked against `task` when given)."""
        names = [f.name for f in fields(cls) if f.name not in ("arm", "task")]
        if not isinstance(table, dict):
            raise MembersError(f"members: must be an object with columns {', '.join(names)}, arm")
        missing = [n for n in names if n not in table]
        if missing:
            raise MembersError(f"members: missing column {missing[0]!r}; expected {', '.join(names)}, arm")
        try:
            cols = {n: np.asarray(table[n], dtype=np.int64 if n.endswith("seed") else float) for n in names}
        except (TypeError, ValueError, OverflowError):
            raise MembersError("members: every column must be a list of numbers (arm: of texts)") from None
        arm = table.get("arm")
        if arm is not None and (not isinstance(arm, list) or not all(isinstance(a, str) for a in arm)):
            raise MembersError("members.arm: must be a list of texts")
        task_cols = {}
        for name in [k for k in table if k not in names and k != "arm"]:
            try:
                values = np.asarray(table[name], dtype=float)
            except (TypeError, ValueError, OverflowError):
                raise MembersError(f"members.{name}: must be a list of numbers") from None
            if task is not None:
                try:
                    param = task.member_param(name, "members")
                    values = np.asarray(param.check(values.tolist(), f"members.{name}"))
                except ConfigError as e:
                    raise MembersError(str(e)) from None
            task_cols[name] = values
        return cls(**cols, arm=None if arm is None else np.asarray(arm, dtype=object), task=task_cols)

    @property
    def crossed(self) -> bool:
        """Whether init and data seeds differ for some member (a design that separates them)."""
        return bool(np.any(self.init_seed != self.data_seed))

    def label(self, i: int) -> str:
        """How member i is named in messages: by every setting that varies in this ensemble."""
        parts = [f"member {i}"]
        if self.crossed:
            parts.append(f"init seed {self.init_seed[i]}, data seed {self.data_seed[i]}")
        else:
            parts.append(f"seed {self.init_seed[i]}")
        if len(np.unique(self.lr)) > 1:
            parts.append(f"lr {self.lr[i]:g}")
        if len(np.unique(self.weight_decay)) > 1:
            parts.append(f"weight decay {self.weight_decay[i]:g}")
        if len(set(self.arm)) > 1 or self.arm[0] != "none":
            parts.append(f"arm {self.arm[i]}")
        parts += [f"{name} {v[i]:g}" for name, v in self.task.items() if len(np.unique(v)) > 1]
        return f"{parts[0]} ({', '.join(parts[1:])})"

    def arms(self) -> dict[str, np.ndarray]:
        """Members grouped by every setting that varies except the seeds (a sweep's arms):
        label -> member indices, in first-appearance order; one group 'all' if none varies."""
        cols = self.columns()
        formats = [("arm", "{}"), ("lr", "lr {:g}"), ("weight_decay", "weight decay {:g}")]
        formats += [(name, name + " {:g}") for name in self.task]
        varying = [(name, fmt) for name, fmt in formats if len(set(cols[name].tolist())) > 1]
        labels = [", ".join(fmt.format(cols[name][i]) for name, fmt in varying) or "all"
                  for i in range(len(self))]
        return {label: np.flatnonzero(np.asarray(labels) == label) for label in dict.fromkeys(labels)}

    def select(self, index) -> "Members":
        return Members(**{f.name: getattr(self, f.name)[index] for f in fields(self) if f.name != "task"},
                       task={k: v[index] for k, v in self.task.items()})

    def task_values(self, task) -> dict[str, np.ndarray]:
        """Every member parameter of `task` per member: this table's column, else its default."""
        return {p.name: np.asarray(self.task[p.name]) if p.name in self.task else np.full(len(self), p.default)
                for p in task.member_params()}


def config_seeds(cfg: RunConfig) -> list[int]:
    """The seeds first_seed .. first_seed + seeds - 1 of the config, or a one-line error naming
    --first-seed and --seeds when the last is past SEED_MAX."""
    t = cfg.train
    last = t.first_seed + t.seeds - 1
    if last > SEED_MAX:
        raise MembersError(f"--first-seed {t.first_seed} --seeds {t.seeds}: the members' seeds "
                           f"{t.first_seed}..{last} go past {SEED_MAX}; allowed: first seed + seeds - 1 <= "
                           f"{SEED_MAX}, so --first-seed at most {SEED_MAX - t.seeds + 1} for --seeds {t.seeds}")
    return list(range(t.first_seed, last + 1))


def _check_seed(value: int) -> int:
    if not 0 <= value <= SEED_MAX:
        raise MembersError(f"seed {value}: out of range; allowed: 0..{SEED_MAX}")
    return value


def parse_seed_range(flag: str, text: str) -> list[int]:
    """'0-7', '3', '0,2,5' or '0-3,8-11' -> a list of distinct seeds, in order (one-line errors)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        bounds = part.split("-", 1) if "-" in part[1:] else [part]
        try:
            lo, hi = int(bounds[0]), int(bounds[-1])
        except ValueError:
            raise MembersError(f"{flag} {text!r}: must be seeds or ranges such as 0-7 or 0,2,5 "
                               f"(non-negative integers)") from None
        if hi < lo:
            raise MembersError(f"{flag} {text!r}: range {part} is empty (end before start)")
        seeds.extend(range(_check_seed(lo), _check_seed(hi) + 1))
    if len(set(seeds)) != len(seeds):
        dup = next(s for s in seeds if seeds.count(s) > 1)
        raise MembersError(f"{flag} {text!r}: seed {dup} appears twice (ranges overlap)")
    return seeds
