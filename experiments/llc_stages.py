"""Developmental stages of the induction circuit: the LLC of every member over training.

On a run with snapshots at the default settings (e.g. the one of formation_order.py), the LLC
of `--members` at every third snapshot, in one compiled call; the stage boundaries of each
member's curve against its phase-change midpoint and the second loss drop near step 1000;
and the sampler's speed, in model-gradient evaluations per second, against a plain per-chain
loop (devinterp's way) on the same model in the same run.

    python experiments/llc_stages.py RUN_DIR [--members 0-7]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from induction_jax import snapshots, use_cpu_cores
from induction_jax.members import parse_seed_range
from induction_jax.rundir import RunDir
from induction_jax.slt.run import DEFAULT_N, TrainingLoss, llc_dataset, llc_run
from induction_jax.slt.sampler import SGLDConfig, sample, sgld_chain


def per_chain_loop_speed(cfg, sgld: SGLDConfig, w, data) -> tuple[float, float]:
    """(gradients/s of a Python loop over chains, each chain one jitted scan; of the vmapped
    sampler), on one model, compile excluded from both."""
    loss = TrainingLoss(cfg)
    one = jax.jit(lambda k: sgld_chain(k, loss, w, data, sgld).loss)
    keys = jax.random.split(jax.random.PRNGKey(0), sgld.chains)
    one(keys[0]).block_until_ready()
    tic = time.perf_counter()
    for k in keys:
        one(k).block_until_ready()
    loop = sgld.chains * sgld.draws / (time.perf_counter() - tic)
    all_chains = jax.jit(lambda k: sample(k, loss, w, data, sgld).chains.loss)
    all_chains(jax.random.PRNGKey(0)).block_until_ready()
    tic = time.perf_counter()
    all_chains(jax.random.PRNGKey(1)).block_until_ready()
    return loop, sgld.chains * sgld.draws / (time.perf_counter() - tic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--members", default="0-7")
    parser.add_argument("--every-other", action="store_true", default=True)
    args = parser.parse_args()
    use_cpu_cores()
    run = RunDir(Path(args.run_dir))
    cfg = run.read_config().replace(compute_dtype="float32")
    members = parse_seed_range("--members", args.members)
    have = snapshots.steps(run)
    chosen = sorted(set(have[::3]) | {have[-1]})
    sgld = SGLDConfig()
    n_models = len(members) * len(chosen)
    print(f"LLC of {len(members)} members at {len(chosen)} snapshots ({n_models} models, {sgld.chains} chains x "
          f"{sgld.draws} draws, eps {sgld.eps:g}, gamma {sgld.gamma:g}, n {DEFAULT_N})", flush=True)
    tic = time.perf_counter()
    out = llc_run(run.path, sgld, which_steps=",".join(map(str, chosen)), which_members=members)
    seconds = time.perf_counter() - tic
    stats = json.loads((out / "stats.json").read_text())
    grads = n_models * sgld.chains * (sgld.draws + 5 * sgld.draws / n_models)       # + the eps sweep of one model
    print(f"{seconds:.0f} s in all: {grads / seconds:.0f} model-gradient evaluations/s (compile and the eps sweep "
          f"included)")
    _, params = snapshots.load(run, [chosen[-1]])
    w = {k: jnp.asarray(v[0, members[0]]) for k, v in params.items()}
    data = llc_dataset(cfg, int(run.members().data_seed[members[0]]), DEFAULT_N)
    loop, vmapped = per_chain_loop_speed(cfg, sgld, w, data)
    print(f"one model, {sgld.chains} chains: per-chain loop {loop:.0f} gradients/s, vmapped sampler {vmapped:.0f} "
          f"gradients/s ({vmapped / loop:.2f}x)")
    window = stats.get("phase_window") or [None, None, None]
    print(f"phase-change window (median onset to end) {window[0]}-{window[1]}, median midpoint {window[2]}")
    for j, m in enumerate(stats["members"]):
        llc = [stats["llc_mean"][s][j] for s in range(len(stats["steps"]))]
        print(f"  {m['label']}: LLC {llc[0]:.1f} at step 0, peak {max(llc):.1f} at step "
              f"{stats['steps'][int(np.argmax(llc))]}, {llc[-1]:.1f} at the end; boundaries: "
              + (", ".join(f"{b['kind']} {b['step']:.0f}" for b in m["boundaries"]) or "none"))
    for w_ in stats["warnings"]:
        print(f"  warning: {w_}")
    Path(out, "study.json").write_text(json.dumps({"seconds": seconds, "grads_per_s": grads / seconds,
                                                   "loop_grads_per_s": loop, "vmapped_grads_per_s": vmapped}, indent=1))


if __name__ == "__main__":
    main()
