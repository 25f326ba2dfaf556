"""Singular learning theory: the local learning coefficient (LLC) of a parameter snapshot.

`sampler` draws SGLD chains from the localised tempered posterior around w* (pure JAX,
vmappable over chains, members, snapshots and step sizes; `sample_batch` runs many settings'
chains on one axis over the devices, as training runs members); `llc` turns their loss traces
into the estimate; `diagnostics` says whether to trust it.
"""

from induction_jax.slt.diagnostics import (EpsSweep, GammaSweep, chain_diagnostics, eps_figure, eps_sensitivity,
                                           gamma_sensitivity, pick_gamma, stability, trace_figure)
from induction_jax.slt.llc import llc_estimate
from induction_jax.slt.sampler import ChainResult, SampleResult, SGLDConfig, sample, sample_batch, sgld_chain

__all__ = ["ChainResult", "EpsSweep", "GammaSweep", "SGLDConfig", "SampleResult", "chain_diagnostics", "eps_figure",
           "eps_sensitivity", "gamma_sensitivity", "llc_estimate", "pick_gamma", "sample", "sample_batch", "sgld_chain",
           "stability", "trace_figure"]
