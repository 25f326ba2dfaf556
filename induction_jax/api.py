"""The Python API: what a notebook needs, over the same library the command line calls.

A `Run` is a run directory: its config, members, metrics (a pandas DataFrame), parameters at
any saved step, and the analyses, which write into the directory exactly as the command line
does (and so appear in its report).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from induction_jax.config import PRESETS, RunConfig  # noqa: F401 (PRESETS: the API's view of them)
from induction_jax.members import Members
from induction_jax.rundir import RunDir, RunDirError


def train(cfg: RunConfig | None = None, out: str | Path = "runs/run", *, members: Members | None = None,
          overwrite: bool = False, progress: bool = True) -> "Run":
    """Train an ensemble (`cfg.train.seeds` members, or `members`) and write the run directory."""
    from induction_jax.runner import train_run

    return Run(train_run(cfg or RunConfig(), out, overwrite=overwrite, members=members, progress=progress).path)


def sweep(cfg: RunConfig | None = None, out: str | Path = "runs/sweep", *, lr=None, weight_decay=None,
          init_seeds=None, data_seeds=None, interventions=None, overwrite: bool = False,
          progress: bool = True) -> "Run":
    """arm x lr x weight decay x (init seed, data seed) crossed into one compiled ensemble;
    `interventions` lists the arms, e.g. ["none", "clamp:prev:L0H0:1.0", "cut:K:L0H*"]."""
    cfg = cfg or RunConfig()
    return train(cfg, out, members=Members.grid(cfg, lr, weight_decay, init_seeds, data_seeds, interventions),
                 overwrite=overwrite, progress=progress)


def open_run(path: str | Path) -> "Run":
    """An existing run directory (checked to be one)."""
    return Run(Path(path))


class Run:
    """A run directory, read and analysed from Python."""

    def __init__(self, path: str | Path):
        self.dir = RunDir(Path(path))
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

        params, _ = load_run_checkpoint(self.path, step)
        if member is None:
            return params
        self._check_member(member)
        return {k: v[member] for k, v in params.items()}

    def _check_member(self, member: int) -> None:
        if not 0 <= member < len(self.members):
            raise RunDirError(f"member {member}: out of range; this run has members 0..{len(self.members) - 1}")

    def analyze(self, member: int = 0) -> dict:
        """Score every head of every member and identify the circuit (writes analysis/ and the
        report); returns circuit.json. `member` picks the single-model figures."""
        from induction_jax.analysis.analyze import analyze_run

        return json.loads((analyze_run(self.path, member) / "circuit.json").read_text())

    def scores(self):
        """analysis/scores.csv (run `analyze` first) as a DataFrame, one row per (member, layer, head)."""
        import pandas as pd

        path = self.path / "analysis" / "scores.csv"
        if not path.is_file():
            raise RunDirError(f"{path}: missing; run Run.analyze() (or 'induction-jax analyze') first")
        return pd.read_csv(path)

    def phase(self, **options) -> dict:
        """Time the phase change in every member (writes phase/ and the report); returns stats.json.
        Options: `smooth_steps`, `loss_smooth_steps`, `variance`."""
        from induction_jax.phase.run import phase_run

        return json.loads((phase_run(self.path, **options) / "stats.json").read_text())

    def timings(self):
        """phase/timings.csv (run `phase` first) as a DataFrame, one row per (curve, member)."""
        import pandas as pd

        path = self.path / "phase" / "timings.csv"
        if not path.is_file():
            raise RunDirError(f"{path}: missing; run Run.phase() (or 'induction-jax phase') first")
        return pd.read_csv(path)

    def export(self, member: int | None = 0, format: str = "npz", out: str | Path | None = None,
               step: int | None = None) -> Path:
        """Write one member's (or, `member=None`, every member's) weights as npz, safetensors or a
        TransformerLens config + state dict; default path RUN_DIR/exports/member<K>-step<S>.<ext>."""
        from induction_jax.analysis.weights import load_run_checkpoint
        from induction_jax.interop.export import FORMATS, export_params
        from induction_jax.analysis.weights import WeightsError

        if format not in FORMATS:
            raise WeightsError(f"format {format!r}: unknown; allowed: {', '.join(FORMATS)}")
        if member is not None:
            self._check_member(member)
        params, meta = load_run_checkpoint(self.path, step)
        if out is not None:
            return export_params(params, member, format, out, self.config.model)
        suffix = {"npz": ".npz", "safetensors": ".safetensors", "transformer-lens": ""}[format]
        name = f"{'all' if member is None else f'member{member}'}-step{meta['step']}{suffix}"
        with self.dir.lock():
            if format == "transformer-lens":
                target = self.dir.owned_dir(f"exports/{name}")
            else:
                target = self.dir.output(f"exports/{name}")
            return export_params(params, member, format, target, self.config.model)


def analyze_weights(params: dict, half_length: int = 25, **options) -> dict:
    """Every score and the circuit verdict for circuit-layout weights from any source (one
    model, or stacked `[E, ...]`; e.g. `from_transformer_lens(model)`); returns the result dict
    of `analysis.run.analyze_params` (scores arrays, circuit, baseline)."""
    from induction_jax.analysis.run import analyze_params
    from induction_jax.analysis.weights import stacked_params

    single = np.ndim(params["W_E"]) == 2 if "W_E" in params else False
    return analyze_params(stacked_params(params, ensemble=not single), half_length, **options)


def from_transformer_lens(model_or_state_dict, cfg=None) -> dict:
    """A TransformerLens attention-only model's weights in circuit layout (see interop)."""
    from induction_jax.interop.transformer_lens import from_transformer_lens as convert

    return convert(model_or_state_dict, cfg)


__all__ = ["train", "sweep", "open_run", "Run", "analyze_weights", "from_transformer_lens", "PRESETS"]
