"""Our LLC sampler against devinterp 2.0.1 itself, on the same weights, data and settings.

A trained member's snapshot is loaded from RUN_DIR, copied into a PyTorch module that computes
our model's forward pass (checked: the logits agree to float32 rounding), and both estimators
run on that member's LLC dataset (`n` sequences, as `induction-jax llc` builds it) with the same
SGLD settings: eps (devinterp's `lr`), gamma (`localization`), n_beta (passed to devinterp
explicitly: its own sample() has no default), minibatch size, chains and SGLD steps per chain.
Our `draws` counts every step, burn-in included; devinterp's `num_draws` counts the steps after
its `num_burnin_steps`, so it gets draws - burn_in of them. devinterp's init loss is averaged
over n / batch batches (one pass over the n sequences, the exact L_n as ours).

Printed side by side: each estimate, by our convention (post-burn-in mean) and by devinterp's
(its headline `llc_mean` averages every step, burn-in included), the std between chains, and
model gradients per second (chains x steps / wall time; ours with and without its compile).

    .venv/bin/pip install devinterp==2.0.1      # torch is already there; nothing pulls a new one
    .venv/bin/python benchmarks/llc_vs_devinterp.py RUN_DIR [--step S] [--member 0] [--snapshots all] [--command]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn

import induction_jax
from induction_jax import snapshots
from induction_jax.model import forward
from induction_jax.rundir import RunDir
from induction_jax.slt.run import DEFAULT_N, estimate, llc_dataset
from induction_jax.slt.sampler import SGLDConfig, num_items


class TorchTwin(nn.Module):
    """Our attention-only transformer (induction_jax.functional.apply without LayerNorm or MLP)
    with our parameter layout: W_Q, W_K, W_V [L, H, D, K], W_O [L, H, K, D]."""

    def __init__(self, params: dict[str, np.ndarray]):
        super().__init__()
        if any(k not in ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U") for k in params):
            raise SystemExit(f"this benchmark's torch twin has no LayerNorm or MLP; the run has {sorted(params)}")
        for k, v in params.items():
            setattr(self, k, nn.Parameter(torch.tensor(np.asarray(v, np.float32))))

    def forward(self, tokens):
        T = tokens.shape[1]
        x = self.W_E[tokens] + self.W_pos[:T]
        mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=tokens.device))
        for layer in range(self.W_Q.shape[0]):
            q = torch.einsum("btd,hdk->bhtk", x, self.W_Q[layer])
            k = torch.einsum("btd,hdk->bhtk", x, self.W_K[layer])
            v = torch.einsum("btd,hdk->bhtk", x, self.W_V[layer])
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            pattern = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1)
            x = x + torch.einsum("bhtk,hkd->btd", pattern @ v, self.W_O[layer])
        return x @ self.W_U


def ours(cfg, sgld: SGLDConfig, w_N, data, key):
    """`slt.run.estimate`, the core of `induction-jax llc`: the N snapshots of one member in one
    compiled call (every chain of every snapshot on one axis over the devices), timed twice."""
    N = len(jax.tree.leaves(w_N)[0])
    data_N = jax.tree.map(lambda x: jnp.broadcast_to(x, (N, *x.shape)), data)
    keys = jax.random.split(key, N)
    tic = time.perf_counter()
    out = estimate(cfg, sgld, w_N, data_N, keys)
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    out = estimate(cfg, sgld, w_N, data_N, keys)
    second = time.perf_counter() - tic
    n_beta = sgld.n_beta_for(num_items(data))
    excess = out["loss"] - out["init_loss"][:, None, None]           # [N, chains, draws]
    return {"post": n_beta * excess[..., sgld.burn_in:].mean(-1), "all": n_beta * excess.mean(-1),
            "secs": second, "secs_with_compile": first, "init_loss": out["init_loss"]}


def command(run_dir: Path, step_spec: str, member: int, sgld: SGLDConfig, n: int) -> float:
    """Wall time of `induction-jax llc` as a user runs it (a fresh process: start-up, compile,
    the estimate, its eps check, the figures and the report), on a copy of the run directory."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("llc", "dynamics"))
        flags = [f"--{f.name.replace('_', '-')}={getattr(sgld, f.name)}" for f in dataclasses.fields(sgld)
                 if f.name != "n_beta"]
        cmd = [sys.executable, "-m", "induction_jax.cli", "llc", str(copy), "--snapshots", step_spec,
               "--members", str(member), "--n", str(n), *flags]
        tic = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return time.perf_counter() - tic


def devinterp_llc(model, tokens: np.ndarray, sgld: SGLDConfig, n_beta: float, seed: int, device: str = "cpu"):
    from datasets import Dataset
    from devinterp.slt.llc import llc

    ds = Dataset.from_dict({"input_ids": tokens.astype(np.int64)}).with_format("torch")
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tic = time.perf_counter()
        out = llc(model, ds, {}, lr=sgld.eps, n_beta=n_beta, num_chains=sgld.chains,
                  num_draws=sgld.draws - sgld.burn_in, num_burnin_steps=sgld.burn_in, batch_size=sgld.batch_size,
                  localization=sgld.gamma, num_init_loss_batches=len(tokens) // sgld.batch_size, init_seed=seed,
                  device=device, output_path=os.path.join(tmp, "samples.zarr"),
                  sampling_method="rmsprop_sgld" if sgld.sampler == "rmsprop-sgld" else "sgmcmc_sgld")
        out = out.load()
        secs = time.perf_counter() - tic
    trace = np.asarray(out["loss_trace"])                  # [chains, steps], burn-in included
    init = float(out["init_loss"])
    return {"post": n_beta * (trace[:, sgld.burn_in:].mean(1) - init), "all": np.asarray(out["llc_per_chain"]),
            "headline": float(out["llc_mean"]), "secs": secs, "init_loss": init}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--step", type=int, default=None, help="snapshot step (default: the last)")
    ap.add_argument("--member", type=int, default=0)
    ap.add_argument("--n", type=int, default=DEFAULT_N)
    ap.add_argument("--sampler", default="sgld", choices=("sgld", "rmsprop-sgld"))
    ap.add_argument("--gamma", type=float, default=SGLDConfig.gamma)
    ap.add_argument("--eps", type=float, default=SGLDConfig.eps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chains", type=int, default=SGLDConfig.chains)
    ap.add_argument("--draws", type=int, default=SGLDConfig.draws)
    ap.add_argument("--burn-in", type=int, default=SGLDConfig.burn_in)
    ap.add_argument("--batch-size", type=int, default=SGLDConfig.batch_size)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="devinterp's torch device (default: cuda where torch has it; ours runs on JAX's default)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--snapshots", default="last", choices=("last", "all"),
                    help="last: the one snapshot (--step); all: every snapshot of the member, ours in one call, "
                         "devinterp in a loop over them")
    ap.add_argument("--command", action="store_true",
                    help="also time `induction-jax llc` end to end on a copy of the run (its eps check included)")
    args = ap.parse_args(argv)
    induction_jax.use_cpu_cores()     # as the command line does: on a CPU, one JAX device per core
    sgld = SGLDConfig(eps=args.eps, gamma=args.gamma, sampler=args.sampler, chains=args.chains, draws=args.draws,
                      burn_in=args.burn_in, batch_size=args.batch_size)
    run = RunDir(Path(args.run_dir))
    cfg = run.read_config()
    steps = snapshots.select(run, "all" if args.step is None else str(args.step))
    steps = list(steps) if args.snapshots == "all" else [steps[-1]]
    _, params = snapshots.load(run, steps)
    w_N = {k: np.asarray(v[:, args.member], np.float32) for k, v in params.items()}
    data = llc_dataset(cfg, int(run.members().data_seed[args.member]), args.n)
    tokens = np.asarray(data["tokens"])
    n_beta = sgld.n_beta_for(args.n)

    twins = [TorchTwin({k: v[s] for k, v in w_N.items()}).to(args.device) for s in range(len(steps))]
    with torch.no_grad():
        diff = max(float(np.max(np.abs(
            twin(torch.tensor(tokens[:64], dtype=torch.long, device=args.device)).cpu().numpy()
            - np.asarray(forward(cfg.model, jax.tree.map(lambda v: jnp.asarray(v[s]), w_N), tokens[:64])))))
            for s, twin in enumerate(twins))
    print(f"run {args.run_dir}, member {args.member}, steps {', '.join(map(str, steps))}: torch twin max "
          f"|logit difference| {diff:.2e}")
    print(f"settings: {sgld.sampler}, eps {sgld.eps:g}, gamma {sgld.gamma:g}, n_beta {n_beta:.2f} (n {args.n}), "
          f"batch {sgld.batch_size}, {sgld.chains} chains x {sgld.draws} SGLD steps ({sgld.burn_in} burn-in); "
          f"jax {jax.__version__} on {len(jax.devices())} {jax.devices()[0].platform} device(s), torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads, {args.device})")

    a = ours(cfg, sgld, jax.tree.map(jnp.asarray, w_N), data, jax.random.PRNGKey(args.seed))
    bs = [devinterp_llc(twin, tokens, sgld, n_beta, 100 + args.seed, args.device) for twin in twins]
    b = {"post": np.stack([r["post"] for r in bs]), "all": np.stack([r["all"] for r in bs]),
         "headline": np.array([r["headline"] for r in bs]), "secs": sum(r["secs"] for r in bs),
         "init_loss": np.array([r["init_loss"] for r in bs])}
    grads = len(steps) * sgld.chains * sgld.draws
    print(f"{'':16} {'step':>6} {'L_n(w*)':>8} {'llc post-burn-in':>22} {'llc all steps':>14} {'chain std':>9}")
    for name, r in (("induction-jax", a), ("devinterp 2.0.1", b)):
        for s, step in enumerate(steps):
            post = r["post"][s]
            print(f"{name:16} {step:6d} {r['init_loss'][s]:8.4f} {post.mean():12.3f} +- "
                  f"{post.std(ddof=1) / math.sqrt(len(post)):6.3f} {r['all'][s].mean():14.3f} {post.std(ddof=1):9.3f}")
    rate_a, rate_b = grads / a["secs"], grads / b["secs"]
    print(f"gradients/s: induction-jax {rate_a:.1f} ({grads / a['secs_with_compile']:.1f} with compile), "
          f"devinterp {rate_b:.1f}{' (a loop over the snapshots)' if len(steps) > 1 else ''}; speed ratio "
          f"induction-jax / devinterp: {rate_a / rate_b:.2f}x (with our compile "
          f"{(grads / a['secs_with_compile']) / rate_b:.2f}x)")
    if len(steps) == 1:
        print(f"devinterp headline llc_mean {b['headline'][0]:.3f} (every step, burn-in included)")
    result = {"step": int(steps[-1]), "steps": [int(s) for s in steps], "member": args.member, "n": args.n,
              "sgld": dataclasses.asdict(sgld), "n_beta": n_beta, "max_logit_difference": diff,
              "jax_platform": jax.devices()[0].platform, "jax_devices": len(jax.devices()),
              "torch_device": args.device, "gradients": grads,
              **{f"{name}_{k}": v for name, r in (("ours", a), ("devinterp", b)) for k, v in
                 (("llc", float(r["post"][-1].mean())), ("llc_chain_std", float(r["post"][-1].std(ddof=1))),
                  ("init_loss", float(r["init_loss"][-1])), ("seconds", r["secs"]))},
              "ours_llc_per_step": a["post"].mean(1).tolist(), "devinterp_llc_per_step": b["post"].mean(1).tolist(),
              "ours_seconds_with_compile": a["secs_with_compile"], "devinterp_headline_llc": float(b["headline"][-1]),
              "speed_ratio": b["secs"] / a["secs"], "speed_ratio_with_compile": b["secs"] / a["secs_with_compile"]}
    if args.command:
        secs = command(Path(args.run_dir), ",".join(map(str, steps)), args.member, sgld, args.n)
        result |= {"command_seconds": secs, "command_ratio": b["secs"] / secs}
        print(f"induction-jax llc, end to end (a fresh process, its eps check at 5 step sizes included): {secs:.1f} s "
              f"against devinterp's {b['secs']:.1f} s for its estimates alone: {b['secs'] / secs:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
