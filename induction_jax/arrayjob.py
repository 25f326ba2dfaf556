"""A sweep as an array job: slice I of N (`--shard I/N`) is task I, submitted with submitit.

`submit_slices(executor, cfg, members, out, count)` submits the N slices as one array job
(`executor.map_array`), slice I writing `out/slice-I-of-N`; `submitit.AutoExecutor` sends it to
SLURM, `submitit.LocalExecutor` runs the same code in local processes (the tests). A task that
is preempted and requeued resumes its slice from its last checkpoint (`train_slice` trains a
new slice, resumes a stopped one, leaves a finished one). Then `induction-jax merge
out/slice-*-of-N --out DIR`, or `merge_runs(slice_dirs(out, N), DIR)`.
"""

from __future__ import annotations

from pathlib import Path

from induction_jax.config import RunConfig
from induction_jax.members import Members


def slice_dirs(out: str | Path, count: int) -> list[Path]:
    return [Path(out) / f"slice-{i}-of-{count}" for i in range(count)]


def train_slice(cfg_dict: dict, members_table: dict, out: str, index: int, count: int) -> str:
    """Train slice `index` of `count` of the spec into `out`, or resume it if a preempted task
    left it unfinished; returns `out`. Plain arguments, so it pickles to any cluster node."""
    from induction_jax import use_cpu_cores

    use_cpu_cores()
    from induction_jax.checkpoint import Checkpoints
    from induction_jax.rundir import RunDir
    from induction_jax.runner import resume_run, train_run

    cfg = RunConfig.from_dict(cfg_dict)
    run = RunDir(Path(out))
    if not run.is_run():
        train_run(cfg, out, members=Members.from_table(members_table, cfg.task), progress=False,
                  shard=(index, count))
        return out
    with Checkpoints(run.checkpoints, async_save=False) as ckpt:
        done = max(ckpt.steps(), default=0)
    if done < cfg.train.steps or not run.summary_json.is_file():
        resume_run(out, progress=False)
    return out


def submit_slices(executor, cfg: RunConfig, members: Members, out: str | Path, count: int) -> list:
    """Submit the `count` slices of the spec (`cfg`, `members`) as one array job; the jobs."""
    from induction_jax.shards import parse_shard, select

    parse_shard(f"0/{count}")
    select(members, count - 1, count)            # every slice holds a member: refused before submitting
    dirs = [str(d) for d in slice_dirs(out, count)]
    n = len(dirs)
    return executor.map_array(train_slice, [cfg.to_dict()] * n, [members.table()] * n, dirs,
                              list(range(n)), [count] * n)
