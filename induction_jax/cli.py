"""Command line: `induction-jax train | analyze | ...`. Thin: builds configs, calls the library."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from induction_jax import __version__
from induction_jax.config import SECTIONS, ConfigError, RunConfig

EXIT_USAGE = 2


class CliError(RuntimeError):
    """A bad argument or input found after parsing; printed as one line, exit code 2."""


def _bool_arg(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field (`--n-layers`, `--lr`, ...), help text with its default."""
    for section, klass in SECTIONS.items():
        group = parser.add_argument_group(f"{section} config")
        for f in dataclasses.fields(klass):
            kind = {"int": int, "float": float, "bool": _bool_arg}[str(f.type)]
            flag = "--" + f.name.replace("_", "-")
            metavar = {"int": "N", "float": "X", "bool": "BOOL"}[str(f.type)]
            group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=metavar,
                               help=f"{f.metadata['help']} (default: {f.default})")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The config file (if any), then every flag that was given, on top of the defaults."""
    base = RunConfig()
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            obj = json.loads(path.read_text())
        except OSError as e:
            raise CliError(f"--config {path}: cannot be read ({e.strerror})") from None
        except ValueError as e:
            raise CliError(f"--config {path}: not valid JSON ({e})") from None
        # A run's own config.json wraps the config; a plain config file is the config itself.
        base = RunConfig.from_dict(obj["config"] if isinstance(obj, dict) and "kind" in obj else obj)
    overrides = {name: getattr(args, name) for name in _field_names() if getattr(args, name) is not None}
    return base.replace(**overrides)


def _field_names() -> list[str]:
    return [f.name for klass in SECTIONS.values() for f in dataclasses.fields(klass)]


def cmd_train(args: argparse.Namespace) -> int:
    from induction_jax.run import train_run

    cfg = config_from_args(args)
    out = Path(args.out or time.strftime("runs/run-%Y%m%d-%H%M%S"))
    tic = time.perf_counter()
    run = train_run(cfg, out, overwrite=args.overwrite, progress=not args.no_progress)
    summary = json.loads(run.summary_json.read_text())
    finals = [m["final_loss_second_half"] for m in summary["members"] if m["final_loss_second_half"] is not None]
    print(f"trained {summary['n_members']} members x {cfg.train.steps} steps in "
          f"{time.perf_counter() - tic:.0f} s; final loss_second_half "
          f"min {min(finals):.3f} / max {max(finals):.3f}" if finals else "no member finished")
    if not args.no_analysis:
        from induction_jax.analysis.report import analyze_run

        out_dir = analyze_run(run.path)
        _print_circuits(out_dir)
        print(f"report: {run.path / 'report.html'}")
    print(f"run directory: {run.path}")
    return 0


def _print_circuits(analysis_dir: Path) -> None:
    circuit = json.loads((analysis_dir / "circuit.json").read_text())
    print(f"clean induction circuit in {circuit['n_clean']} of {circuit['n_members']} members")
    for r in circuit["members"]:
        failed = [k for k, ok in r["checks"].items() if not ok]
        print(f"  seed {r['seed']}: previous-token L{r['prev_token_head'][0]}H{r['prev_token_head'][1]} "
              f"({r['prev_token_score']:.2f}), induction L{r['induction_head'][0]}H{r['induction_head'][1]} "
              f"({r['induction_score']:.2f})" + (f"; fails: {', '.join(failed)}" if failed else ""))


def cmd_analyze(args: argparse.Namespace) -> int:
    from induction_jax.analysis.report import analyze_run

    out_dir = analyze_run(args.run_dir, args.seed)
    _print_circuits(out_dir)
    print(f"analysis: {out_dir}")
    print(f"report: {Path(args.run_dir) / 'report.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="induction-jax", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"induction-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train an ensemble of seeds and write a run directory",
                           description="Train an ensemble (one member per seed) in one compiled call "
                                       "and write RUN_DIR with config, metrics, checkpoint, plots.")
    train.add_argument("--out", metavar="DIR", default=None,
                       help="run directory to write (default: runs/run-<date>-<time>)")
    train.add_argument("--overwrite", action="store_true",
                       help="replace the run already in --out (default: refuse)")
    train.add_argument("--config", metavar="FILE", default=None,
                       help="start from this config JSON (a run's config.json works); flags override it")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--no-analysis", action="store_true",
                       help="skip the circuit analysis and report after training")
    add_config_flags(train)
    train.set_defaults(func=cmd_train)

    analyze = sub.add_parser("analyze", help="find and score the induction circuit in every member of a run",
                             description="Write RUN_DIR/analysis/ (scores.csv, circuit.json, figures) "
                                         "and RUN_DIR/report.html.")
    analyze.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'induction-jax train'")
    analyze.add_argument("--seed", type=int, default=None, metavar="K",
                         help="member index whose single-model figures are drawn (default: 0)")
    analyze.set_defaults(func=cmd_analyze)
    return parser


def main(argv: list[str] | None = None) -> int:
    from induction_jax.analysis.weights import WeightsError
    from induction_jax.rundir import RunDirError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, CliError, RunDirError, WeightsError) as e:
        print(f"induction-jax {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"induction-jax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
