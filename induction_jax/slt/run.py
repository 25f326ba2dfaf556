"""`llc_run(RUN_DIR)`: the local learning coefficient of every member at every snapshot, with
diagnostics; writes RUN_DIR/llc/ (llc.csv, traces.npz, stats.json, figures) and a report section.

Each (snapshot, member) pair is one model: w* its snapshot, its dataset `n` sequences drawn
from the member's training distribution with a fixed key (the same for all its snapshots),
its loss the training loss. The models of one snapshot are one chunk (`chunks.run_chunks`): one
compiled call whose every chain of every model is one axis sharded over the devices and run as
training runs its members (`vmap`, or `lax.map` per device on a CPU: `sampler.sample_batch`),
kept under llc/chunks/ the moment it finishes, so an
interrupted run continues where it stopped. Model (s, j)'s key is the (s * E + j)-th of
`split(PRNGKey(seed), S * E)`, as when all S * E models were one call.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from induction_jax import chunks, ensemble, signals, snapshots
from induction_jax.arrays import save_arrays, tree_digest
from induction_jax.config import ConfigError, RunConfig
from induction_jax.memory import member_loop
from induction_jax.phase.run import phase_window
from induction_jax.rundir import RunDir, RunDirError, json_safe, write_json_atomic, write_text_atomic
from induction_jax.slt import figures
from induction_jax.slt.diagnostics import CHAIN_FLAGS, batched_stats, eps_sensitivity
from induction_jax.slt.sampler import SGLDConfig, sample_batch
from induction_jax.slt.stages import stage_boundaries
from induction_jax.training import DATA, loss_fn, member_task_params, seed_key, task_inputs

LLC_DATA = 0x11C        # folded into a member's data key: its LLC dataset, apart from every training batch
DEFAULT_N = 1024        # sequences in a member's LLC dataset


@dataclass(frozen=True)
class TrainingLoss:
    """The task's training loss on a batch (hashable: a static argument)."""

    cfg: RunConfig

    def __call__(self, params, batch):
        return loss_fn(self.cfg, params, batch)[0]


def llc_dataset(cfg: RunConfig, data_seed: int, n: int, task_params=None):
    """`n` sequences of the member's training distribution, drawn by the task with the member's
    parameters and the data the task fixed for it (a batch: `{tokens [n, T], ...}`)."""
    data_key = seed_key(data_seed, DATA)
    params = member_task_params(cfg, data_key, task_params)
    return cfg.task.sample(jax.random.fold_in(data_key, LLC_DATA), task_inputs(cfg, params), n, cfg.model.d_vocab)


def restriction_mask(params: dict, where: str | None, cfg: RunConfig):
    """None (every weight moves) or a 0/1 mask moving only one head's weights (`L1H0`: its
    W_Q, W_K, W_V, W_O) or one layer's (`L1`); a one-line error for one the model lacks. The
    parameters the task fixes (`Task.fixed_param_names`, e.g. Gaussian items' `W_E`) are not
    weights of the model's posterior and never move."""
    fixed = cfg.task.fixed_param_names
    if where is None:
        return {k: jnp.float32(k not in fixed) for k in params} if fixed else None
    L, H = cfg.model.n_layers, cfg.model.n_heads
    m = re.fullmatch(r"L(\d+)(?:H(\d+))?", where)
    if not m or int(m.group(1)) >= L or (m.group(2) is not None and int(m.group(2)) >= H):
        raise ConfigError(f"--head {where}: not a head or layer of this model; allowed: L0H0..L{L - 1}H{H - 1}, "
                          f"or L0..L{L - 1} for a layer")
    layer = int(m.group(1))
    heads = np.zeros((L, H, 1, 1), np.float32)
    if m.group(2) is None:
        heads[layer] = 1.0
    else:
        heads[layer, int(m.group(2))] = 1.0
    return {k: (jnp.asarray(heads) if k in ("W_Q", "W_K", "W_V", "W_O") else jnp.zeros(())) for k in params}


def estimate(cfg: RunConfig, sgld: SGLDConfig, params_N: dict, data_N, keys_N, mask=None) -> dict:
    """The LLC of N models at once: `params_N` and `data_N` stacked `[N, ...]`, one key each.
    Their N x chains chains are one axis of one compiled call (`sample_batch`), run over the
    devices as the run's members train (`memory.member_loop`)."""
    cfg = cfg.replace(compute_dtype="float32")
    result = sample_batch(jnp.asarray(keys_N), TrainingLoss(cfg), params_N, data_N, sgld, mask=mask,
                          loop=member_loop(cfg))
    est, flags = jax.device_get(batched_stats(sgld.burn_in, result))
    return jax.tree.map(np.asarray, {
        **{k: est[k] for k in ("llc_mean", "llc_std", "llc_se", "llc_per_chain", "init_loss")},
        "loss": result.chains.loss, **{f: flags[f] for f in (*CHAIN_FLAGS, "drifting")}})


def llc_run(run_dir: str | Path, sgld: SGLDConfig, n: int = DEFAULT_N, which_steps: str = "all",
            which_members: list[int] | None = None, head: str | None = None, seed: int = 0,
            gamma_auto: bool = False) -> Path:
    """`gamma_auto` (`--gamma auto`): first pick gamma by `diagnostics.pick_gamma` from a sweep of
    sgld.gamma x GAMMA_FACTORS at the last snapshot of the first member, then estimate with it."""
    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    members = run.members()
    sgld.check_items(n)
    members_idx = list(range(len(members))) if which_members is None else which_members
    if any(not 0 <= e < len(members) for e in members_idx):
        raise RunDirError(f"--members: out of range; this run has members 0..{len(members) - 1}")
    with run.lock():
        interrupted = (f"during the LLC estimation; the run is intact and finished chunks are kept: run again "
                       f"'induction-jax llc {run.path}' to continue")
        signals.run(run.check_config, what=interrupted)        # Orbax: a second on a busy machine
        steps, params = snapshots.load(run, snapshots.select(run, which_steps))
        mask = restriction_mask({k: v[0, 0] for k, v in params.items()}, head, cfg)   # a bad head fails here
        gap = snapshots.missing(run, cfg, which_steps)   # scheduled steps in the selection with no file
        if gap:
            print(snapshots.missing_message(run, gap, list(steps)), file=sys.stderr)
        S, E = len(steps), len(members_idx)
        params = {k: v[:, members_idx].reshape(S * E, *v.shape[2:]) for k, v in params.items()}
        data = signals.run(jax.vmap(lambda s, tp: llc_dataset(cfg, s, n, tp)),      # signals.run: interruptible
                           jnp.asarray(members.data_seed[members_idx], jnp.uint32),
                           ensemble.task_arrays(cfg, members.select(members_idx)), what=interrupted)
        keys = jax.random.split(jax.random.PRNGKey(seed), S * E)
        curves = signals.run(_behaviour, run, cfg.task.primary_curve, members_idx, steps, what=interrupted)
        gamma_sweep = None
        if gamma_auto:   # one gamma for the whole run, picked at the last snapshot of the first member
            from induction_jax.slt.diagnostics import gamma_sensitivity
            gamma_sweep = signals.run(gamma_sensitivity, jax.random.PRNGKey(seed + 2),
                                      TrainingLoss(cfg.replace(compute_dtype="float32")),
                                      {k: jnp.asarray(v[(S - 1) * E]) for k, v in params.items()},
                                      jax.tree.map(lambda x: x[0], data), sgld, mask=mask, loop=member_loop(cfg),
                                      what=interrupted)
            sgld = dataclasses.replace(sgld, gamma=gamma_sweep.chosen_gamma)
        signals.check(interrupted)
        llc = _chunked(run, cfg, sgld, n, head, seed, gamma_auto, members_idx, steps, params, data, keys, mask,
                       interrupted)
        # Sensitivity to eps, at the last snapshot of the first member asked for.
        w_last = {k: jnp.asarray(v[(S - 1) * E]) for k, v in params.items()}
        d_first = jax.tree.map(lambda x: x[0], data)
        sweep = signals.run(eps_sensitivity, jax.random.PRNGKey(seed + 1),
                            TrainingLoss(cfg.replace(compute_dtype="float32")), w_last, d_first, sgld, mask=mask,
                            loop=member_loop(cfg), what=interrupted)
        stats = _stats(run, cfg, members, members_idx, steps, llc, sgld, n, head, sweep, curves)
        stats["missing_snapshot_steps"] = gap
        stats["gamma_rule"] = None if gamma_sweep is None else gamma_sweep.summary()
        if gamma_sweep is not None and gamma_sweep.warning:
            stats["warnings"].append(gamma_sweep.warning)
        folder = run.output_dir("llc")
        save_arrays(folder / "traces.npz", {"steps": steps, "members": np.asarray(members_idx), "loss": llc["loss"],
                                            "llc_per_chain": llc["llc_per_chain"], "init_loss": llc["init_loss"]})
        write_text_atomic(folder / "llc.csv", _table(members, members_idx, steps, llc, head))
        write_json_atomic(folder / "stats.json", json_safe(stats))
        figures.llc_curves(steps, llc["llc_mean"], llc["llc_se"], stats, folder / "llc_curves.png")
        from induction_jax.slt.diagnostics import eps_figure, trace_figure
        trace_figure(llc["loss"][-1, 0], float(llc["init_loss"][-1, 0]), sgld.burn_in, folder / "traces.png",
                     f"SGLD loss traces: {members.label(members_idx[0])}, step {steps[-1]}")
        eps_figure(sweep, folder / "eps.png", f"eps sensitivity at step {steps[-1]}, {members.label(members_idx[0])}: "
                                              f"{'stable' if sweep.stable else 'NOT stable'}")
    return folder.path


def _chunked(run, cfg, sgld, n, head, seed, gamma_auto, members_idx, steps, params, data, keys, mask,
             what) -> dict:
    """`estimate` one snapshot (all E members asked for) at a time, each kept as it finishes;
    the results stacked `[S, E, ...]`."""
    S, E = len(steps), len(members_idx)
    settings = {"sgld": dataclasses.asdict(sgld), "n": n, "head": head, "seed": seed, "gamma_auto": gamma_auto,
                "members": members_idx, "steps": np.asarray(steps).tolist(),
                "config": tree_digest({"config.json": np.frombuffer(run.config_json.read_bytes(), np.uint8)}),
                "data": tree_digest(jax.tree.map(np.asarray, data))}
    store = chunks.ChunkStore(run.path, "llc", settings)
    models = lambda s: {k: v[s * E:(s + 1) * E] for k, v in params.items()}     # noqa: E731
    chain = lambda s: estimate(cfg, sgld, jax.tree.map(jnp.asarray, models(s)), data,      # noqa: E731
                               keys[s * E:(s + 1) * E], mask)
    plan = (f"{E} members x {S} snapshots x {sgld.chains} chains x {sgld.draws} draws, one snapshot a chunk, "
            f"at gamma {sgld.gamma:g}")
    out = chunks.run_chunks(store, S, chain, models, plan=plan, what=what)
    return {k: np.stack([o[k] for o in out]) for k in out[0]}


def _stats(run, cfg, members, members_idx, steps, llc, sgld, n, head, sweep, curves) -> dict:
    per_member = []
    for j, e in enumerate(members_idx):
        flagged = [int(steps[s]) for s in range(len(steps)) if any(llc[f][s, j].any() for f in CHAIN_FLAGS)
                   or llc["drifting"][s, j]]
        per_member.append({"member": e, "label": members.label(e),
                           "boundaries": stage_boundaries(steps, llc["llc_mean"][:, j], llc["llc_se"][:, j]),
                           "flagged_steps": flagged, "behaviour": curves.get(e)})
    n_flagged = sum(len(m["flagged_steps"]) for m in per_member)
    warnings = ([sweep.warning] if not sweep.stable else []) + (
        [f"{n_flagged} of {llc['llc_mean'].size} estimates have a flagged chain or drift (see llc.csv)"]
        if n_flagged else [])
    medians = phase_window(run.path, cfg.task.primary_curve)
    window = None if medians is None else [medians["onset"], medians["end"], medians["midpoint"]]
    return {"sgld": dataclasses.asdict(sgld), "n": n, "behaviour_curve": cfg.task.primary_curve,
            "n_beta": sgld.n_beta_for(n), "head": head,
            "steps": np.asarray(steps).tolist(), "members": per_member, "phase_window": window,
            "eps_sweep": {"eps": sweep.eps, "llc_mean": sweep.llc_mean, "llc_se": sweep.llc_se,
                          "stable": sweep.stable, "warning": sweep.warning},
            "warnings": warnings, "llc_mean": llc["llc_mean"], "llc_se": llc["llc_se"]}


def _behaviour(run: RunDir, curve: str, members_idx, steps) -> dict:
    """Each member's `curve` (the task's primary probe curve) at the snapshot steps (from
    metrics.csv), for the figure."""
    from induction_jax.metrics import metric_matrix, read_metrics

    E = len(run.members())
    probe_steps, ic = metric_matrix(read_metrics(run.metrics_csv), curve, E)
    return {e: np.interp(steps, probe_steps, ic[e]).tolist() for e in members_idx}


def _table(members, members_idx, steps, llc, head) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["member", "init_seed", "data_seed", "step", "restricted_to", "llc_mean", "llc_std", "llc_se",
                "init_loss", *[f"chains_{f}" for f in CHAIN_FLAGS], "drifting"])
    for s, step in enumerate(steps):
        for j, e in enumerate(members_idx):
            w.writerow([e, members.init_seed[e], members.data_seed[e], int(step), head or "all",
                        *(f"{llc[k][s, j]:.6g}" for k in ("llc_mean", "llc_std", "llc_se", "init_loss")),
                        *(int(llc[f][s, j].sum()) for f in CHAIN_FLAGS), bool(llc["drifting"][s, j])])
    return buf.getvalue()
