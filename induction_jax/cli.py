"""Command line: `induction-jax train | analyze | ...`. Thin: builds configs, calls the library."""

from __future__ import annotations

if __name__ == "__main__":    # `python -m induction_jax.cli`: signals caught before numpy loads, as in entry.py
    from induction_jax import signals as _signals
    _signals.install()

import argparse  # noqa: E402
import contextlib
import dataclasses
import json
import sys
import time
from pathlib import Path

from induction_jax import __version__
from induction_jax.config import PRESETS, SECTIONS, ConfigError, RunConfig

EXIT_USAGE = 2
EXIT_DIVERGED = 3
EXIT_STORAGE = 4


class CliError(RuntimeError):
    """A bad argument or input found after parsing; printed as one line, exit code 2."""


def _bool_arg(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


FLAG_TYPES = {"int": int, "float": float, "bool": _bool_arg, "str": str}


def _config_groups() -> list[tuple[str, list]]:
    """(group title, fields): the config sections, then each task's own fields (a field two
    tasks share is one flag, listed under the first)."""
    from induction_jax import tasks

    groups = [(f"{section} config", list(dataclasses.fields(klass))) for section, klass in SECTIONS.items()]
    seen = {f.name for _, fields in groups for f in fields}
    for klass in tasks.classes():
        fields = [f for f in dataclasses.fields(klass) if f.name not in seen]
        seen |= {f.name for f in fields}
        groups.append((f"task {klass.name} (with --task {klass.name})", fields))
    return groups


def add_config_flags(parser: argparse.ArgumentParser, lists: bool = False) -> None:
    """One flag per config field (`--n-layers`, `--lr`, ...) and per task field (`--half-length`),
    help text with its default; `--task` chooses the task.

    With `lists`, each flag takes a comma-separated list (parsed later, in the sweep)."""
    from induction_jax import tasks

    parser.add_argument("--task", default=None, choices=tasks.names(), metavar="{" + ",".join(tasks.names()) + "}",
                        help="the training task (docs/task.md); its own flags are in its group below "
                             "(default: repeated)")
    for title, fields in _config_groups():
        group = parser.add_argument_group(title)
        for f in fields:
            kind = FLAG_TYPES[str(f.type)]
            flag = "--" + f.name.replace("_", "-")
            choices = f.metadata.get("choices")
            metavar = "{" + ",".join(choices) + "}" if choices else {"int": "N", "float": "X", "bool": "BOOL", "str": "SPEC"}[str(f.type)]
            if lists:
                group.add_argument(flag, dest=f"list_{f.name}", type=str, default=None, metavar=metavar + ",...",
                                   help=f"{f.metadata['help']} (default: {f.default})")
            else:
                group.add_argument(flag, dest=f.name, type=kind, default=None, metavar=metavar,
                                   help=f"{f.metadata['help']} (default: {f.default})")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The preset (if any), then the config file (if any), then every flag that was given, on
    top of the defaults."""
    base = RunConfig.preset(args.preset) if getattr(args, "preset", None) else RunConfig()
    if getattr(args, "config", None):
        path = Path(args.config)
        try:
            obj = json.loads(path.read_text())
        except OSError as e:
            raise CliError(f"--config {path}: cannot be read ({e.strerror})") from None
        except ValueError as e:
            raise CliError(f"--config {path}: not valid JSON ({e})") from None
        # A run's own config.json wraps the config; a plain config file is the config itself.
        if isinstance(obj, dict) and "kind" in obj:
            from induction_jax.rundir import RUN_KIND
            if obj["kind"] != RUN_KIND or not isinstance(obj.get("config"), dict):
                raise CliError(f"--config {path}: \"kind\": {obj['kind']!r} is not an induction-jax config; "
                               f"expected a run's config.json or an object with sections "
                               f"{', '.join(SECTIONS)}")
            obj = obj["config"]
        base = RunConfig.from_dict(obj)
        if getattr(args, "preset", None):
            raise CliError("--preset and --config: give one of them (a config file is a whole config)")
    overrides = _flag_overrides(args)
    if getattr(args, "task", None):
        # switched and set in one step: the new task's defaults need not fit the old model
        # (a task with longer sequences comes with its --n-ctx)
        from induction_jax import tasks

        _check_task_flags(tasks.task_class(args.task), overrides)
        with naming_flags(overrides):
            return base.replace(task=args.task, **overrides)
    _check_task_flags(base.task, overrides)
    with naming_flags(overrides):
        return base.replace(**overrides)


@contextlib.contextmanager
def naming_flags(given):
    """A ConfigError about a field the user gave as a flag names that flag first:
    `--log: log='x': must be one of none, tensorboard, ...`."""
    try:
        yield
    except ConfigError as e:
        field = str(e).split("=", 1)[0]
        if field in given:
            raise ConfigError(f"--{field.replace('_', '-')}: {e}") from None
        raise


def _check_task_flags(task, overrides: dict) -> None:
    """A flag of another task's field, given with this task, is a one-line error naming both."""
    own = {f.name for f in dataclasses.fields(task)}
    for name in overrides:
        if name not in _section_field_names() and name not in own:
            flag = "--" + name.replace("_", "-")
            allowed = ", ".join("--" + f.replace("_", "-") for f in sorted(own)) or "none"
            raise CliError(f"{flag}: not a setting of task {task.name}; its settings: {allowed}")


def _section_field_names() -> set[str]:
    return {f.name for klass in SECTIONS.values() for f in dataclasses.fields(klass)}


def _field_names() -> list[str]:
    return [f.name for _, fields in _config_groups() for f in fields]


def _flag_overrides(args: argparse.Namespace) -> dict:
    """The config fields given as flags (not the defaults)."""
    return {name: getattr(args, name) for name in _field_names() if getattr(args, name, None) is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from induction_jax import distributed
    from induction_jax.runner import resume_run, train_run

    if args.coordinator:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    tic = time.perf_counter()
    if args.resume:
        if args.config or args.out or args.overwrite:
            raise CliError("--resume RUN_DIR: continues that run with its own config; it takes no "
                           "--config, --out or --overwrite")
        if args.shard:
            raise CliError("--resume RUN_DIR: a slice resumes as itself; it takes no --shard")
        run = resume_run(args.resume, _flag_overrides(args), progress=not args.no_progress)
    else:
        shard = _shard(args)
        cfg = config_from_args(args)
        out = Path(args.out or time.strftime("runs/run-%Y%m%d-%H%M%S"))
        run = train_run(cfg, out, overwrite=args.overwrite, progress=not args.no_progress, shard=shard)
    if not distributed.is_writer():
        return 0
    if (run.path / "shard.json").is_file():
        print(f"slice written: {run.path}; merge every slice with 'induction-jax merge DIR... --out DIR', "
              f"then analyze the merged run")
        return 0
    summary = json.loads(run.summary_json.read_text())
    metric = run_config(run.path).task.progress_metric
    finals = [m[f"final_{metric}"] for m in summary["members"] if m.get(f"final_{metric}") is not None]
    print(f"trained {summary['n_members']} members x {summary['steps']} steps in "
          f"{time.perf_counter() - tic:.0f} s; final {metric} min {min(finals):.3f} / max {max(finals):.3f}"
          if finals else "no member has a finite final loss")
    if not args.no_analysis:
        from induction_jax.analysis.run import analyze_run

        _print_circuits(analyze_run(run.path, knockout_k=0))
        _knockout_hint(run.path)
        if summary["n_members"] > 1:
            from induction_jax import signals
            signals.check(f"after the analysis; the run's training, checkpoints and analysis are complete: "
                          f"time the phase change with 'induction-jax phase {run.path}'")
            _phase_or_skip(run.path, "train")
        print(f"report: {_write_report(run.path)}")
    print(f"run directory: {run.path}")
    return EXIT_DIVERGED if _report_divergence(run.path, "train") else 0


def _shard(args: argparse.Namespace) -> tuple[int, int] | None:
    """--shard I/N as (I, N), checked before anything else; None without it."""
    if not getattr(args, "shard", None):
        return None
    from induction_jax.shards import parse_shard
    return parse_shard(args.shard)


def cmd_merge(args: argparse.Namespace) -> int:
    from induction_jax.merge import merge_runs

    run = merge_runs(args.slices, args.out)
    summary = json.loads(run.summary_json.read_text())
    print(f"merged {len(args.slices)} slices: {summary['n_members']} members x {summary['steps']} steps")
    print(f"run directory: {run.path}")
    return 0


def _write_report(run_dir) -> Path:
    """report.html, written once by the command after its analyses finished."""
    from induction_jax.report import write_report

    return write_report(Path(run_dir))


def _phase_or_skip(run_dir: Path, command: str) -> None:
    """Time the phase change after training; a run that cannot be timed still gets its report."""
    from induction_jax.phase.detect import PhaseError
    from induction_jax.phase.run import phase_run

    try:
        _print_phase(phase_run(run_dir))
    except PhaseError as e:
        print(f"induction-jax {command}: phase timing of {run_dir} skipped: {e}", file=sys.stderr)


def _report_divergence(run_dir: Path, command: str) -> bool:
    """Name the diverged members of a run on stderr; whether any diverged."""
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    if not summary["n_diverged"]:
        return False
    where = "; ".join(f"{m['label']} at step {m['diverged_step']}" for m in summary["members"]
                      if m["diverged_step"] is not None)
    print(f"induction-jax {command}: {summary['n_diverged']} of {summary['n_members']} members of {run_dir} "
          f"diverged ({summary['divergence_rule']}; their updates stopped there): {where}", file=sys.stderr)
    return True


def _print_circuits(analysis_dir: Path) -> None:
    circuit = json.loads((analysis_dir / "circuit.json").read_text())
    print(f"induction circuit (previous-token head + induction heads, K-composing) in "
          f"{circuit['n_induction_circuit']} of {circuit['n_members']} members; the textbook two-head form "
          f"(one induction head, every other head dispensable) in {circuit['n_clean']}"
          f" (checkpoint step {circuit['checkpoint_step']} of {circuit['steps']})")
    for r in circuit["members"]:
        failed = [k for k, ok in r.get("shared_checks", r["checks"]).items() if not ok]
        print(f"  {r['label']}: previous-token L{r['prev_token_head'][0]}H{r['prev_token_head'][1]} "
              f"({r['prev_token_score']:.2f}), best induction L{r['induction_head'][0]}H{r['induction_head'][1]} "
              f"({r['induction_score']:.2f}) of {r.get('n_induction_heads', '?')} induction heads"
              + (f"; fails: {', '.join(failed)}" if failed else ""))


def _knockout_hint(run_dir: Path) -> None:
    """After training: where the task has knock-outs, which `analyze` runs and this did not (they
    take minutes: every head and pair of heads ablated on every member)."""
    metric = run_config(run_dir).task.knockout_metric
    if metric is not None:
        print(f"knock-outs (heads ablated against {metric}): induction-jax analyze {run_dir}")


def _print_knockouts(analysis_dir: Path) -> None:
    knocked = json.loads((analysis_dir / "circuit.json").read_text()).get("knockout")
    if not knocked or "members" not in knocked:
        return

    def f(x):
        return "n/a" if x is None else f"{x:.2f}"

    print(f"knock-outs: fraction of {knocked['metric']} lost, mean-ablation (analysis/knockout.csv; n/a: no "
          f"in-context score to lose)")
    for r in knocked["members"]:
        print(f"  member {r['member']}: clean {f(r['clean'])}; " + "; ".join(
            f"top-{e['k']} prefix-matching {e['heads']} {f(e['mean']['named'])}, other {e['k']} heads "
            f"{f(e['mean']['controls_median'])} (median of {e['mean']['n_controls']})" for e in r["by_k"]))


def cmd_analyze(args: argparse.Namespace) -> int:
    from induction_jax.analysis.run import analyze_run

    if not 0 <= args.knockout_heads <= 8:
        raise CliError(f"--knockout-heads {args.knockout_heads}: out of range; allowed: 0 (off) to 8")
    if not 1 <= args.knockout_batch <= 65536:
        raise CliError(f"--knockout-batch {args.knockout_batch}: out of range; allowed: 1 to 65536")
    out_dir = analyze_run(args.run_dir, args.member, args.knockout_heads, args.knockout_batch)
    _print_circuits(out_dir)
    _print_knockouts(out_dir)
    print(f"analysis: {out_dir}")
    print(f"report: {_write_report(args.run_dir)}")
    return 0


def cmd_phase(args: argparse.Namespace) -> int:
    from induction_jax.phase.run import phase_run

    out = phase_run(args.run_dir, smooth_steps=args.smooth_steps, loss_smooth_steps=args.loss_smooth_steps,
                    variance=args.variance, progress=True, from_step=args.from_step)
    _print_phase(out)
    print(f"phase: {out}")
    print(f"report: {_write_report(args.run_dir)}")
    return 0


def _num(x, digits: int = 1) -> str:
    """A number for a one-line summary; `None` (an estimate that was refused or diverged) as "n/a"."""
    return "n/a" if x is None else f"{x:.{digits}f}"


def _fmt_ci(ci) -> str:
    return "n/a" if ci is None else f"{ci[0]:.2f}-{ci[1]:.2f}"


def run_config(run_dir: Path):
    from induction_jax.rundir import RunDir

    return RunDir(Path(run_dir)).read_config()


def _print_phase(phase_dir: Path) -> None:
    stats = json.loads((phase_dir / "stats.json").read_text())
    primary = stats["primary_curve"]
    what = primary.replace("_", " ")
    for curve in stats["curves"]:
        m = stats[curve]["midpoint"]
        where = "per-step training loss" if curve == stats.get("step_curve") else "probes"
        if m["mean"] is None:
            print(f"  {curve}: every member censored")
            continue
        ci = (f"95% CI of the mean {m['ci95_low']:.1f}-{m['ci95_high']:.1f}" if m.get("ci95_low") is not None
              else m.get("ci95_note") or "no CI of the mean")
        print(f"  {curve} midpoint: mean {m['mean']:.1f}, std {m['std']:.1f}, CV {_num(m['cv'], 3)}, median "
              f"{m['median']:.1f} ({ci}; {m['n']} timed, "
              f"{m['n_censored']} censored; {where} every {stats[curve]['probe_interval']:g} steps)")
        if m.get("resolution"):
            print(f"    warning: {m['resolution']}")
    for by, order in (stats.get("formation_order") or {}).items():
        c = order["counts"]
        earlier, later = (order[k].replace("_", " ") for k in ("earlier", "later"))
        print(f"  {earlier} forms before / with / after the {later}, by {by}: "
              f"{c['before']} / {c['with']} / {c['after']} (censored {c['censored']})")
    effects = stats.get("interventions")
    if effects:
        print(f"  interventions against the control arm ('{effects['control']}'), {effects['timing']}, paired by seed:")
        for arm, r in effects["arms"].items():
            formed = f"{r['n_timed']} of {r['n']} formed" + (
                f", induction circuit in {r['n_induction_circuit']}" if "n_induction_circuit" in r else "")
            shift = ("" if arm == effects["control"] else
                     f"; shift {r['mean_shift']:+.1f} steps "
                     + (f"[{r['ci95_low']:+.1f}, {r['ci95_high']:+.1f}]" if r.get("ci95_low") is not None else "(no CI)")
                     + f" over {r['n_pairs_timed']} pairs" if "mean_shift" in r else "; no pair where both formed")
            paired = (r.get("planning") or {}).get("paired")
            if paired:
                shift += "; pairs to detect a shift of " + ", ".join(
                    f"{p['shift']:g} steps: {p['n_pairs'] if p['n_pairs'] is not None else 'n/a'}" for p in paired["shift"]) \
                    + f" (power 0.8, sd of the paired differences {paired['sd_diff']:.1f})"
            print(f"    {arm}: {formed}{shift}")
    for label, arm in stats["arms"].items():
        head = f"  [{label}] " if len(stats["arms"]) > 1 else "  "
        var = (arm.get("variance") or {}).get(primary, {}).get("midpoint")
        if var is not None:
            if var["shares"] is None:
                print(f"{head}variance of the {what} midpoint: {var['reason']}")
            else:
                sh, ci = var["shares"], var["shares_ci95"]
                print(f"{head}variance of the {what} midpoint ({var['I']} init x {var['J']} data seeds): init "
                      f"{sh['init']:.2f} [{_fmt_ci(ci['init'])}], data {sh['data']:.2f} [{_fmt_ci(ci['data'])}], "
                      f"residual {sh['residual']:.2f} [{_fmt_ci(ci['residual'])}] (shares, 95% CI)")
        if arm.get("predictors"):
            print(f"{head}init-time predictors of the {what} midpoint: {arm['predictors']['verdict']}")
        plan = arm.get("planning") or {}
        if plan.get("sd") is not None:
            prec = {p["d"]: p for p in plan["precision"]}.get(5.0) or plan["precision"][0]
            sh = {p["shift"]: p for p in plan["shift"]}.get(10.0) or plan["shift"][0]
            print(f"{head}members needed (pilot: sd {plan['sd']:.1f} steps over {plan['n_pilot']} timed; in brackets "
                  f"with its 80% upper bound {plan['sd_upper80']:.1f}): a 95% CI of the {what} midpoint of "
                  f"+-{prec['d']:g} steps: {_num(prec['n'], 0)} [{_num(prec['n_upper80'], 0)}] timed; a shift of "
                  f"{sh['shift']:g} steps between two arms with power 0.8: {_num(sh['n_per_arm'], 0)} "
                  f"[{_num(sh['n_per_arm_upper80'], 0)}] per arm (unpaired; fewer where arms share seeds, see "
                  f"the interventions line); the full table is in stats.json")
        elif plan.get("note"):
            print(f"{head}members needed: {plan['note']}")


def _parse_list(flag: str, text: str, kind) -> list:
    """A comma-separated list of distinct values (one-line errors for a bad or repeated entry)."""
    items = [t.strip() for t in text.split(",")]
    try:
        values = [kind(t) for t in items if t]
    except (ValueError, argparse.ArgumentTypeError):
        values = []
    if not values or len(values) != len(items):
        raise CliError(f"{flag} {text!r}: must be a comma-separated list of values, e.g. 3e-4,1e-3,3e-3")
    repeated = [items[i] for i, v in enumerate(values) if v in values[:i]]
    if repeated:
        raise CliError(f"{flag} {text!r}: {repeated[0]} is listed twice; each value must appear once")
    return values


def cmd_sweep(args: argparse.Namespace) -> int:
    """lr x weight-decay x (init seed, data seed) as one compiled ensemble per shape; shape-changing
    lists (any other config flag given as a list) as separate compiled runs under --out."""
    import itertools

    from induction_jax import ensemble, interventions, memory, shards
    from induction_jax.analysis.run import analyze_run
    from induction_jax.members import Members, parse_seed_range
    from induction_jax.rundir import RunDir, RunDirError
    from induction_jax.runner import train_run

    lrs = _parse_list("--lr", args.list_lr, float) if args.list_lr is not None else None
    wds = _parse_list("--weight-decay", args.list_weight_decay, float) if args.list_weight_decay is not None else None
    arms = args.intervention
    if arms is not None:
        repeated = [a for i, a in enumerate(arms) if a in arms[:i]]
        if repeated:
            raise CliError(f"--intervention {repeated[0]}: listed twice; each arm must appear once")
    shard = _shard(args)
    base = config_from_args(args)
    _task_params(args.task_param or [], base.task, check=False)        # malformed or unknown: before the lists
    init_seeds = parse_seed_range("--init-seeds", args.init_seeds) if args.init_seeds is not None else None
    data_seeds = parse_seed_range("--data-seeds", args.data_seeds) if args.data_seeds is not None else None
    shape_lists = {}
    for name in _field_names():
        text = getattr(args, f"list_{name}", None)
        if text is not None and name not in ("lr", "weight_decay"):
            kind = FLAG_TYPES[_field_type(name)]
            shape_lists[name] = _parse_list("--" + name.replace("_", "-"), text, kind)
    _check_task_flags(base.task, shape_lists)
    out = Path(args.out or time.strftime("runs/sweep-%Y%m%d-%H%M%S"))
    combos = [dict(zip(shape_lists, vals)) for vals in itertools.product(*shape_lists.values())] or [{}]
    # Validate every configuration, member table and memory plan before anything is written.
    for lr in lrs or []:
        base.replace(lr=lr)
    for wd in wds or []:
        base.replace(weight_decay=wd)
    plans = []
    for combo in combos:
        with naming_flags(combo):
            cfg = base.replace(**combo)
        task_params = _task_params(args.task_param or [], cfg.task)   # ranges can depend on the task's fields
        varied = {k: v for k, v in combo.items() if len(shape_lists[k]) > 1}
        run_dir = out if len(combos) == 1 else out / "_".join(f"{k}-{v}" for k, v in varied.items())
        members = Members.grid(cfg, lrs, wds, init_seeds, data_seeds, arms, task_params)
        interventions.build(members.arm, cfg)
        trained = members if shard is None else shards.select(members, *shard)[0]
        memory.plan_groups(cfg, len(trained), ensemble.select_devices(cfg.train.devices), log=lambda m: None)
        if RunDir(run_dir).is_run() and not args.overwrite:
            raise RunDirError(f"{run_dir}: already holds a run; pass --overwrite to replace it, or choose "
                              f"another --out")
        plans.append((combo, cfg, run_dir, members, task_params))
    diverged = False
    for combo, cfg, run_dir, members, task_params in plans:
        design = ("".join(f"{len(v)} {k} x " for k, v in task_params.items())
                  + f"{len(arms or [1])} arms x {len(lrs or [1])} lr x {len(wds or [1])} weight decay x "
                  + (f"{len(set(members.init_seed))} init seeds x {len(set(members.data_seed))} data seeds"
                     if members.crossed else f"{len(set(members.init_seed))} seeds"))
        varied = " ".join(f"{k}={v}" for k, v in combo.items() if len(shape_lists[k]) > 1)
        if shard is not None:
            block = shards.select(members, *shard)[1]
            print(f"sweep: slice {shard[0]} of {shard[1]}: members {block.start}-{block.stop - 1} of {len(members)} "
                  f"({design}) {varied} -> {run_dir}".replace("  ", " "))
            train_run(cfg, run_dir, overwrite=args.overwrite, members=members, progress=not args.no_progress,
                      shard=shard)
            print(f"slice written: {run_dir}; merge every slice with 'induction-jax merge DIR... --out DIR', "
                  f"then analyze the merged run")
            continue
        print(f"sweep: {len(members)} members ({design}) {varied} -> {run_dir}".replace("  ", " "))
        train_run(cfg, run_dir, overwrite=args.overwrite, members=members, progress=not args.no_progress)
        _print_circuits(analyze_run(run_dir, knockout_k=0))
        _knockout_hint(run_dir)
        _phase_or_skip(run_dir, "sweep")
        print(f"report: {_write_report(run_dir)}")
        print(f"run directory: {run_dir}")
        diverged |= _report_divergence(run_dir, "sweep")
    return EXIT_DIVERGED if diverged else 0


def _task_params(specs: list[str], task, check: bool = True) -> dict[str, list]:
    """`--task-param NAME=v1,v2,...` flags as {name: values}, each checked against the task
    (`check=False`: the form, the names and repeats only, not the values' ranges)."""
    out: dict[str, list] = {}
    for spec in specs:
        name, sep, text = spec.partition("=")
        name = name.strip()
        if not sep or not name or not text.strip():
            raise CliError(f"--task-param {spec!r}: must be NAME=v1,v2,... (parameters of task {task.name}: "
                           f"{', '.join(p.name for p in task.member_params()) or 'none'})")
        param = task.member_param(name)
        if name in out:
            raise CliError(f"--task-param {name}: given twice; list all its values in one flag, e.g. "
                           f"--task-param {name}={','.join(map(str, out[name]))},...")
        values = _parse_list(f"--task-param {name}", text, str)
        out[name] = param.check(values, f"--task-param {name}") if check else values
    return out


def cmd_dynamics(args: argparse.Namespace) -> int:
    from induction_jax.dynamics.run import dynamics_run

    out = dynamics_run(args.run_dir, member=args.member, batch=args.batch)
    stats = json.loads((out / "stats.json").read_text())
    n = len(stats["members"])
    print(f"formation steps over {len(stats['snapshot_steps'])} snapshots of {n} members (median; formed in):")
    for event, step in stats["median_step"].items():
        print(f"  {event}: {'n/a' if step is None else f'{step:.0f}'} ({stats['n_formed'][event]} of {n})")
    print("formation orders (most common first):")
    for o in stats["order_counts"][:5]:
        print(f"  {o['n']} of {n}: {o['order'] or '(nothing formed)'}")
    print(f"dynamics: {out}")
    print(f"report: {_write_report(args.run_dir)}")
    return 0


def cmd_llc(args: argparse.Namespace) -> int:
    from induction_jax.members import parse_seed_range
    from induction_jax.slt.run import llc_run
    from induction_jax.slt.sampler import SGLDConfig

    if args.n_beta is not None and args.n_beta <= 0:
        raise CliError(f"--n-beta {args.n_beta:g}: must be > 0 (leave it out for n / ln n)")
    auto = args.gamma == "auto"     # the gamma grid is then centred on the default gamma
    sgld = SGLDConfig(**{k: getattr(args, k) for k in ("eps", "chains", "draws", "burn_in", "batch_size", "sampler")},
                      gamma=SGLDConfig.gamma if auto else args.gamma, n_beta=args.n_beta or 0.0)
    members = None if args.members is None else parse_seed_range("--members", args.members)
    out = llc_run(args.run_dir, sgld, n=args.n, which_steps=args.snapshots, which_members=members, head=args.head,
                  gamma_auto=auto)
    stats = json.loads((out / "stats.json").read_text())
    sgld = dataclasses.replace(sgld, gamma=stats["sgld"]["gamma"])
    if auto:
        rule = stats["gamma_rule"]
        print(f"gamma auto: {rule['chosen_gamma']:.4g} (llc there {_num(rule['llc_at_chosen'])}), the smallest stable "
              f"of " + ", ".join(f"{g:.3g} ({'stable' if ok else 'not'})" for g, ok in zip(rule["gamma"], rule["stable"]))
              + f", at the last snapshot of member {stats['members'][0]['member']}")
    print(f"LLC{' of ' + args.head if args.head else ''} at {len(stats['steps'])} snapshots of "
          f"{len(stats['members'])} members (n {stats['n']}, n_beta {stats['n_beta']:.1f}, eps {sgld.eps:g}, "
          f"gamma {sgld.gamma:g}, {sgld.chains} chains x {sgld.draws} draws):")
    for j, m in enumerate(stats["members"]):
        curve = ", ".join(f"{stats['steps'][s]}: {_num(stats['llc_mean'][s][j])}" for s in range(len(stats["steps"]))
                          if s in (0, len(stats["steps"]) // 2, len(stats["steps"]) - 1))
        bounds = ", ".join(f"{b['kind']} {b['step']:.0f}" for b in m["boundaries"]) or "none"
        print(f"  {m['label']}: {curve}; stage boundaries: {bounds}")
    for w in stats["warnings"]:
        print(f"induction-jax llc: warning: {w}", file=sys.stderr)
    print(f"llc: {out}")
    print(f"report: {_write_report(args.run_dir)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from induction_jax.api import open_run

    path = open_run(args.run_dir)._export(None if args.all else args.member, args.format, args.out, args.step,
                                          args.overwrite, arg="--out", flag="--overwrite")
    print(f"exported: {path}")
    if args.format == "transformer-lens":
        print("load it with: induction_jax.interop.load_transformer_lens(PATH) (TransformerLens 3.x, "
              "pip install -e \".[tl]\")")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """Run benchmarks/throughput.py of this checkout (the benchmark lives beside the package)."""
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
    if not script.is_file():
        raise CliError(f"{script}: not found; 'induction-jax bench' needs the source checkout "
                       f"(pip install -e .)")
    return subprocess.call([sys.executable, str(script), *args.bench_args])


def _field_type(name: str) -> str:
    return next(str(f.type) for _, fields in _config_groups() for f in fields if f.name == name)


# The SGLDConfig fields (but n_beta) as `llc` flags: name, type, default, help. Written out so that
# building the parser imports no JAX (slt.sampler does); tests/test_signals.py checks they match.
LLC_SGLD_FLAGS = (
    ("eps", float, 1e-4, "SGLD step size (the noise variance per step)"),
    ("gamma", float, 1000.0, "localisation strength: the pull toward w* (0 = none)"),
    ("chains", int, 4, "independent chains, all started at w*"),
    ("draws", int, 250, "SGLD steps per chain, each recording one loss (burn-in included)"),
    ("burn_in", int, 80, "first draws of each chain discarded by the estimators"),
    ("batch_size", int, 64, "minibatch size m, drawn without replacement from the n items at every step; "
                            "must be <= n"),
    ("sampler", str, "sgld", "sgld, or rmsprop-sgld (per-weight preconditioned steps, as devinterp's "
                             "SGMCMC.rmsprop_sgld)"),
)


def _gamma_arg(text: str):
    """`--gamma`: a number, or `auto` (the rule of docs/definitions.md picks it per run)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a number >= 0, or auto") from None


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
    train.add_argument("--resume", metavar="RUN_DIR", default=None,
                       help="continue this run from its latest good checkpoint (--steps may extend it)")
    train.add_argument("--config", metavar="FILE", default=None,
                       help="start from this config JSON (a run's config.json works); flags override it")
    train.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="start from a named configuration; flags override it. "
                            + "; ".join(f"{k}: {v['about']}" for k, v in PRESETS.items()))
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--no-analysis", action="store_true",
                       help="skip the circuit analysis and report after training")
    train.add_argument("--shard", metavar="I/N", default=None,
                       help="train only slice I of N (0-based) of the members, with their ids, seeds and keys as in the "
                            "whole run, as its own run directory; 'induction-jax merge' joins the slices "
                            "(array jobs: docs/scaling.md)")
    multi = train.add_argument_group("several processes or hosts (jax.distributed; run the same command "
                                     "in each, with its own --process-id)")
    multi.add_argument("--coordinator", metavar="HOST:PORT", default=None,
                       help="address of process 0's coordinator; off by default (one process)")
    multi.add_argument("--num-processes", type=int, default=1, metavar="N", help="processes in all")
    multi.add_argument("--process-id", type=int, default=0, metavar="I", help="this process, 0..N-1")
    add_config_flags(train)
    train.set_defaults(func=cmd_train)

    analyze = sub.add_parser("analyze", help="find and score the induction circuit in every member of a run",
                             description="Write RUN_DIR/analysis/ (scores.csv, circuit.json, figures) "
                                         "and RUN_DIR/report.html.")
    analyze.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'induction-jax train'")
    analyze.add_argument("--member", type=int, default=None, metavar="K",
                         help="the member (row of the run's members table, 0-based) whose single-model "
                              "figures are drawn (default: 0)")
    analyze.add_argument("--knockout-heads", type=int, default=2, metavar="K",
                         help="where the task names an in-context score (text): ablate the top 1..K heads by "
                              "prefix-matching score, and as many other heads, against it (0 = off; default 2)")
    analyze.add_argument("--knockout-batch", type=int, default=512, metavar="N",
                         help="probe sequences per member for the knock-outs (default 512)")
    analyze.set_defaults(func=cmd_analyze)

    phase = sub.add_parser("phase", help="time the phase change in every member of a run",
                           description="Write RUN_DIR/phase/ (timings.csv, stats.json, figures) and add "
                                       "them to RUN_DIR/report.html.")
    phase.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'induction-jax train'")
    phase.add_argument("--smooth-steps", type=float, default=10, metavar="S",
                       help="centred moving average of the probe curves over at most S steps (at the default "
                            "probes every 10 steps: none; chosen by measurement, see docs/studies/phase-timing.md)")
    phase.add_argument("--loss-smooth-steps", type=float, default=25, metavar="S",
                       help="centred moving average of the per-step training loss over at most S steps")
    phase.add_argument("--from-step", type=float, default=0, metavar="S",
                       help="time the transitions after step S only, for curves with stages (e.g. the bursty "
                            "task's fast rise to a context-label strategy, then the jump to in-context learning)")
    phase.add_argument("--variance", action="store_true",
                       help="require the init x data variance decomposition (an error if no arm of the run "
                            "crosses init and data seeds; crossed arms get it without this flag)")
    phase.set_defaults(func=cmd_phase)

    sweep = sub.add_parser("sweep", help="train and analyse a hyperparameter sweep in one command",
                           description="--lr and --weight-decay lists are crossed with the seeds into one "
                                       "vmapped ensemble (one compiled call); a list for any other config "
                                       "flag (e.g. --batch-size 32,64) runs one compiled ensemble per value "
                                       "under --out.")
    sweep.add_argument("--out", metavar="DIR", default=None, help="sweep directory (default: runs/sweep-<time>)")
    sweep.add_argument("--overwrite", action="store_true", help="replace runs already in --out")
    sweep.add_argument("--config", metavar="FILE", default=None, help="start from this config JSON")
    sweep.add_argument("--preset", choices=sorted(PRESETS), default=None, help="start from a named configuration")
    sweep.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep.add_argument("--shard", metavar="I/N", default=None,
                       help="train only slice I of N (0-based) of the members, with their ids, seeds and keys as in the "
                            "whole run, as its own run directory; 'induction-jax merge' joins the slices "
                            "(array jobs: docs/scaling.md)")
    sweep.add_argument("--init-seeds", metavar="RANGE", default=None,
                       help="init seeds (initial weights), e.g. 0-7 or 0,3,5; crossed with --data-seeds "
                            "(default: the --seeds range)")
    sweep.add_argument("--intervention", metavar="ARM", action="append", default=None,
                       help="an arm: 'none' or interventions during training, e.g. clamp:prev:L0H0:1.0, "
                            "ablate:L1H2, freeze:W_pos, cut:K:L0H1, joined with +, each with an optional "
                            "@START-STOP window; repeat the flag for every arm (crossed with seeds, lr and "
                            "weight decay; docs/interventions.md)")
    sweep.add_argument("--data-seeds", metavar="RANGE", default=None,
                       help="data seeds (training batches), e.g. 0-7; crossed with --init-seeds "
                            "(default: the --seeds range)")
    sweep.add_argument("--task-param", metavar="NAME=V1,V2", action="append", default=None,
                       help="a task parameter that varies per member, with its values, crossed with the seeds, lr, "
                            "weight decay and arms in the same compiled ensemble (e.g. min_period=5,10,25 for the "
                            "repeated task); repeat the flag for another parameter")
    add_config_flags(sweep, lists=True)
    sweep.set_defaults(func=cmd_sweep)

    merge = sub.add_parser("merge", help="join the slices of a sharded sweep (--shard I/N) into one run",
                           description="Check that the slice directories are every slice of one sweep and "
                                       "write one run directory equal to training the sweep in one process.")
    merge.add_argument("slices", metavar="DIR", nargs="+", help="the slices' run directories")
    merge.add_argument("--out", metavar="DIR", required=True, help="the merged run directory (must not exist)")
    merge.set_defaults(func=cmd_merge)

    dynamics = sub.add_parser("dynamics", help="follow the circuit's formation through every member's snapshots",
                              description="Analyse every snapshot of every member (train with --snapshots log), "
                                          "time when each sub-circuit forms, and write RUN_DIR/dynamics/ and a "
                                          "report section.")
    dynamics.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with snapshots")
    dynamics.add_argument("--member", type=int, default=0, metavar="K", help="the member animated over training")
    dynamics.add_argument("--batch", type=int, default=32, metavar="N",
                          help="models (member x snapshot) a chunk, each kept as it finishes; on an accelerator "
                               "also how many are vmapped at once (memory; a CPU scores one per core at a time)")
    dynamics.set_defaults(func=cmd_dynamics)

    llc = sub.add_parser("llc", help="the local learning coefficient of every member at every snapshot",
                         description="Estimate the LLC (localised SGLD, chains vmapped, every member and snapshot in "
                                     "one compiled call) with diagnostics, find stage boundaries, and write "
                                     "RUN_DIR/llc/ and a report section. Needs snapshots (train with --snapshots).")
    llc.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with snapshots")
    llc.add_argument("--snapshots", default="all", metavar="STEPS",
                     help="snapshot steps, e.g. 0,100,200 or 0-500 (those that exist; default: all)")
    llc.add_argument("--members", default=None, metavar="RANGE", help="members, e.g. 0-7 (default: all)")
    llc.add_argument("--head", default=None, metavar="LxHy",
                     help="refined LLC: only this head's weights (or a layer, Lx) move; the rest stay at w*")
    llc.add_argument("--n", type=int, default=1024, metavar="N", help="sequences in each member's LLC dataset")
    llc.add_argument("--n-beta", type=float, default=None, metavar="X", help="inverse temperature x n (default n / ln n)")
    for name, kind, default, text in LLC_SGLD_FLAGS:
        extra = ({"type": _gamma_arg, "metavar": "X|auto", "help": text + "; auto: the smallest stable gamma of 1000 x "
                  "{1/30, 1/10, 1/3, 1, 3} (docs/definitions.md), 15 extra sample sets"} if name == "gamma" else
                 {"choices": ("sgld", "rmsprop-sgld"), "metavar": "{sgld,rmsprop-sgld}"} if name == "sampler" else {})
        llc.add_argument("--" + name.replace("_", "-"), dest=name, **{"type": kind, "default": default,
                                                                      "metavar": "X", "help": text, **extra})
    llc.set_defaults(func=cmd_llc)

    export = sub.add_parser("export", help="write a member's weights as npz, safetensors or a TransformerLens model",
                            description="Write circuit-layout weights (npz, safetensors: plain arrays named W_E, "
                                        "W_Q [L,H,D,Dh], ...) or a TransformerLens 3.x config + state dict that "
                                        "loads as a HookedTransformer.")
    export.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by 'induction-jax train'")
    export.add_argument("--member", type=int, default=0, metavar="K", help="the member (0-based row of the members table)")
    export.add_argument("--all", action="store_true", help="every member, stacked (npz and safetensors only)")
    export.add_argument("--format", default="npz", metavar="FMT",
                        help="npz, safetensors or transformer-lens (default: npz)")
    export.add_argument("--step", type=int, default=None, metavar="S", help="checkpoint step (default: the latest)")
    export.add_argument("--out", default=None, metavar="PATH",
                        help="where to write (default: RUN_DIR/exports/member<K>-step<S>[.npz|.safetensors]); "
                             "a file (a folder for transformer-lens) outside any run directory, or under a "
                             "run's exports/ folder, never a run directory's own files")
    export.add_argument("--overwrite", action="store_true",
                        help="replace a file (or TransformerLens export folder) already at --out that "
                             "induction-jax did not write (default: refuse); never a run directory's own files")
    export.set_defaults(func=cmd_export)

    bench = sub.add_parser("bench", help="training throughput against the PyTorch loop (benchmarks/throughput.py)",
                           description="Runs benchmarks/throughput.py; its options pass through "
                                       "(--sizes 1,2,4,8,16,32 --steps 200 --no-torch).")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of benchmarks/throughput.py")
    bench.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from induction_jax import signals

    old_handlers = signals.install()      # first (unless the console script did): a signal is a flag
    try:
        return _main(argv)
    finally:
        signals.restore(old_handlers)


NOT_STARTED = "before it started; nothing was written"
FINISHED_FIRST = "after its last safe point; it finished first, so everything it wrote is complete"
# What each command imports first (JAX and more: seconds on a busy machine), imported where a
# signal can interrupt it; a module missing here is imported by the command, just not interruptibly.
# induction_jax.checkpoint (Orbax) is for the config check of commands that read a run.
COMMAND_MODULES = {"train": ["induction_jax.runner"],
                   "sweep": ["induction_jax.runner", "induction_jax.analysis.run"],
                   "merge": ["induction_jax.merge", "induction_jax.runner"],
                   "analyze": ["induction_jax.analysis.run", "induction_jax.checkpoint"],
                   "phase": ["induction_jax.phase.run", "induction_jax.checkpoint"],
                   "dynamics": ["induction_jax.dynamics.run", "induction_jax.checkpoint"],
                   "llc": ["induction_jax.slt.run", "induction_jax.checkpoint"],
                   "export": ["induction_jax.api", "induction_jax.checkpoint"]}


def _load(command: str) -> None:
    """Every CPU core a JAX device (before any JAX work), then the command's modules."""
    import importlib

    from induction_jax import use_cpu_cores

    use_cpu_cores()
    for module in COMMAND_MODULES.get(command, []):
        importlib.import_module(module)


def _main(argv: list[str] | None) -> int:
    from induction_jax import signals

    parser = build_parser()               # light: no JAX, so --help and usage errors are fast
    args, unknown = parser.parse_known_args(argv)
    if args.command == "bench":      # its options belong to benchmarks/throughput.py
        args.bench_args = unknown + args.bench_args
    elif unknown:
        _unknown_arguments(parser, args.command, unknown, sys.argv[1:] if argv is None else argv)
    try:
        signals.check(NOT_STARTED)        # a signal while Python loaded the command line
        if args.command != "bench":
            signals.run(_load, args.command, what=NOT_STARTED)
        code = args.func(args)
    except signals.Interrupted as e:
        print(f"induction-jax {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except Exception as e:
        code = _error_code(e)
        if code is None:
            raise
        print(f"induction-jax {args.command}: error: {e}", file=sys.stderr)
        return code
    signum = signals.caught()             # a signal after the command's last check: it is not swallowed
    if signum is not None:
        print(f"induction-jax {args.command}: interrupted by {signals.name(signum)} {FINISHED_FIRST}",
              file=sys.stderr)
        return 128 + signum
    return code


def _unknown_arguments(parser: argparse.ArgumentParser, command: str, unknown: list[str], argv: list[str]):
    """A usage error from the subcommand's own parser, with the nearest flag for a typo
    (`--sedds` -> did you mean --seeds?) and a word on a flag given several values; exits 2."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    flags = [s for a in sub._actions for s in a.option_strings if s.startswith("--")]
    hints = []
    for item in unknown:
        if item.startswith("-"):
            close = difflib.get_close_matches(item.split("=", 1)[0], flags, n=1, cutoff=0.6)
            if close:
                hints.append(f"{item}: did you mean {close[0]}?")
            continue
        i = argv.index(item) if item in argv else -1
        before = next((argv[j] for j in range(i - 1, -1, -1) if argv[j].startswith("--")), None) if i > 0 else None
        if before is not None and before in flags:
            several = (f"; for several values run 'induction-jax sweep {before} A,B,...'" if command == "train"
                       and before.replace("--", "").replace("-", "_") in ("lr", "weight_decay") else
                       f"; give a list as one comma-separated value, e.g. {before} {argv[i - 1]},{item}" if command == "sweep"
                       and argv[i - 1] != before else "")
            hints.append(f"{item}: {before} takes one value{several}")
    # The subcommand's short usage (its full one lists every config flag: 20 lines burying the hint).
    sys.stderr.write(f"usage: {sub.prog} [options]  ('{sub.prog} --help' lists them)\n")
    sub.exit(EXIT_USAGE, f"{sub.prog}: error: unrecognized arguments: {' '.join(unknown)}"
             + ("; " + "; ".join(hints) if hints else "") + "\n")


def _error_code(e: Exception) -> int | None:
    """The exit code of an error reported as one line (bad input, a full disk), else None."""
    from induction_jax.analysis.weights import WeightsError
    from induction_jax.phase.detect import PhaseError
    from induction_jax.rundir import RunDirError, StorageError

    memory = sys.modules.get("induction_jax.memory")   # only a command that imported it raises its error
    if isinstance(e, StorageError):
        return EXIT_STORAGE
    if isinstance(e, (ConfigError, CliError, RunDirError, WeightsError, PhaseError)) or (
            memory is not None and isinstance(e, memory.ResourceError)):
        return EXIT_USAGE
    return None


if __name__ == "__main__":
    from induction_jax import signals as _signals
    sys.exit(_signals.leave(main()))
