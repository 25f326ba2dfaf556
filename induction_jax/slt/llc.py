"""The local learning coefficient from a sampler's loss traces.

llc(w*) = n_beta (E[L_n(w)] - L_n(w*)), the expectation over the localised tempered posterior,
estimated per chain from the mean of its post-burn-in trace. Pure `jnp` on one `sample`
result; `vmap` it over whatever the sampler was vmapped over (members, snapshots, step sizes).
"""

from __future__ import annotations

import jax.numpy as jnp

from induction_jax.config import ConfigError
from induction_jax.slt.sampler import SampleResult


def check_burn_in(result: SampleResult, burn_in: int) -> None:
    draws = result.chains.loss.shape[-1]
    if not 0 <= burn_in < draws:
        raise ConfigError(f"burn_in={burn_in}: must be >= 0 and < the {draws} draws per chain")


def llc_estimate(result: SampleResult, n_beta, burn_in: int) -> dict:
    """Per chain n_beta (mean post-burn-in loss - L_n(w*)); the mean and spread over chains.

    `n_beta` must be the sampler's (None = `result.n_beta`). `llc_std` is the std over chains
    (ddof 1); `llc_se` = llc_std / sqrt(chains), the standard error of `llc_mean` (the chains
    are independent, so this holds however autocorrelated each chain is). `llc_trace` is
    n_beta (L_m(w_t) - L_n(w*)) per draw, burn-in included, as devinterp reports it.
    """
    check_burn_in(result, burn_in)
    n_beta = result.n_beta if n_beta is None else n_beta
    loss_CT, init_loss = result.chains.loss, result.init_loss
    mean_loss_C = jnp.mean(loss_CT[:, burn_in:], -1)
    llc_C = n_beta * (mean_loss_C - init_loss)
    C = len(llc_C)
    llc_std = jnp.std(llc_C, ddof=1) if C > 1 else jnp.zeros_like(llc_C[0])
    return {"llc_mean": jnp.mean(llc_C), "llc_std": llc_std, "llc_se": llc_std / C ** 0.5,
            "llc_per_chain": llc_C, "init_loss": init_loss, "mean_loss_per_chain": mean_loss_C,
            "llc_trace": n_beta * (loss_CT - init_loss)}
