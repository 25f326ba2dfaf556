"""The Python API: what a notebook needs, over the same library the command line calls.

A `Run` is a run directory: its config, members, metrics (a pandas DataFrame), parameters at
any saved step, and the analyses, which write into the directory exactly as the command line
does (and so appear in its report).

Every function checks its arguments here, at the edge: a wrong type is a `TypeError`, a wrong
value (or weights that do not fit together or with the config) a `ValueError`, each one line
naming the argument and what it takes. A config may be given as a `RunConfig` or as a dict of
its sections (`{"model": {...}, "data": {...}, "train": {...}}`, read by `RunConfig.from_dict`).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from induction_jax.config import PRESETS, SECTIONS, ConfigError, RunConfig  # noqa: F401 (PRESETS: the API's view)
from induction_jax.members import SEED_MAX, Members
from induction_jax.rundir import RunDir, RunDirError


class ArgumentError(RunDirError, ValueError):
    """An argument out of range for this run (e.g. a member it does not have): a ValueError,
    and a RunDirError as the command line reports it."""


def _type_name(value) -> str:
    return type(value).__name__


def _config(cfg, name: str = "cfg") -> RunConfig:
    """A RunConfig from a RunConfig, a dict of its sections, or None (the defaults)."""
    if cfg is None:
        return RunConfig()
    if isinstance(cfg, RunConfig):
        return cfg
    if isinstance(cfg, Mapping):
        try:
            return RunConfig.from_dict(dict(cfg))
        except (ConfigError, TypeError) as e:
            raise ConfigError(f"{name}: {e}") from None
    hint = (f"; for a preset use induction_jax.RunConfig.preset({cfg!r})" if isinstance(cfg, str) and cfg in PRESETS
            else "")
    raise TypeError(f"{name}: expected an induction_jax.RunConfig (or a dict of its sections "
                    f"{', '.join(SECTIONS)}, or None for the defaults), got {_type_name(cfg)}{hint}")


def _path(value, name: str, optional: bool = False) -> Path | None:
    if value is None and optional:
        return None
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a path (str or pathlib.Path){' or None' if optional else ''}, "
                        f"got {_type_name(value)}")
    if str(value) == "":
        raise ValueError(f"{name}: an empty path; expected a folder or file name")
    return Path(value)


def _flag(value, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {_type_name(value)}")
    return bool(value)


def _int(value, name: str, optional: bool = False, lo: int | None = None) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an int{' or None' if optional else ''}, got {_type_name(value)}")
    if lo is not None and value < lo:
        raise ValueError(f"{name}={value}: must be >= {lo}")
    return int(value)


def _values(value, name: str, kind: str, example: str, check) -> list | None:
    """None, or a list of distinct values each passing `check(v) -> error text or None`."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name}: expected a list of {kind} (e.g. {example}) or None, got {_type_name(value)}")
    items = list(value)
    if not items:
        raise ValueError(f"{name}: an empty list; expected at least one of {kind} (e.g. {example}), or None")
    for v in items:
        problem = check(v)
        if problem:
            raise (TypeError if problem.startswith("expected") else ValueError)(
                f"{name}: {v!r}: {problem}; expected a list of {kind} (e.g. {example})")
    repeated = [v for i, v in enumerate(items) if v in items[:i]]
    if repeated:
        raise ValueError(f"{name}: {repeated[0]!r} is listed twice; each value must appear once")
    return items


def _number(lo: float, lo_open: bool):
    def check(v):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            return f"expected a number, got {_type_name(v)}"
        if not math.isfinite(v) or (v <= lo if lo_open else v < lo):
            return f"must be a finite number {'>' if lo_open else '>='} {lo:g}"
        return None
    return check


def _seed(v):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
        return f"expected an int, got {_type_name(v)}"
    return None if 0 <= v <= SEED_MAX else f"must be in 0..{SEED_MAX}"


def _arm(v):
    if not isinstance(v, str):
        return f"expected a text, got {_type_name(v)}"
    return None if v.strip() and "," not in v else "must be 'none' or an intervention spec without commas"


def train(cfg: RunConfig | dict | None = None, out: str | Path = "runs/run", *, members: Members | None = None,
          overwrite: bool = False, progress: bool = True) -> "Run":
    """Train an ensemble (`cfg.train.seeds` members, or `members`) and write the run directory.

    `cfg`: a `RunConfig`, a dict of its sections (`RunConfig.from_dict`), or None (the defaults)."""
    from induction_jax.runner import train_run

    cfg, out = _config(cfg), _path(out, "out")
    if members is not None and not isinstance(members, Members):
        raise TypeError(f"members: expected an induction_jax.Members (e.g. Members.grid(cfg, lrs=[...])) or "
                        f"None, got {_type_name(members)}")
    overwrite, progress = _flag(overwrite, "overwrite"), _flag(progress, "progress")
    return Run(train_run(cfg, out, overwrite=overwrite, members=members, progress=progress).path)


def sweep(cfg: RunConfig | None = None, out: str | Path = "runs/sweep", *, lr=None, weight_decay=None,
          init_seeds=None, data_seeds=None, interventions=None, task_params: dict | None = None,
          overwrite: bool = False, progress: bool = True) -> "Run":
    """task parameter x arm x lr x weight decay x (init seed, data seed) crossed into one compiled
    ensemble; `interventions` lists the arms, e.g. ["none", "clamp:prev:L0H0:1.0", "cut:K:L0H*"];
    `task_params` maps each of the task's member parameters to its values, e.g.
    {"min_period": [5, 25]}. Each of `lr`, `weight_decay`, `init_seeds`, `data_seeds`,
    `interventions` is a list of distinct values, or None (the config's). `cfg` as for `train`."""
    cfg = _config(cfg)
    lr = _values(lr, "lr", "learning rates", "[3e-4, 1e-3]", _number(0.0, lo_open=True))
    weight_decay = _values(weight_decay, "weight_decay", "weight decays", "[0.0, 0.1]", _number(0.0, lo_open=False))
    init_seeds = _values(init_seeds, "init_seeds", "seeds", "range(4)", _seed)
    data_seeds = _values(data_seeds, "data_seeds", "seeds", "range(4)", _seed)
    interventions = _values(interventions, "interventions", "arms", '["none", "ablate:L1H2"]', _arm)
    if task_params is not None and not isinstance(task_params, dict):
        raise TypeError(f"task_params: expected a dict of parameter name -> list of values, got "
                        f"{_type_name(task_params)}")
    members = Members.grid(cfg, lr, weight_decay, init_seeds, data_seeds, interventions, task_params)
    return train(cfg, out, members=members, overwrite=overwrite, progress=progress)


def open_run(path: str | Path) -> "Run":
    """An existing run directory (checked to be one)."""
    return Run(path)


class Run:
    """A run directory, read and analysed from Python."""

    def __init__(self, path: str | Path):
        self.dir = RunDir(_path(path, "path"))
        self.config: RunConfig = self.dir.read_config()
        self.members: Members = self.dir.members()

    path = property(lambda self: self.dir.path)
    report = property(lambda self: self.dir.path / "report.html")

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}: {len(self.members)} members x {self.config.train.steps} steps)"

    def metrics(self):
        """metrics.csv as a pandas DataFrame, one row per (member, step); NaN where a metric
        was not measured at that step (probes every `eval_every` steps)."""
        import pandas as pd
        from induction_jax.metrics import read_metrics

        return pd.DataFrame(read_metrics(self.dir.metrics_csv)).astype(
            {"member": int, "init_seed": int, "data_seed": int, "step": int})

    def checkpoint_steps(self) -> list[int]:
        from induction_jax.checkpoint import Checkpoints

        with Checkpoints(self.dir.checkpoints, async_save=False) as ckpt:
            return ckpt.steps()

    def params(self, step: int | None = None, member: int | None = None) -> dict[str, np.ndarray]:
        """Circuit-layout parameters at a saved step (default: the latest good checkpoint), of
        every member (leading axis) or of one."""
        from induction_jax.analysis.weights import load_run_checkpoint

        step = _int(step, "step", optional=True)
        if member is not None:
            self._check_member(member)
        params, _ = load_run_checkpoint(self.path, step)
        if member is None:
            return params
        return {k: v[member] for k, v in params.items()}

    def _check_member(self, member: int, name: str = "member") -> None:
        _int(member, name)
        if not 0 <= member < len(self.members):
            raise ArgumentError(f"{name} {member}: out of range; this run has members 0..{len(self.members) - 1}")

    def analyze(self, member: int = 0, knockout_heads: int = 2, knockout_batch: int = 512) -> dict:
        """Score every head of every member and identify the circuit (writes analysis/ and the
        report); returns circuit.json. `member` picks the single-model figures; where the task
        names an in-context score (text), heads are knocked out against it (`induction-jax
        analyze --knockout-heads --knockout-batch`; 0 heads = none)."""
        from induction_jax.analysis.run import analyze_run

        if member is not None:
            self._check_member(member)
        out = analyze_run(self.path, member, knockout_heads, knockout_batch)
        self.write_report()
        return json.loads((out / "circuit.json").read_text())

    def scores(self):
        """analysis/scores.csv (run `analyze` first) as a DataFrame, one row per (member, layer, head)."""
        import pandas as pd

        path = self.path / "analysis" / "scores.csv"
        if not path.is_file():
            raise RunDirError(f"{path}: missing; run Run.analyze() (or 'induction-jax analyze') first")
        return pd.read_csv(path)

    def phase(self, **options) -> dict:
        """Time the phase change in every member (writes phase/ and the report); returns stats.json.
        Options: `smooth_steps`, `loss_smooth_steps`, `variance`, `from_step`."""
        from induction_jax.phase.run import phase_run

        allowed = {"smooth_steps": "number", "loss_smooth_steps": "number", "variance": "bool", "from_step": "number"}
        for key, value in options.items():
            if key not in allowed:
                raise TypeError(f"{key}: not an option of Run.phase; allowed: {', '.join(allowed)}")
            if allowed[key] == "bool":
                _flag(value, key)
            elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                raise TypeError(f"{key}: expected a number of steps, got {_type_name(value)}")
            elif not math.isfinite(value) or value < 0:
                raise ValueError(f"{key}={value!r}: must be a finite number >= 0")
        out = phase_run(self.path, **options)
        self.write_report()
        return json.loads((out / "stats.json").read_text())

    def write_report(self) -> Path:
        """report.html from whatever the run directory holds (analyze and phase write it too)."""
        from induction_jax.report import write_report

        return write_report(self.dir)

    def timings(self):
        """phase/timings.csv (run `phase` first) as a DataFrame, one row per (curve, member)."""
        import pandas as pd

        path = self.path / "phase" / "timings.csv"
        if not path.is_file():
            raise RunDirError(f"{path}: missing; run Run.phase() (or 'induction-jax phase') first")
        return pd.read_csv(path)

    def export(self, member: int | None = 0, format: str = "npz", out: str | Path | None = None,
               step: int | None = None, *, overwrite: bool = False) -> Path:
        """Write one member's (or, `member=None`, every member's) weights as npz, safetensors or a
        TransformerLens config + state dict; default path RUN_DIR/exports/member<K>-step<S>.<ext>.

        Never writes a run directory's own files (inside a run, only under its exports/), and
        never replaces a file or folder it did not write unless `overwrite=True`; the write is
        atomic (a temporary file beside the target, fsync, rename). Exports into a run's
        exports/ are made under its writer lock and recorded in its manifest."""
        return self._export(member, format, out, step, overwrite, arg="out", flag="overwrite=True")

    def _export(self, member, format, out, step, overwrite, arg: str, flag: str) -> Path:
        """`export`, naming the arguments as `arg` / `flag` (the command line: --out, --overwrite)."""
        from induction_jax.analysis.weights import WeightsError, load_run_checkpoint
        from induction_jax.interop.export import FORMATS, SUFFIXES, export_params

        if not isinstance(format, str):
            raise TypeError(f"format: expected a text, one of {', '.join(FORMATS)}; got {_type_name(format)}")
        if format not in FORMATS:
            raise WeightsError(f"format {format!r}: unknown; allowed: {', '.join(FORMATS)}")
        if member is not None:
            self._check_member(member)
        out = _path(out, arg.lstrip("-"), optional=True)
        step = _int(step, "step", optional=True)
        overwrite = _flag(overwrite, flag.split("=")[0].lstrip("-"))
        params, meta = load_run_checkpoint(self.path, step)
        if out is None:
            name = f"{'all' if member is None else f'member{member}'}-step{meta['step']}{SUFFIXES[format]}"
            out, arg = self.path / "exports" / name, None
        return export_params(params, member, format, out, self.config.model, overwrite=overwrite, arg=arg,
                             flag=flag)


# Weights a model may have besides the circuit ones (MLPs, LayerNorm), and their shapes.
_OPTIONAL_WEIGHTS = ("W_in", "W_out", "ln1_w", "ln1_b", "ln2_w", "ln2_b", "lnf_w", "lnf_b")


def _weights(params, name: str = "params") -> dict[str, np.ndarray]:
    """Circuit-layout weights (one model, or stacked `[E, ...]`) as stacked numpy arrays,
    checked to fit together: one ValueError naming the weight and the shape it needs."""
    from induction_jax.analysis.weights import CIRCUIT_NAMES, WeightsError, stacked_params

    if not isinstance(params, Mapping):
        raise TypeError(f"{name}: expected a dict of circuit-layout weights ({', '.join(CIRCUIT_NAMES)}; one "
                        f"model, or stacked [E, ...]), got {_type_name(params)}")
    unknown = [k for k in params if k not in CIRCUIT_NAMES + _OPTIONAL_WEIGHTS]
    if unknown:
        raise WeightsError(f"{name}: unknown weight {unknown[0]!r}; allowed: {', '.join(CIRCUIT_NAMES)} and, for "
                           f"MLPs and LayerNorm, {', '.join(_OPTIONAL_WEIGHTS)}")
    arrays = {}
    for key, value in params.items():
        try:
            arrays[key] = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            raise WeightsError(f"{name}[{key!r}]: not an array of numbers ({_type_name(value)})") from None
    single = arrays["W_E"].ndim == 2 if "W_E" in arrays else False
    stacked = stacked_params(arrays, ensemble=not single)
    lead = () if single else stacked["W_E"].shape[:1]
    V, D = stacked["W_E"].shape[1:]
    L, H, _, K = stacked["W_Q"].shape[1:]
    expected = {"W_pos": (stacked["W_pos"].shape[1], D), "W_Q": (L, H, D, K), "W_K": (L, H, D, K),
                "W_V": (L, H, D, K), "W_O": (L, H, K, D), "W_U": (D, V)}
    if "W_in" in stacked or "W_out" in stacked:
        M = (stacked["W_in"].shape[-1] if "W_in" in stacked else stacked["W_out"].shape[-2])
        expected |= {"W_in": (L, D, M), "W_out": (L, M, D)}
    expected |= {f"{n}_{wb}": (L, D) for n in ("ln1", "ln2") for wb in "wb"} | {"lnf_w": (D,), "lnf_b": (D,)}
    for key, shape in expected.items():
        if key in stacked and stacked[key].shape[1:] != shape:
            raise WeightsError(f"{name}[{key!r}]: shape {lead + stacked[key].shape[1:]}, expected {lead + shape} "
                               f"from W_E {lead + (V, D)} and W_Q {lead + (L, H, D, K)} (d_vocab={V}, d_model={D}, "
                               f"n_layers={L}, n_heads={H}, d_head={K})")
    pairs = [("W_in", "W_out"), ("ln1_w", "ln1_b"), ("ln2_w", "ln2_b"), ("lnf_w", "lnf_b")]
    for a, b in pairs:
        if (a in stacked) != (b in stacked):
            raise WeightsError(f"{name}: has {a if a in stacked else b} without {b if a in stacked else a}; "
                               f"they come together")
    if ("ln1_w" in stacked) != ("lnf_w" in stacked) or ("ln2_w" in stacked and "W_in" not in stacked):
        raise WeightsError(f"{name}: LayerNorm weights ln1_*, lnf_* (and ln2_* with MLPs) come together")
    if "W_in" in stacked and "ln1_w" in stacked and "ln2_w" not in stacked:
        raise WeightsError(f"{name}: a model with MLPs and LayerNorm needs ln2_w, ln2_b")
    return stacked


_ANALYZE_OPTIONS = ("probe_batch", "seed", "prefix_repeats", "thresholds", "batch")


def analyze_weights(params: dict, period: int | None = None, **options) -> dict:
    """Every score and the circuit verdict for circuit-layout weights from any source (one
    model, or stacked `[E, ...]`; e.g. `from_transformer_lens(model)`); returns the result dict
    of `analysis.score.analyze_params` (scores arrays, circuit, baseline).

    The probe sequences repeat `period` random tokens (2 x `period` tokens in all) and must
    fit the weights' context (the rows of W_pos, n_ctx); default: the longest that fits, n_ctx // 2. Options: `probe_batch`,
    `seed`, `prefix_repeats`, `thresholds`, `batch` (see `analyze_params`)."""
    from induction_jax.analysis.identify import Thresholds
    from induction_jax.analysis.score import analyze_params

    stacked = _weights(params)
    n_ctx = stacked["W_pos"].shape[1]
    if n_ctx < 2:
        raise ValueError(f"params['W_pos']: {n_ctx} position(s); the probe sequences need a context of at least 2")
    if period is None:
        period = n_ctx // 2
    elif _int(period, "period") < 1 or 2 * period > n_ctx:
        raise ValueError(f"period={period}: the probe sequences of 2*period={2 * period} tokens "
                         f"must fit the context of these weights (W_pos has n_ctx={n_ctx} positions); allowed: "
                         f"1..{n_ctx // 2}, or None for {n_ctx // 2}")
    for key, value in options.items():
        if key not in _ANALYZE_OPTIONS:
            raise TypeError(f"{key}: not an option of analyze_weights; allowed: period, "
                            f"{', '.join(_ANALYZE_OPTIONS)}")
        if key == "thresholds":
            if not isinstance(value, Thresholds):
                raise TypeError(f"thresholds: expected an analysis.identify.Thresholds, got {_type_name(value)}")
        elif key == "seed":
            _int(value, "seed", lo=0)
        elif key == "batch":
            _int(value, "batch", optional=True, lo=1)
        else:
            _int(value, key, lo=1)
    if options.get("prefix_repeats", 1) > 2 * period:
        raise ValueError(f"prefix_repeats={options['prefix_repeats']}: must be <= 2*period={2 * period} "
                         f"(each repeat needs at least one token)")
    return analyze_params(stacked, period, **options)


def from_transformer_lens(model_or_state_dict, cfg=None) -> dict:
    """A TransformerLens attention-only model's weights in circuit layout (see interop).

    Takes a `HookedTransformer`, or its state dict with `cfg` (a `HookedTransformerConfig` or a
    dict of its kwargs). The weights are checked to fit together and to match `cfg`'s sizes."""
    from induction_jax.analysis.weights import WeightsError
    from induction_jax.interop.transformer_lens import tl_config_value
    from induction_jax.interop.transformer_lens import from_transformer_lens as convert

    is_model = hasattr(model_or_state_dict, "state_dict") and hasattr(model_or_state_dict, "cfg")
    if not (is_model or isinstance(model_or_state_dict, Mapping)):
        raise TypeError(f"model_or_state_dict: expected a TransformerLens HookedTransformer, or its state dict "
                        f"(with cfg), got {_type_name(model_or_state_dict)}")
    if cfg is not None and not isinstance(cfg, Mapping) and not hasattr(cfg, "n_layers"):
        raise TypeError(f"cfg: expected a HookedTransformerConfig, a dict of its kwargs, or None, got "
                        f"{_type_name(cfg)}")
    if not is_model and cfg is None:
        raise ValueError("cfg: a state dict needs its cfg (a HookedTransformerConfig or a dict of its kwargs)")
    used = cfg if cfg is not None else model_or_state_dict.cfg
    n_layers = tl_config_value(used, "n_layers")
    if isinstance(n_layers, bool) or not isinstance(n_layers, numbers.Integral) or n_layers < 1:
        raise ValueError(f"cfg: n_layers={n_layers!r}; expected an int >= 1")
    try:
        params = convert(model_or_state_dict, cfg)
    except WeightsError:
        raise
    except ValueError as e:           # e.g. layers whose weights have different shapes
        raise WeightsError(f"model_or_state_dict: its weights do not fit together ({e})") from None
    stacked = _weights(params, "model_or_state_dict")
    V, D = stacked["W_E"].shape[1:]
    L, H, _, K = stacked["W_Q"].shape[1:]
    found = {"d_vocab": V, "n_ctx": stacked["W_pos"].shape[1], "n_layers": L, "n_heads": H, "d_model": D,
             "d_head": K}
    for key, value in found.items():
        stated = tl_config_value(used, key)
        if stated is not None and stated != value:
            raise WeightsError(f"cfg: {key}={stated} but the weights have {key}={value} (W_E {(V, D)}, W_pos "
                               f"{stacked['W_pos'].shape[1:]}, W_Q {(L, H, D, K)})")
    return params


__all__ = ["train", "sweep", "open_run", "Run", "analyze_weights", "from_transformer_lens", "PRESETS"]
