"""The LLC estimator against known answers: quadratic losses whose localised tempered posterior
is Gaussian, so both the exact LLC and what SGLD at a finite step size converges to are known.

The quadratic is data-dependent, L(w) = mean_k sum_i c_i (w_i - x_ki)^2 / 2 with items
x_k = w* + xi_k and the noise xi centred exactly over the n items, so that
L_n(w) = sum_i c_i (w_i - w*_i)^2 / 2 + L_n(w*): w* is exactly the minimum and the exact LLC is
sum_i q_i / (2 (q_i + gamma)), q_i = n_beta c_i, whatever the noise. The minibatch of step t
is independent of w_t, so the recorded L_m(w_t) averages to L_n(w_t) exactly; what remains at
a finite eps is the chain's own stationary variance per coordinate,
(1 + eps q^2 s^2 / 4) / (p (1 - eps p / 4)) with p = q + gamma and s^2 the variance of a
minibatch mean of xi (m of n without replacement), approached from 0 (chains start at w*) as
1 - (1 - eps p / 2)^(2t). `predicted` sums these; it tends to the exact LLC as eps -> 0.
The curvature rides in the dataset too, so one compiled sampler serves every model here.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from induction_jax.config import ConfigError
from induction_jax.slt.diagnostics import CHAIN_FLAGS
from induction_jax.slt import (SGLDConfig, chain_diagnostics, eps_figure, eps_sensitivity, llc_estimate, sample,
                               sample_batch, sgld_chain, stability, trace_figure)

N, M, GAMMA, SIGMA = 256, 32, 20.0, 0.2
N_BETA = N / math.log(N)
EPS = 4e-4                                  # eps * p_max = 0.19 on these curvatures
HEADS = np.logspace(0, 1, 20).reshape(4, 5)  # curvatures 1..10
STIFF = {"heads": HEADS, "flat": np.logspace(0, 1, 8)}
FLAT = {"heads": HEADS, "flat": np.zeros(8)}
# Small: for exact equalities. Known: for comparisons with the known answers (SE ~1-2%).
CFG_S = SGLDConfig(eps=EPS, gamma=GAMMA, chains=4, draws=300, burn_in=100, batch_size=M)
CFG_K = SGLDConfig(eps=EPS, gamma=GAMMA, chains=16, draws=2000, burn_in=400, batch_size=M)
KEY = jax.random.PRNGKey(0)


def quad_loss(params, batch):
    return sum(jnp.sum(jnp.mean(batch["c"][k] * jnp.square(params[k] - batch["x"][k]), 0)) / 2 for k in params)


def basin_loss(params, batch, width=0.3):
    """A Gaussian well of depth c width^2 per coordinate: quadratic at the bottom, flat outside."""
    return sum(jnp.sum(jnp.mean(batch["c"][k] * width ** 2 * (1 - jnp.exp(-jnp.square(params[k] - batch["x"][k])
                                                                         / (2 * width ** 2))), 0))
               for k in params)


def problem(curv, seed=0, sigma=SIGMA):
    """(w*, dataset, noise) for curvatures `curv`: items w* + xi, xi centred exactly over the n items."""
    rng = np.random.default_rng(seed)
    w_star = {k: rng.normal(size=c.shape) for k, c in curv.items()}
    xi = {k: rng.normal(size=(N, *c.shape)) * sigma for k, c in curv.items()}
    xi = {k: v - v.mean(0) for k, v in xi.items()}
    data = {"x": {k: jnp.asarray(w_star[k] + xi[k], jnp.float32) for k in curv},
            "c": {k: jnp.asarray(np.broadcast_to(c, (N, *c.shape)), jnp.float32) for k, c in curv.items()}}
    return {k: jnp.asarray(v, jnp.float32) for k, v in w_star.items()}, data, xi


def selected(curv, mask):
    return {k: np.asarray(c, float) * (np.broadcast_to(mask[k], c.shape) if mask else 1) for k, c in curv.items()}


def exact_llc(curv, mask=None):
    c = np.concatenate([v.ravel() for v in selected(curv, mask).values()])
    return float(np.sum(N_BETA * c / (2 * (N_BETA * c + GAMMA))))


def predicted(curv, xi, eps, cfg, mask=None):
    """What the sampler's estimate averages to at step size eps (module docstring)."""
    total = 0.0
    for k, c in selected(curv, mask).items():
        s2 = np.mean(xi[k] ** 2, 0) / M * (N - M) / (N - 1)
        q = N_BETA * c
        p = q + GAMMA
        a2 = (1 - eps * p / 2) ** 2
        var = (eps + (eps * q / 2) ** 2 * s2) / (1 - a2)
        B, D = cfg.burn_in, cfg.draws - cfg.burn_in
        start_up = 1 - a2 ** B * (1 - a2 ** D) / (D * (1 - a2))
        total += float(np.sum(q * var * start_up / 2))
    return total


_sample = jax.jit(sample, static_argnums=(1, 4))


def run(loss_fn, w_star, data, cfg, mask=None, eps=None, key=KEY):
    """`sample`, with eps always traced so that step sizes share one compile."""
    return _sample(key, loss_fn, w_star, data, cfg, mask, jnp.float32(cfg.eps if eps is None else eps))


def estimate(result, cfg):
    return {k: np.asarray(v) for k, v in llc_estimate(result, result.n_beta, cfg.burn_in).items()}


@pytest.fixture(scope="module")
def flat_sweep():
    curv = FLAT
    w_star, data, xi = problem(curv)
    return eps_sensitivity(KEY, quad_loss, w_star, data, CFG_K), curv, xi


def test_known_answer_bias_shrinks_with_eps(flat_sweep):
    sweep, curv, xi = flat_sweep
    exact = exact_llc(curv)
    err = np.abs(sweep.llc_mean - exact)
    for g, eps in enumerate(sweep.eps):
        # The sampler is right at every eps: within 3 standard errors of what it should give
        # there (chains are independent, so their mean is ~normal with that SE).
        assert abs(sweep.llc_mean[g] - predicted(curv, xi, eps, CFG_K)) < 3 * sweep.llc_se[g], g
    # The discretisation bias, >> the SE at the three largest eps, shrinks with eps ...
    assert err[4] > err[3] > err[2]
    assert sweep.llc_mean[4] > sweep.llc_mean[3] > sweep.llc_mean[2] > exact
    # ... and at the smallest the estimate is the exact LLC within 3 standard errors.
    assert err[0] < 3 * sweep.llc_se[0]
    assert sweep.stable and sweep.warning == ""
    assert all(sweep.flag_counts[f].sum() == 0 for f in CHAIN_FLAGS)
    assert not sweep.drifting[1:].any()     # at eps/4 the slowest direction may still be burning in


def test_flat_directions_lower_the_llc(flat_sweep):
    sweep, _, _ = flat_sweep
    w_star, data, xi = problem(STIFF)
    stiff = estimate(run(quad_loss, w_star, data, CFG_K), CFG_K)
    assert abs(stiff["llc_mean"] - predicted(STIFF, xi, EPS, CFG_K)) < 3 * stiff["llc_se"]
    flat = sweep.llc_mean[sweep.center]
    assert exact_llc(FLAT) < exact_llc(STIFF)
    # The 8 flat directions remove about 8 * (1/2) * q / (q + gamma) from the LLC.
    assert stiff["llc_mean"] - flat > 8 * 0.3


def test_vmapped_sampler_equals_a_python_loop_over_chains():
    w_star, data, _ = problem(STIFF)
    result = run(quad_loss, w_star, data, CFG_S)
    chain = jax.jit(sgld_chain, static_argnums=(1, 4))
    for c, key in enumerate(jax.random.split(KEY, CFG_S.chains)):
        one = chain(key, quad_loss, w_star, data, CFG_S, None, jnp.float32(EPS))
        np.testing.assert_allclose(result.chains.loss[c], one.loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result.chains.sq_dist[c], one.sq_dist, rtol=1e-5, atol=1e-6)


def test_member_of_a_vmap_over_snapshots_equals_its_own_estimate():
    problems = [problem(curv, seed) for curv, seed in ((STIFF, 1), (FLAT, 2), (STIFF, 3))]
    w_E, data_E = jax.tree.map(lambda *xs: jnp.stack(xs), *[(w, d) for w, d, _ in problems])
    batched = jax.jit(jax.vmap(lambda w, d: sample(KEY, quad_loss, w, d, CFG_S)))(w_E, data_E)
    est_E = jax.vmap(lambda r: llc_estimate(r, r.n_beta, CFG_S.burn_in))(batched)
    for i, (w, d, _) in enumerate(problems):
        alone = llc_estimate(run(quad_loss, w, d, CFG_S), None, CFG_S.burn_in)
        for k in ("llc_mean", "llc_std", "llc_per_chain", "init_loss"):
            np.testing.assert_allclose(est_E[k][i], alone[k], rtol=1e-4, atol=1e-4, err_msg=k)


@pytest.mark.parametrize("loop", ["map", "vmap"])
def test_sample_batch_equals_sample_per_setting(loop):
    """The commands' compiled entry: 3 settings (two models, one of them at a second step size
    and gamma) x 4 chains = 12 chains on one axis over the devices (padded where the device
    count does not divide it), each setting equal to `sample` on its own."""
    problems = [problem(curv, seed) for curv, seed in ((STIFF, 1), (FLAT, 2))]
    w_N, data_N = jax.tree.map(lambda *xs: jnp.stack(xs), *[(w, d) for w, d, _ in problems])
    keys = jax.random.split(KEY, 3)
    model, eps, gamma = [0, 1, 0], [EPS, EPS, EPS / 2], [GAMMA, GAMMA, 2 * GAMMA]
    cfg = dataclasses.replace(CFG_S, chains=3 if loop == "map" else 4)     # 9 chains: padded on 2 devices
    batch = sample_batch(keys, quad_loss, w_N, data_N, cfg, model_M=model, eps_M=eps, gamma_M=gamma, loop=loop)
    for i in range(3):
        w, d, _ = problems[model[i]]
        alone = sample(keys[i], quad_loss, w, d, cfg, eps=jnp.float32(eps[i]), gamma=jnp.float32(gamma[i]))
        np.testing.assert_allclose(batch.chains.loss[i], alone.chains.loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batch.chains.sq_dist[i], alone.chains.sq_dist, rtol=1e-5, atol=1e-6)
        for k in ("init_loss", "n_beta", "gamma", "eps", "n_free"):
            np.testing.assert_allclose(getattr(batch, k)[i], getattr(alone, k), rtol=1e-6, err_msg=k)


def test_refined_llc_with_mask_of_ones_equals_plain_llc():
    w_star, data, _ = problem(STIFF)
    plain = run(quad_loss, w_star, data, CFG_S)
    ones = run(quad_loss, w_star, data, CFG_S, mask=jax.tree.map(jnp.ones_like, w_star))
    np.testing.assert_allclose(ones.chains.loss, plain.chains.loss, rtol=1e-6, atol=1e-7)
    assert float(ones.n_free) == float(plain.n_free) == 28
    zeros = run(quad_loss, w_star, data, CFG_S, mask=jax.tree.map(jnp.zeros_like, w_star))
    assert float(jnp.max(zeros.chains.sq_dist)) == 0.0     # nothing moves, exactly
    assert float(zeros.n_free) == 0


def test_refined_llc_of_a_subset_matches_its_exact_value():
    # Heads 0, 2, 3 (a mask broadcast over their weights) and none of the second leaf.
    mask = {"heads": np.array([[1.0], [0.0], [1.0], [1.0]]), "flat": 0.0}
    w_star, data, xi = problem(STIFF)
    result = run(quad_loss, w_star, data, CFG_K, mask=jax.tree.map(jnp.asarray, mask))
    est = estimate(result, CFG_K)
    assert float(result.n_free) == 15
    assert abs(est["llc_mean"] - predicted(STIFF, xi, EPS, CFG_K, mask)) < 3 * est["llc_se"]
    exact = exact_llc(STIFF, mask)
    assert abs(est["llc_mean"] - exact) < 0.05 * exact       # eps bias ~2% here
    assert exact < 0.6 * exact_llc(STIFF)


def flags(result, burn_in):
    return {k: np.asarray(v) for k, v in chain_diagnostics(result, burn_in).items()}


def test_diagnostics_flag_a_step_size_100x_too_large():
    w_star, data, _ = problem(STIFF)
    tuned = flags(run(quad_loss, w_star, data, CFG_S), CFG_S.burn_in)
    assert not any(tuned[f].any() for f in (*CHAIN_FLAGS, "drifting"))
    # eps p = 19 > 4: every chain diverges.
    big = flags(run(quad_loss, w_star, data, CFG_S, eps=100 * EPS), CFG_S.burn_in)
    assert big["nonfinite"].all()

    # In a well of finite depth a too-large step throws the chain out instead (finite loss).
    w_star, data, _ = problem({"heads": np.full((4, 5), 5.0), "flat": np.full(8, 5.0)}, sigma=0.0)
    tuned = flags(run(basin_loss, w_star, data, CFG_S), CFG_S.burn_in)
    assert not any(tuned[f].any() for f in (*CHAIN_FLAGS, "drifting"))
    big = flags(run(basin_loss, w_star, data, CFG_S, eps=100 * EPS), CFG_S.burn_in)
    assert not big["nonfinite"].any() and big["moved_far"].all()


def test_diagnostics_flag_a_maximum_and_a_snapshot_off_the_minimum():
    # Negative curvature below gamma: the posterior is proper but wider than gamma allows at a minimum.
    w_star, data, _ = problem({"heads": np.full((4, 5), -0.3), "flat": np.full(8, -0.3)})
    escaped = flags(run(quad_loss, w_star, data, CFG_S, eps=0.01), CFG_S.burn_in)
    assert escaped["escaped"].all() and not escaped["nonfinite"].any()
    # A snapshot off the minimum, with a small step: the chains slide downhill all through the
    # trace (16 chains: with 4, the t-test across chains has 3 degrees of freedom, little power).
    w_star, data, _ = problem(FLAT)
    off_minimum = jax.tree.map(lambda w: w + 0.5, w_star)
    slide = flags(run(quad_loss, off_minimum, data, CFG_K, eps=EPS / 100), CFG_K.burn_in)
    assert slide["drifting"] and (slide["drift_llc"] < 0).all() and (slide["llc_per_chain"] < 0).all()


def test_stability_verdict_and_warning():
    counts = {f: np.zeros(5, int) for f in CHAIN_FLAGS}
    eps, se, calm = np.array([0.25, 0.5, 1, 2, 4]), np.full(5, 0.1), np.zeros(5, bool)
    ok, warning = stability(eps, np.array([10.0, 10.1, 10.3, 10.8, 12.0]), se, counts, calm, 8, 2)
    assert ok and warning == ""
    ok, warning = stability(eps, np.array([10.0, 10.1, 10.3, 12.0, 15.0]), se, counts, calm, 8, 2)
    assert not ok and "spread" in warning and "\n" not in warning
    ok, warning = stability(eps, np.array([-1.0, -1.0, -1.0, -1.0, -1.0]), se, counts, calm, 8, 2)
    assert not ok and "not a local minimum" in warning
    ok, warning = stability(eps, np.array([10.0, 10.1, 10.3, 10.8, 12.0]), se, counts, eps == 2, 8, 2)
    assert not ok and "eps=2: the chains drift" in warning
    counts["nonfinite"][3] = 2
    ok, warning = stability(eps, np.array([10.0, 10.1, 10.3, 10.8, 12.0]), se, counts, calm, 8, 2)
    assert not ok and "eps=2: 2 nonfinite of 8 chains" in warning
    with pytest.raises(ConfigError, match="factors"):
        eps_sensitivity(KEY, quad_loss, {}, {"x": jnp.zeros(4)}, CFG_S, factors=(0.5, 1, 4))


def test_figures(flat_sweep, tmp_path):
    sweep, _, _ = flat_sweep
    assert trace_figure(sweep.loss[sweep.center], sweep.init_loss, sweep.burn_in, tmp_path / "t.png").stat().st_size
    assert eps_figure(sweep, tmp_path / "e.png").stat().st_size


@pytest.mark.parametrize("kwargs, field", [
    ({"eps": 0.0}, "eps=0.0"), ({"eps": -1e-3}, "eps=-0.001"), ({"n_beta": -1.0}, "n_beta=-1.0"),
    ({"draws": 100, "burn_in": 100}, "draws=100"), ({"chains": 0}, "chains=0"), ({"batch_size": 0}, "batch_size=0"),
    ({"gamma": -1.0}, "gamma=-1.0"),
])
def test_bad_config_is_a_one_line_error(kwargs, field):
    with pytest.raises(ConfigError) as err:
        SGLDConfig(**kwargs)
    assert str(err.value).startswith(field) and "\n" not in str(err.value)


def test_batch_larger_than_the_dataset_is_a_one_line_error():
    w_star, data, _ = problem(STIFF)
    with pytest.raises(ConfigError, match=r"^--n 256 \(dataset items\) with --batch-size 512: .*allowed: --n >= 512, or --batch-size 1..256$"):
        sample(KEY, quad_loss, w_star, data, dataclasses.replace(CFG_S, batch_size=512))
    with pytest.raises(ConfigError, match="burn_in=300"):
        llc_estimate(run(quad_loss, w_star, data, CFG_S), None, 300)
