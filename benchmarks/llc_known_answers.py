"""The LLC sampler at its default settings, and the `--gamma auto` rule, against exact answers.

On L(w) = mean_k sum_i c_i (w_i - x_ki)^2 / 2 (items x_k = w* + xi_k, xi centred exactly over the
n items, as in tests/test_slt.py) w* is the minimum and the exact LLC is (number of c_i > 0) / 2;
the localised posterior at gamma has sum_i q_i / (2 (q_i + gamma)), q_i = n_beta c_i, the
value the sampler converges to as eps -> 0. Settings: the `induction-jax llc` defaults (eps 1e-4,
gamma 1000, 4 chains x 250 draws, 80 burn-in, batch 64 of n = 1024, n_beta = n / ln n).

    .venv/bin/python benchmarks/llc_known_answers.py [--sampler sgld|rmsprop-sgld] [--draws 250 ...]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from induction_jax.slt import SGLDConfig, gamma_sensitivity

N, SIGMA = 1024, 0.2
PROBLEMS = {
    "c in [1, 10], d = 20": {"w": np.logspace(0, 1, 20)},
    "c in [1, 10] + 8 flat, d = 28": {"w": np.logspace(0, 1, 20), "flat": np.zeros(8)},
    "c in [0.1, 100], d = 20": {"w": np.logspace(-1, 2, 20)},
}


def quad_loss(params, batch):
    return sum(jnp.sum(jnp.mean(batch["c"][k] * jnp.square(params[k] - batch["x"][k]), 0)) / 2 for k in params)


def problem(curv, seed=0):
    rng = np.random.default_rng(seed)
    w_star = {k: rng.normal(size=c.shape) for k, c in curv.items()}
    xi = {k: rng.normal(size=(N, *c.shape)) * SIGMA for k, c in curv.items()}
    xi = {k: v - v.mean(0) for k, v in xi.items()}
    data = {"x": {k: jnp.asarray(w_star[k] + xi[k], jnp.float32) for k in curv},
            "c": {k: jnp.asarray(np.broadcast_to(c, (N, *c.shape)), jnp.float32) for k, c in curv.items()}}
    return {k: jnp.asarray(v, jnp.float32) for k, v in w_star.items()}, data


def exact_at(curv, n_beta, gamma):
    c = np.concatenate([v.ravel() for v in curv.values()])
    return float(np.sum(n_beta * c / (2 * (n_beta * c + gamma))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sampler", default="sgld", choices=("sgld", "rmsprop-sgld"))
    ap.add_argument("--eps", type=float, default=1e-4)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=250)
    ap.add_argument("--burn-in", type=int, default=80)
    args = ap.parse_args(argv)
    cfg = SGLDConfig(eps=args.eps, sampler=args.sampler, chains=args.chains, draws=args.draws, burn_in=args.burn_in)
    n_beta = cfg.n_beta_for(N)
    print(f"{args.sampler}, eps {cfg.eps:g}, {cfg.chains} chains x {cfg.draws} draws ({cfg.burn_in} burn-in), "
          f"batch {cfg.batch_size} of n {N}, n_beta {n_beta:.1f}")
    print("| loss | exact LLC | at gamma 1000: exact / returned | rule picks gamma | there: exact / returned |")
    print("| --- | --- | --- | --- | --- |")
    for name, curv in PROBLEMS.items():
        w_star, data = problem(curv)
        tic = time.perf_counter()
        sweep = gamma_sensitivity(jax.random.PRNGKey(0), quad_loss, w_star, data, cfg)
        secs = time.perf_counter() - tic
        d1 = sweep.gamma.tolist().index(cfg.gamma)
        g = sweep.chosen
        exact = sum(int(np.count_nonzero(c)) for c in curv.values()) / 2
        print(f"| {name} | {exact:g} | {exact_at(curv, n_beta, cfg.gamma):.2f} / "
              f"{sweep.llc_mean[d1, 1]:.2f} +- {sweep.llc_se[d1, 1]:.2f} | {sweep.chosen_gamma:.3g} | "
              f"{exact_at(curv, n_beta, sweep.chosen_gamma):.2f} / {sweep.llc_mean[g, 1]:.2f} +- "
              f"{sweep.llc_se[g, 1]:.2f} |")
        for k, gam in enumerate(sweep.gamma):
            print(f"    gamma {gam:8.3g}: exact {exact_at(curv, n_beta, gam):6.2f}; at eps/2, eps, 2eps "
                  + ", ".join(f"{v:6.2f}" for v in sweep.llc_mean[k])
                  + f" (se {sweep.llc_se[k, 1]:.2f}) {'stable' if sweep.stable[k] else 'NOT stable: ' + sweep.warnings[k]}")
        print(f"    ({secs:.1f} s, {sweep.warning or 'ok'})")


if __name__ == "__main__":
    main()
