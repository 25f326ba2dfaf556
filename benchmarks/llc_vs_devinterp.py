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
    .venv/bin/python benchmarks/llc_vs_devinterp.py RUN_DIR [--step S] [--member 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn

from induction_jax import snapshots
from induction_jax.model import forward
from induction_jax.rundir import RunDir
from induction_jax.slt.llc import llc_estimate
from induction_jax.slt.run import DEFAULT_N, TrainingLoss, llc_dataset
from induction_jax.slt.sampler import SGLDConfig, sample


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


def ours(cfg, sgld: SGLDConfig, w_star, data, key):
    fn = jax.jit(sample, static_argnums=(1, 4))
    loss = TrainingLoss(cfg.replace(compute_dtype="float32"))
    tic = time.perf_counter()
    result = jax.block_until_ready(fn(key, loss, w_star, data, sgld))
    first = time.perf_counter() - tic
    tic = time.perf_counter()
    result = jax.block_until_ready(fn(key, loss, w_star, data, sgld))
    second = time.perf_counter() - tic
    post = llc_estimate(result, None, sgld.burn_in)
    every = llc_estimate(result, None, 0)
    return {"post": np.asarray(post["llc_per_chain"]), "all": np.asarray(every["llc_per_chain"]),
            "secs": second, "secs_with_compile": first, "init_loss": float(result.init_loss)}


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
    args = ap.parse_args(argv)
    sgld = SGLDConfig(eps=args.eps, gamma=args.gamma, sampler=args.sampler, chains=args.chains, draws=args.draws,
                      burn_in=args.burn_in, batch_size=args.batch_size)
    run = RunDir(Path(args.run_dir))
    cfg = run.read_config()
    steps = snapshots.select(run, "all" if args.step is None else str(args.step))
    step = steps[-1]
    _, params = snapshots.load(run, [step])
    w = {k: np.asarray(v[0, args.member], np.float32) for k, v in params.items()}
    data = llc_dataset(cfg, int(run.members().data_seed[args.member]), args.n)
    tokens = np.asarray(data["tokens"])
    n_beta = sgld.n_beta_for(args.n)

    twin = TorchTwin(w).to(args.device)
    with torch.no_grad():
        diff = float(np.max(np.abs(twin(torch.tensor(tokens[:64], dtype=torch.long, device=args.device)).cpu().numpy()
                                   - np.asarray(forward(cfg.model, jax.tree.map(jnp.asarray, w), tokens[:64])))))
    print(f"run {args.run_dir}, member {args.member}, step {step}: torch twin max |logit difference| {diff:.2e}")
    print(f"settings: {sgld.sampler}, eps {sgld.eps:g}, gamma {sgld.gamma:g}, n_beta {n_beta:.2f} (n {args.n}), "
          f"batch {sgld.batch_size}, {sgld.chains} chains x {sgld.draws} SGLD steps ({sgld.burn_in} burn-in); "
          f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads, {args.device})")

    a = ours(cfg, sgld, jax.tree.map(jnp.asarray, w), data, jax.random.PRNGKey(args.seed))
    b = devinterp_llc(twin, tokens, sgld, n_beta, 100 + args.seed, args.device)
    grads = sgld.chains * sgld.draws
    rows = [("induction-jax", a, grads / a["secs"], f" ({grads / a['secs_with_compile']:.0f} with compile)"),
            ("devinterp 2.0.1", b, grads / b["secs"], "")]
    print(f"{'':16} {'L_n(w*)':>8} {'llc post-burn-in':>22} {'llc all steps':>20} {'chain std':>9}  gradients/s")
    for name, r, rate, note in rows:
        se = r["post"].std(ddof=1) / math.sqrt(len(r["post"]))
        print(f"{name:16} {r['init_loss']:8.4f} {r['post'].mean():12.3f} +- {se:6.3f} {r['all'].mean():20.3f} "
              f"{r['post'].std(ddof=1):9.3f}  {rate:8.1f}{note}")
    print(f"devinterp headline llc_mean {b['headline']:.3f} (every step, burn-in included); "
          f"speed ratio induction-jax / devinterp: {a['secs'] and (grads / a['secs']) / (grads / b['secs']):.2f}x "
          f"(with our compile {(grads / a['secs_with_compile']) / (grads / b['secs']):.2f}x)")
    result = {"step": int(step), "member": args.member, "n": args.n, "sgld": dataclasses.asdict(sgld),
              "n_beta": n_beta, "max_logit_difference": diff, "jax_platform": jax.devices()[0].platform,
              "torch_device": args.device, "gradients": grads,
              **{f"{name}_{k}": v for name, r in (("ours", a), ("devinterp", b)) for k, v in
                 (("llc", float(r["post"].mean())), ("llc_chain_std", float(r["post"].std(ddof=1))),
                  ("init_loss", r["init_loss"]), ("seconds", r["secs"]))},
              "ours_seconds_with_compile": a["secs_with_compile"], "devinterp_headline_llc": b["headline"],
              "speed_ratio": b["secs"] / a["secs"], "speed_ratio_with_compile": b["secs"] / a["secs_with_compile"]}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
