"""Can an LLC estimate be trusted? Per-chain flags, an eps sweep with a verdict, and figures.

`chain_diagnostics` (pure `jnp`, vmappable like the estimator):

- `nonfinite`: a loss or distance in the trace (burn-in included) is NaN or inf.
- `moved_far`: the post-burn-in mean loss moved from L_n(w*) by more than
  min(n_free / n_beta, far_rel * L_n(w*)) (the second term only when L_n(w*) > 0). First term:
  the LLC of an analytic model at a local minimum is at most d/2 (a regular model; singular
  ones have less), so a chain whose own estimate exceeds d = n_free in size is twice past
  anything a localised posterior can give, whatever the sampling noise or a tuned step's
  O(eps) bias. Second term (far_rel = 1: the mean loss doubled, or fell below 0): the sampled
  weights no longer compute what w* computes, so the chain measures something other than
  the geometry at w* (a blow-up from a too-large eps, an escape from the basin). It can
  misfire only where a genuine LLC exceeds far_rel * n_beta * L_n(w*), i.e. a near-perfect
  fit at a small n_beta; raise far_rel there.
- `escaped`: the post-burn-in mean of ||w - w*||^2 exceeds dist_slack * n_free / gamma
  (dist_slack = 2). At a local minimum every direction of the localised posterior has
  precision n_beta h_i + gamma >= gamma, so E||w - w*||^2 <= n_free / gamma, with equality
  only for exactly flat directions; the factor 2 covers the O(eps) variance inflation of a
  tuned step. A chain past it is sampling around a saddle or maximum, or diverging. Not
  checked when gamma = 0.
- `drifting` (one verdict for all chains, not per chain): the difference d_c between the
  mean loss over the second and the first half of each chain's post-burn-in draws is, on
  average over chains, nonzero with a two-sided p < drift_alpha (0.001) by a t-test whose
  standard error comes from the spread of d_c across the independent chains (valid whatever
  each chain's autocorrelation, as d_c averages many draws, and blind to the drift's shape,
  which a noise estimate from within one chain absorbs: a smooth trend inflates the spread
  of its own block means so that the t statistic saturates near 5), and
  n_beta |mean d| exceeds drift_rel (10%) of |llc|. The chains have not reached their
  stationary distribution (burn-in too short, a step too small to mix) or slide off w*
  (not a local minimum). Needs >= 2 chains, and has little power with few: at 4 chains
  (3 degrees of freedom) a drift must exceed ~13 standard errors, at 16 about 4.

The first three are per-chain, and `eps_sensitivity` treats them and a drift alike: any one
at eps/2, eps or 2 eps makes the estimate unstable.

`gamma_sensitivity` runs the same check at every gamma of a grid (gamma x GAMMA_FACTORS, each at
eps/2, eps, 2 eps: one compiled call, common random numbers) and `pick_gamma` applies the rule
of `--gamma auto`: the smallest gamma of the grid whose estimate is stable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import betainc

from induction_jax.config import ConfigError
from induction_jax.plots import plt, save
from induction_jax.slt.llc import check_burn_in, llc_estimate
from induction_jax.slt.sampler import SampleResult, SGLDConfig, sample_batch

CHAIN_FLAGS = ("nonfinite", "moved_far", "escaped")
EPS_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
CENTRAL = (0.5, 1.0, 2.0)
# gamma x these for `--gamma auto`: 1/30 to 3 in steps of ~3 (at the default gamma 1000: 33 to
# 3000). The rule wants the smallest stable gamma, so the grid reaches well below the default
# and one step above it (for a snapshot where the default itself is unstable).
GAMMA_FACTORS = (1 / 30, 0.1, 1 / 3, 1.0, 3.0)


def chain_diagnostics(result: SampleResult, burn_in: int, *, far_rel: float = 1.0, dist_slack: float = 2.0,
                      drift_alpha: float = 1e-3, drift_rel: float = 0.1) -> dict:
    """Per-chain flags [chains], the drift verdict for all chains (see the module docstring
    for each rule) and the numbers behind them; of one `sample` result (`vmap` it for more)."""
    check_burn_in(result, burn_in)
    loss_CT, sq_dist_CT = result.chains
    L0 = result.init_loss
    n_beta, gamma, n_free = result.n_beta, result.gamma, result.n_free
    nonfinite_C = ~(jnp.all(jnp.isfinite(loss_CT), -1) & jnp.all(jnp.isfinite(sq_dist_CT), -1))

    post_CD = loss_CT[:, burn_in:]
    excess_C = jnp.mean(post_CD, -1) - L0
    llc_C = n_beta * excess_C
    far_bound = jnp.where(L0 > 0, jnp.minimum(n_free / n_beta, far_rel * L0), n_free / n_beta)
    moved_far_C = jnp.abs(excess_C) > far_bound

    mean_sq_dist_C = jnp.mean(sq_dist_CT[:, burn_in:], -1)
    dist_bound = dist_slack * n_free / jnp.where(gamma > 0, gamma, jnp.nan)
    escaped_C = (gamma > 0) & (mean_sq_dist_C > dist_bound)

    C, D = post_CD.shape
    drift_C = jnp.mean(post_CD[:, D // 2:], -1) - jnp.mean(post_CD[:, :D // 2], -1)
    if C > 1:
        dof = C - 1
        drift_t = jnp.mean(drift_C) / (jnp.std(drift_C, ddof=1) / C ** 0.5)
        # Two-sided p of Student's t with C - 1 degrees of freedom.
        drift_p = betainc(dof / 2, 0.5, dof / (dof + jnp.square(drift_t)))
        # A NaN (non-finite chains, or 0 / 0 from identical ones) compares False: no verdict.
        drifting = (drift_p < drift_alpha) & (n_beta * jnp.abs(jnp.mean(drift_C))
                                              > drift_rel * jnp.abs(jnp.mean(llc_C)))
    else:
        drift_t = drift_p = jnp.full_like(L0, jnp.nan)
        drifting = jnp.zeros_like(L0, bool)
    return {"nonfinite": nonfinite_C, "moved_far": moved_far_C, "escaped": escaped_C, "drifting": drifting,
            "llc_per_chain": llc_C, "excess_loss": excess_C, "far_bound": far_bound,
            "mean_sq_dist": mean_sq_dist_C, "dist_bound": dist_bound,
            "drift_llc": n_beta * drift_C, "drift_t": drift_t, "drift_p": drift_p}


def _stats(burn_in: int, result: SampleResult):
    return llc_estimate(result, None, burn_in), chain_diagnostics(result, burn_in)


# (estimates, chain flags) of each setting of a `sample_batch` result, leaves [M, ...].
batched_stats = jax.jit(jax.vmap(_stats, in_axes=(None, 0)), static_argnums=0)


def _settings(key, loss_fn, w_star, dataset, cfg: SGLDConfig, eps_M, gamma_M, mask, loop):
    """One model at M (eps, gamma) settings, every setting with the same key (common random
    numbers), all chains one compiled call (`sample_batch`); results, estimates and flags [M]."""
    M = len(eps_M)
    results = sample_batch(jnp.broadcast_to(key, (M, *jnp.shape(key))), loss_fn,
                           jax.tree.map(lambda x: jnp.asarray(x)[None], w_star),
                           jax.tree.map(lambda x: jnp.asarray(x)[None], dataset), cfg,
                           model_M=jnp.zeros(M, jnp.int32), eps_M=eps_M, gamma_M=gamma_M, mask=mask, loop=loop)
    return (results, *batched_stats(cfg.burn_in, results))


@dataclass
class EpsSweep:
    """An eps sweep on the host: estimates and flag counts per step size [G], the verdict."""

    eps: np.ndarray
    llc_mean: np.ndarray
    llc_std: np.ndarray
    llc_se: np.ndarray
    flag_counts: dict[str, np.ndarray]   # chains flagged per step size, per chain flag
    drifting: np.ndarray                 # bool per step size
    chains: int
    center: int                          # index of the configured eps
    stable: bool
    warning: str                         # "" when stable
    loss: np.ndarray                     # [G, chains, draws] traces, for the figures
    init_loss: float
    burn_in: int


def stability(eps_G, llc_mean_G, llc_se_G, flag_counts: dict, drifting_G, chains: int, center: int,
              rel_tol: float = 0.1) -> tuple[bool, str]:
    """The verdict on an eps sweep whose grid holds eps/2, eps and 2 eps at center-1..center+1.

    Stable when, at those three step sizes: no chain is flagged (non-finite, moved far,
    escaped) and the chains do not drift; the three estimates lie within `rel_tol` (10%) of
    llc(eps) of each other (max - min); and llc(eps) is not negative by more than 2 standard
    errors (a negative LLC means w* is no local minimum at this temperature, or eps is too
    large). Returns (stable, warning), the warning "" when stable.
    """
    idx = [center - 1, center, center + 1]
    reasons = []
    for g in idx:
        flagged = [f"{int(flag_counts[f][g])} {f.replace('_', ' ')}" for f in CHAIN_FLAGS if flag_counts[f][g]]
        if flagged:
            reasons.append(f"eps={eps_G[g]:.3g}: {', '.join(flagged)} of {chains} chains")
        if drifting_G[g]:
            reasons.append(f"eps={eps_G[g]:.3g}: the chains drift (a longer burn-in, or w* is not a minimum)")
    central = np.asarray(llc_mean_G)[idx]
    llc, se = float(llc_mean_G[center]), float(llc_se_G[center])
    if not np.all(np.isfinite(central)):
        reasons.append("a non-finite estimate")
    else:
        spread = float(central.max() - central.min())
        if spread > rel_tol * abs(llc):
            reasons.append(f"estimates at eps/2, eps, 2eps = {', '.join(f'{v:.4g}' for v in central)} spread "
                           f"{spread:.3g} > {rel_tol:.0%} of llc(eps) (standard error {se:.2g}; a smaller "
                           f"eps, or more chains if the standard error is comparable)")
        if llc + 2 * se < 0:
            reasons.append(f"llc(eps)={llc:.4g} < 0 by more than 2 standard errors ({se:.2g}): w* is not a "
                           f"local minimum at this temperature, or eps is too large")
    if not reasons:
        return True, ""
    return False, "LLC estimate not stable: " + "; ".join(reasons)


def eps_sensitivity(key, loss_fn, w_star, dataset, cfg: SGLDConfig, factors=EPS_FACTORS, mask=None,
                    rel_tol: float = 0.1, loop: str | None = None) -> EpsSweep:
    """The estimate at eps * each factor, in one compiled call (`sample_batch`, `loop` as
    there), and its `stability` verdict.

    `factors` must contain 0.5, 1 and 2 next to each other (sorted ascending)."""
    factors = tuple(float(f) for f in factors)
    center = factors.index(1.0) if 1.0 in factors else -1
    if list(factors) != sorted(factors) or center < 1 or factors[center - 1:center + 2] != CENTRAL:
        raise ConfigError(f"factors={factors}: must be ascending and contain 0.5, 1, 2 consecutively")
    eps_G = jnp.asarray([cfg.eps * f for f in factors], jnp.float32)
    results, estimates, flags = jax.device_get(_settings(key, loss_fn, w_star, dataset, cfg, eps_G,
                                                         jnp.full(len(factors), cfg.gamma, jnp.float32), mask, loop))
    counts = {f: np.asarray(flags[f]).sum(-1) for f in CHAIN_FLAGS}
    drifting = np.asarray(flags["drifting"])
    eps_np = np.asarray(eps_G, float)
    stable, warning = stability(eps_np, estimates["llc_mean"], estimates["llc_se"], counts, drifting, cfg.chains,
                                center, rel_tol)
    return EpsSweep(eps_np, np.asarray(estimates["llc_mean"]), np.asarray(estimates["llc_std"]),
                    np.asarray(estimates["llc_se"]), counts, drifting, cfg.chains, center, stable, warning,
                    np.asarray(results.chains.loss), float(results.init_loss[center]), cfg.burn_in)


@dataclass
class GammaSweep:
    """A gamma x eps sweep on the host: per gamma [G] the eps/2, eps, 2 eps estimates [G, 3], the
    `stability` verdict of each gamma, and the gamma `pick_gamma` chose."""

    gamma: np.ndarray
    eps: np.ndarray                      # [3]: eps/2, eps, 2 eps
    llc_mean: np.ndarray                 # [G, 3]
    llc_std: np.ndarray
    llc_se: np.ndarray
    flag_counts: dict[str, np.ndarray]   # [G, 3] chains flagged, per chain flag
    drifting: np.ndarray                 # [G, 3]
    stable: np.ndarray                   # [G] bool
    warnings: list[str]                  # per gamma, "" when stable
    chosen: int                          # index into `gamma`
    warning: str                         # "" when some gamma was stable
    chains: int
    loss: np.ndarray                     # [G, 3, chains, draws]
    init_loss: float
    burn_in: int

    @property
    def chosen_gamma(self) -> float:
        return float(self.gamma[self.chosen])

    def eps_sweep(self, g: int | None = None) -> EpsSweep:
        """The eps/2, eps, 2 eps row of gamma index `g` (default: the chosen one) as an `EpsSweep`."""
        g = self.chosen if g is None else g
        return EpsSweep(self.eps, self.llc_mean[g], self.llc_std[g], self.llc_se[g],
                        {f: c[g] for f, c in self.flag_counts.items()}, self.drifting[g], self.chains, 1,
                        bool(self.stable[g]), self.warnings[g], self.loss[g], self.init_loss, self.burn_in)

    def summary(self) -> dict:
        """The numbers for stats.json."""
        return {"rule": RULE, "gamma": self.gamma, "eps": self.eps, "llc_mean": self.llc_mean,
                "llc_se": self.llc_se, "stable": self.stable, "warnings": self.warnings,
                "chosen_gamma": self.chosen_gamma, "llc_at_chosen": float(self.llc_mean[self.chosen, 1]),
                "warning": self.warning}


RULE = ("the smallest gamma of the grid at which, at eps/2, eps and 2 eps, no chain is flagged, nothing drifts, "
        "the three estimates lie within 10% of llc(eps) and llc(eps) is not negative by > 2 standard errors; "
        "the configured gamma when none is")


def pick_gamma(gamma_G, stable_G, fallback: int) -> tuple[int, str]:
    """The rule of `--gamma auto` (`RULE`): (index of the smallest stable gamma, ""), or
    (`fallback`, a one-line warning) when no gamma of the grid is stable."""
    stable_G = np.asarray(stable_G, bool)
    if stable_G.any():
        return int(np.flatnonzero(stable_G)[np.argmin(np.asarray(gamma_G)[stable_G])]), ""
    return fallback, (f"gamma auto: no gamma of {', '.join(f'{g:.3g}' for g in gamma_G)} gave a stable estimate; "
                      f"using gamma {float(gamma_G[fallback]):.3g}")


def gamma_sensitivity(key, loss_fn, w_star, dataset, cfg: SGLDConfig, factors=GAMMA_FACTORS, mask=None,
                      rel_tol: float = 0.1, loop: str | None = None) -> GammaSweep:
    """The estimate at cfg.gamma x each factor, each at eps/2, eps, 2 eps, in one compiled call;
    each gamma's `stability` verdict and the gamma `pick_gamma` picks (cfg.gamma x 1 when none
    is stable, so `factors` must contain 1)."""
    factors = tuple(float(f) for f in factors)
    if 1.0 not in factors or any(f <= 0 for f in factors) or len(set(factors)) != len(factors):
        raise ConfigError(f"gamma factors={factors}: must be distinct, > 0 and contain 1")
    gamma_G = jnp.asarray([cfg.gamma * f for f in factors], jnp.float32)
    eps_E = jnp.asarray([cfg.eps * f for f in CENTRAL], jnp.float32)
    G, E = len(gamma_G), len(eps_E)
    grid = lambda x: x.reshape(G, E, *x.shape[1:])      # noqa: E731
    results, est, flags = jax.tree.map(grid, jax.device_get(_settings(
        key, loss_fn, w_star, dataset, cfg, jnp.tile(eps_E, G), jnp.repeat(gamma_G, E), mask, loop)))
    counts = {f: np.asarray(flags[f]).sum(-1) for f in CHAIN_FLAGS}
    drifting = np.asarray(flags["drifting"])
    gamma_np, eps_np = np.asarray(gamma_G, float), np.asarray(eps_E, float)
    verdicts = [stability(eps_np, est["llc_mean"][g], est["llc_se"][g], {f: c[g] for f, c in counts.items()},
                          drifting[g], cfg.chains, 1, rel_tol) for g in range(len(factors))]
    stable = np.array([v[0] for v in verdicts])
    chosen, warning = pick_gamma(gamma_np, stable, factors.index(1.0))
    return GammaSweep(gamma_np, eps_np, np.asarray(est["llc_mean"]), np.asarray(est["llc_std"]),
                      np.asarray(est["llc_se"]), counts, drifting, stable, [v[1] for v in verdicts], chosen,
                      warning, cfg.chains, np.asarray(results.chains.loss), float(results.init_loss[0, 1]),
                      cfg.burn_in)


def trace_figure(loss_CT, init_loss: float, burn_in: int, path: Path, title: str = "") -> Path:
    """Every chain's loss trace as a thin line, the burn-in shaded, L_n(w*) dashed."""
    loss_CT = np.asarray(loss_CT)
    t = np.arange(loss_CT.shape[-1])
    fig, ax = plt.subplots(figsize=(8, 4.4))
    for row in loss_CT:
        ax.plot(t, row, lw=0.6, alpha=0.5)
    ax.axvspan(0, burn_in, color="0.85", label=f"burn-in ({burn_in} draws, discarded)")
    ax.axhline(init_loss, color="k", ls="--", lw=1, label=f"L_n(w*) = {init_loss:.4g}")
    ax.set_xlabel("SGLD draw")
    ax.set_ylabel("minibatch loss L_m(w)")
    ax.set_xlim(0, t[-1])
    ax.set_title(title or f"SGLD loss traces, {len(loss_CT)} chains")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return save(fig, path)


def eps_figure(sweep: EpsSweep, path: Path, title: str = "") -> Path:
    """The LLC against the step size (mean +- 1 std over chains, and +- 1 standard error);
    step sizes with a flagged chain or a drift are marked red."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    e, mu = sweep.eps, sweep.llc_mean
    ax.fill_between(e, mu - sweep.llc_std, mu + sweep.llc_std, color="tab:blue", alpha=0.15,
                    label="+- 1 std over chains")
    ax.errorbar(e, mu, yerr=sweep.llc_se, color="tab:blue", marker="o", capsize=3, label="mean +- 1 s.e.")
    bad = (sum(sweep.flag_counts[f] for f in CHAIN_FLAGS) > 0) | sweep.drifting
    if bad.any():
        ax.plot(e[bad], mu[bad], "x", color="tab:red", ms=10, mew=2, label="flagged chains or drift")
    ax.axvline(e[sweep.center], color="k", ls=":", lw=1, label=f"eps = {e[sweep.center]:.3g}")
    ax.set_xscale("log")
    ax.set_xlabel("SGLD step size eps")
    ax.set_ylabel("LLC estimate")
    ax.set_title(title or f"eps sensitivity: {'stable' if sweep.stable else 'NOT stable'}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)
