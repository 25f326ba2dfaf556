"""gamma as a measured choice: the gamma x eps sweep, the `--gamma auto` rule, RMSProp-SGLD.

Known answers from the quadratics of tests/test_slt.py: the localised posterior at gamma has
LLC sum_i q_i / (2 (q_i + gamma)), q_i = n_beta c_i, which falls with gamma toward 0 and rises
toward (number of c_i > 0) / 2 as gamma -> 0.
"""

import dataclasses
import json
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny
from induction_jax.cli import main
from induction_jax.config import ConfigError
from induction_jax.slt import (eps_sensitivity, gamma_sensitivity, llc_estimate, pick_gamma, sample,
                               sgld_chain)
from test_slt import CFG_K, CFG_S, EPS, FLAT, GAMMA, KEY, N_BETA, STIFF, problem, quad_loss, run

RMS_S = dataclasses.replace(CFG_S, sampler="rmsprop-sgld")


def exact_at(curv, gamma):
    c = np.concatenate([np.ravel(v) for v in curv.values()])
    return float(np.sum(N_BETA * c / (2 * (N_BETA * c + gamma))))


def test_rmsprop_sgld_is_a_pure_vmappable_chain():
    w_star, data, _ = problem(STIFF)
    result = run(quad_loss, w_star, data, RMS_S)
    chain = jax.jit(sgld_chain, static_argnums=(1, 4))
    for c, key in enumerate(jax.random.split(KEY, RMS_S.chains)):
        one = chain(key, quad_loss, w_star, data, RMS_S, None, jnp.float32(EPS))
        np.testing.assert_allclose(result.chains.loss[c], one.loss, rtol=1e-5, atol=1e-6)
    plain = run(quad_loss, w_star, data, CFG_S)
    assert not np.allclose(result.chains.loss, plain.chains.loss)      # the preconditioner acts
    frozen = run(quad_loss, w_star, data, RMS_S, mask=jax.tree.map(jnp.zeros_like, w_star))
    assert float(jnp.max(frozen.chains.sq_dist)) == 0.0


def test_rmsprop_sgld_finds_the_known_answer():
    w_star, data, _ = problem(FLAT)
    cfg = dataclasses.replace(CFG_K, sampler="rmsprop-sgld", eps=EPS / 4)
    est = llc_estimate(run(quad_loss, w_star, data, cfg), None, cfg.burn_in)
    exact = exact_at(FLAT, GAMMA)
    # Without the divergence correction of a state-dependent preconditioner (as devinterp) the
    # chain samples ~ exp(-U(w)) / G(w): G = 1 / (sqrt(v) + 0.1) shrinks away from w*, the tails
    # fatten and the estimate is high (here +11% at eps 1e-4, +22% at 2.5e-5, +34% at 6e-6:
    # the bias grows as eps falls, because v then follows the chain's position more closely).
    assert exact < float(est["llc_mean"]) < 1.2 * exact, (float(est["llc_mean"]), exact)


def test_a_traced_gamma_equals_the_configured_one():
    w_star, data, _ = problem(STIFF)
    cfg = dataclasses.replace(CFG_S, gamma=3 * GAMMA)
    static = run(quad_loss, w_star, data, cfg)
    traced = jax.jit(sample, static_argnums=(1, 4))(KEY, quad_loss, w_star, data, CFG_S, None, jnp.float32(EPS),
                                                    jnp.float32(3 * GAMMA))
    np.testing.assert_allclose(traced.chains.loss, static.chains.loss, rtol=1e-5, atol=1e-6)
    assert float(traced.gamma) == 3 * GAMMA


def test_gamma_sweep_row_at_the_configured_gamma_is_the_eps_sweep():
    w_star, data, _ = problem(STIFF)
    sweep = gamma_sensitivity(KEY, quad_loss, w_star, data, CFG_S)
    eps = eps_sensitivity(KEY, quad_loss, w_star, data, CFG_S)
    g = list(sweep.gamma).index(GAMMA)
    np.testing.assert_allclose(sweep.llc_mean[g], eps.llc_mean[1:4], rtol=1e-4, atol=1e-4)
    assert sweep.llc_mean.shape == (5, 3) and sweep.loss.shape == (5, 3, CFG_S.chains, CFG_S.draws)
    # The estimate falls with gamma, as the exact value does.
    assert np.all(np.diff(sweep.llc_mean[:, 1]) < 0)
    assert sweep.eps_sweep(g).stable == bool(sweep.stable[g])
    with pytest.raises(ConfigError, match="gamma factors"):
        gamma_sensitivity(KEY, quad_loss, w_star, data, CFG_S, factors=(0.1, 0.3))


def test_pick_gamma_takes_the_smallest_stable_gamma():
    gammas = np.array([10.0, 30.0, 100.0, 300.0])
    assert pick_gamma(gammas, [False, True, True, False], 2) == (1, "")
    assert pick_gamma(gammas[::-1], [True, True, False, False], 0) == (1, "")   # order of the grid is free
    idx, warning = pick_gamma(gammas, [False] * 4, 2)
    assert idx == 2 and "no gamma of 10, 30, 100, 300" in warning and "\n" not in warning


def test_gamma_rule_on_a_quadratic_returns_the_exact_value_at_its_gamma():
    w_star, data, xi = problem(FLAT)
    cfg = dataclasses.replace(CFG_K, eps=EPS / 2)
    sweep = gamma_sensitivity(KEY, quad_loss, w_star, data, cfg, factors=(0.1, 0.3, 1.0, 3.0))
    assert sweep.stable.any() and sweep.warning == ""
    assert sweep.chosen == int(np.flatnonzero(sweep.stable)[0])
    llc, se = sweep.llc_mean[sweep.chosen, 1], sweep.llc_se[sweep.chosen, 1]
    exact = exact_at(FLAT, sweep.chosen_gamma)
    assert abs(llc - exact) < 3 * se + 0.05 * exact, (llc, exact, se)
    assert exact > exact_at(FLAT, GAMMA)         # a smaller gamma: closer to the unlocalised 10
    summary = sweep.summary()
    assert summary["chosen_gamma"] == sweep.chosen_gamma and "smallest gamma" in summary["rule"]


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("llcg") / "run"
    done = subprocess.run([sys.executable, "-m", "induction_jax.cli", "train", *tiny(), "--steps", "100",
                           "--snapshots", "every:100", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


FAST = ["--chains", "2", "--draws", "40", "--burn-in", "10", "--n", "128", "--batch-size", "32", "--eps", "1e-4"]


def test_llc_gamma_auto_and_rmsprop_sgld(capsys, snap_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(snap_run, run_dir)
    assert main(["llc", str(run_dir), *FAST, "--gamma", "auto", "--sampler", "rmsprop-sgld",
                 "--snapshots", "100"]) == 0
    out = capsys.readouterr().out
    stats = json.loads((run_dir / "llc" / "stats.json").read_text())
    rule = stats["gamma_rule"]
    assert len(rule["gamma"]) == 5 and rule["gamma"][3] == pytest.approx(1000.0)
    assert stats["sgld"]["gamma"] == pytest.approx(rule["chosen_gamma"])
    assert stats["sgld"]["sampler"] == "rmsprop-sgld"
    assert rule["chosen_gamma"] == pytest.approx(min(g for g, ok in zip(rule["gamma"], rule["stable"]) if ok)) \
        if any(rule["stable"]) else rule["warning"]
    assert f"gamma auto: {rule['chosen_gamma']:.4g}" in out
    assert main(["llc", str(run_dir), *FAST, "--gamma", "300", "--snapshots", "100"]) == 0
    stats = json.loads((run_dir / "llc" / "stats.json").read_text())
    assert stats["sgld"]["gamma"] == 300.0 and stats["gamma_rule"] is None


@pytest.mark.parametrize("args, fragment", [(["--gamma", "big"], "--gamma: 'big': a number >= 0, or auto"),
                                            (["--sampler", "hmc"], "--sampler: invalid choice")])
def test_bad_gamma_or_sampler_is_a_one_line_error(capsys, args, fragment):
    with pytest.raises(SystemExit) as done:
        main(["llc", "RUN", *args])
    assert done.value.code == 2
    assert fragment in capsys.readouterr().err
