"""What, measured at initialisation, goes with when a member's circuit forms?

Each member's initial weights are rebuilt from its init seed (training is a pure function of
its seeds, so nothing needs to have been saved) and its first training batch from its data
seed, in one vmapped call. The quantities are rank-correlated (Spearman, bootstrap 95% CI)
with a timing. A quantity of the initial weights alone is the same for every member that
shares an init seed, so in a crossed design it is correlated with the timing averaged over
that init seed's data seeds: one point per init seed, not one per member (repeating a point
J times would shrink the CI without adding evidence).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from induction_jax import training as train_lib
from induction_jax.analysis import circuits
from induction_jax.analysis.factored import FactoredMatrix
from induction_jax.config import RunConfig
from induction_jax.phase.variance import MIN_N_SPEARMAN, spearman

# name -> (what it is, whether it depends on the init seed alone)
DESCRIPTIONS = {
    "max_pos_prev_token_L0": ("largest positional previous-token score of a layer-0 head", True),
    "max_k_composition_sd": ("largest K-composition of a (layer-0, layer-1) head pair, in baseline sd", True),
    "norm_W_E": ("Frobenius norm of W_E", True),
    "norm_W_pos": ("Frobenius norm of W_pos", True),
    "mean_norm_QK_L0": ("mean Frobenius norm of the layer-0 heads' QK = W_Q W_K^T", True),
    "mean_norm_OV_L0": ("mean Frobenius norm of the layer-0 heads' OV = W_V W_O", True),
    "mean_norm_QK_L1": ("mean Frobenius norm of the layer-1 heads' QK", True),
    "mean_norm_OV_L1": ("mean Frobenius norm of the layer-1 heads' OV", True),
    "init_grad_norm": ("gradient norm of the training loss on the first batch", False),
}


def describe(name: str) -> tuple[str, bool]:
    """What a quantity is, and whether it depends on the init seed alone. `init_<curve>`: the
    task's probe curve at step 0."""
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    if name.startswith("init_"):
        return f"{name[5:]} on the probe batch at step 0", True
    raise KeyError(name)


def _first_gradient_norm(cfg: RunConfig, params: dict, data_key: jax.Array, task_params, shared=None) -> jax.Array:
    batch = cfg.task.sample(jax.random.fold_in(data_key, 0), train_lib.task_inputs(cfg, task_params, shared),
                            cfg.data.batch_size, cfg.model.d_vocab)
    grads, _ = jax.grad(functools.partial(train_lib.loss_fn, cfg), has_aux=True)(params, batch)
    return jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree.leaves(grads)))


def init_quantities(cfg: RunConfig, members, init_primary: np.ndarray | None = None) -> dict:
    """Per member `[E]`: every quantity of `DESCRIPTIONS` that applies to this architecture
    (weight-based ones need an attention-only model with at least two layers), and
    `init_<primary curve>` when its values at step 0 are given."""
    from induction_jax.ensemble import task_arrays

    def member(init_seed, data_seed, task_params, shared):
        state = train_lib.init_member(cfg, init_seed, data_seed, jnp.float32(0), jnp.float32(0),
                                      task_params=task_params)
        return state.params, _first_gradient_norm(cfg, state.params, state.data_key, state.task_params, shared)

    params, grad_norm = jax.jit(jax.vmap(member, in_axes=(0, 0, 0, None)))(
        jnp.asarray(members.init_seed, jnp.uint32), jnp.asarray(members.data_seed, jnp.uint32),
        task_arrays(cfg, members), train_lib.shared_arrays(cfg))
    out = {"init_grad_norm": np.asarray(grad_norm),
           "norm_W_E": np.asarray(jnp.sqrt((params["W_E"] ** 2).sum((1, 2)))),
           "norm_W_pos": np.asarray(jnp.sqrt((params["W_pos"] ** 2).sum((1, 2))))}
    if init_primary is not None:
        out[f"init_{cfg.task.primary_curve}"] = np.asarray(init_primary, float)
    try:
        circuits.check_weight_based(params)
    except circuits.NotApplicable:
        return out
    pos = circuits.positional_prev_token_score(circuits.positional_qk_pattern(params, cfg.task.seq_len))
    out["max_pos_prev_token_L0"] = np.asarray(pos[:, 0].max(-1))
    qk_norm = np.asarray(circuits.QK(params).norm())                     # [E, L, H]
    ov_norm = np.asarray(FactoredMatrix(params["W_V"], params["W_O"]).norm())
    for layer in range(min(2, qk_norm.shape[1])):
        out[f"mean_norm_QK_L{layer}"] = qk_norm[:, layer].mean(-1)
        out[f"mean_norm_OV_L{layer}"] = ov_norm[:, layer].mean(-1)
    if qk_norm.shape[1] >= 2:
        base = circuits.composition_baseline(params["W_Q"].shape[-2], params["W_Q"].shape[-1])["k_composition"]
        k = np.asarray(circuits.composition_scores(params)["k_composition"])[:, 0, :, 1, :]     # [E, H0, H1]
        out["max_k_composition_sd"] = (k.max((1, 2)) - base["mean"]) / base["std"]
    return out


def _per_init_seed(init_seed: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One point per init seed: the value (the same for all its members) and the mean timing
    over its members that were timed."""
    seeds = np.unique(init_seed)
    return seeds, np.array([np.nanmean(values[init_seed == s]) if np.isfinite(values[init_seed == s]).any()
                            else np.nan for s in seeds])


def predictor_table(quantities: dict, timing: np.ndarray, init_seed: np.ndarray, n_boot: int = 2000) -> dict:
    """Spearman rho of every quantity with `timing` (NaN = censored), with a bootstrap 95% CI,
    the unit it was computed over, and a plain verdict."""
    rows = []
    for name, values in quantities.items():
        what, init_only = describe(name)
        if init_only and len(np.unique(init_seed)) < len(init_seed):
            seeds, t = _per_init_seed(init_seed, timing)
            x = np.array([values[init_seed == s][0] for s in seeds])
            unit = "init seed (timing averaged over its data seeds)"
        else:
            x, t, unit = values, timing, "member"
        rows.append({"name": name, "description": what, "unit": unit, **spearman(x, t, n_boot=n_boot)})
    rows.sort(key=lambda r: -abs(r["rho"]) if r["rho"] is not None else 0)
    excluding = [r["name"] for r in rows if r["ci95_low"] is not None and (r["ci95_low"] > 0 or r["ci95_high"] < 0)]
    if all(r["rho"] is None for r in rows):
        verdict = (f"not tested: {int(np.isfinite(timing).sum())} of {len(timing)} members timed; a rank "
                   f"correlation needs at least 3 timed members whose values vary")
    elif all(r["ci95_low"] is None for r in rows):
        n = max(r["n"] for r in rows)
        verdict = (f"not tested: {n} points (timed members, or init seeds where a quantity depends on the init "
                   f"seed alone); a Spearman CI covers too rarely below {MIN_N_SPEARMAN} (docs/definitions.md), "
                   f"so none is given and no rho here means anything yet")
    elif excluding:
        best = rows[0]
        verdict = (f"{len(excluding)} of {len(rows)} quantities have a 95% CI that excludes 0 (no correction for "
                   f"testing {len(rows)}); the strongest is {best['name']} (rho {best['rho']:+.2f}, "
                   f"CI {best['ci95_low']:+.2f} to {best['ci95_high']:+.2f})")
    else:
        verdict = (f"nothing measured at initialisation predicts it: every one of the {len(rows)} quantities has a "
                   f"95% CI that includes 0")
    return {"rows": rows, "verdict": verdict, "ci_excludes_zero": excluding}
