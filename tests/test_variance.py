import numpy as np
import pytest

from induction_jax.phase import figures
from induction_jax.phase.detect import PhaseError
from induction_jax.phase.survival import censor_at_last_step, kaplan_meier, survival_at
from induction_jax.phase.variance import (_average_ranks, anova_two_way, crossed_matrix, spearman,
                                          variance_decomposition)
from induction_jax.tasks import Repeated

SOURCES = ("init", "data", "residual")


def crossed_timings(rng, I, J, sd_init, sd_data, sd_noise):
    return (200 + rng.normal(0, sd_init, (I, 1)) + rng.normal(0, sd_data, (1, J))
            + rng.normal(0, sd_noise, (I, J)))


def test_anova_by_hand():
    # m = 4, rows 3 5, columns 2 5 5; MS_A = 3 (1 + 1) / 1 = 6, MS_B = 2 (4 + 1 + 1) / 2 = 6;
    # residuals (0 -1 1 / 0 1 -1): MS_E = 4 / 2 = 2; init (6-2)/3 = 4/3, data (6-2)/2 = 2,
    # residual 2: shares 1/4, 3/8, 3/8
    a = anova_two_way(np.array([[1.0, 3, 5], [3, 7, 5]]))
    assert a["I"] == 2 and a["J"] == 3 and a["grand_mean"] == 4.0
    np.testing.assert_allclose([a["mean_squares"][k] for k in SOURCES], [6, 6, 2])
    np.testing.assert_allclose([a["components"][k] for k in SOURCES], [4 / 3, 2, 2])
    np.testing.assert_allclose([a["shares"][k] for k in SOURCES], [0.25, 0.375, 0.375])
    # MS_A = MS_B = 0 < MS_E = 1: the (0 - 1)/2 estimates are truncated at 0, not negative
    b = anova_two_way(np.array([[1.0, 2], [2, 1]]))
    assert [b["components"][k] for k in SOURCES] == [0.0, 0.0, 1.0]
    assert [b["shares"][k] for k in SOURCES] == [0.0, 0.0, 1.0]


def test_bootstrap_cis_cover_the_true_shares():
    # x_ij = 200 + a_i + b_j + e_ij with sds 10, 5, 2 on an 8 x 8 grid: true shares 100, 25, 4 over
    # 129. Over 200 replicates a 95% interval should cover each ~95% of the time; >= 85% is 5
    # binomial sds below that. The mean width bound rules out a trivially wide interval. (Since
    # the intervals are generalized pivotal ones, not a crossed bootstrap; the coverage of every
    # component and share at 0.93 is checked in tests/test_stats_calibration.py.)
    rng = np.random.default_rng(123)
    true = np.array([100, 25, 4]) / 129
    R = 200
    hits, width, zero_in_data = np.zeros(3), np.zeros(3), 0
    for r in range(R):
        d = variance_decomposition(crossed_timings(rng, 8, 8, 10, 5, 2), n_boot=1000, seed=r)
        assert d["reason"] is None
        lo, hi = (np.array([d["shares_ci95"][k][i] for k in SOURCES]) for i in (0, 1))
        hits += (lo <= true) & (true <= hi)
        width += hi - lo
        zero_in_data += lo[1] == 0
        assert all(d["components_ci95"][k][0] <= d["components"][k] <= d["components_ci95"][k][1]
                   for k in SOURCES)
    assert np.all(hits / R >= 0.85), hits / R
    assert np.all(width / R < [0.7, 0.7, 0.2]), width / R
    assert zero_in_data / R <= 0.05            # a real data effect is seen (measured 0.005)


def test_no_data_effect_puts_zero_in_the_data_share_ci():
    rng = np.random.default_rng(7)
    R = 100
    zero_in = 0
    for r in range(R):
        d = variance_decomposition(crossed_timings(rng, 8, 8, 10, 0, 2), n_boot=1000, seed=r)
        zero_in += d["shares_ci95"]["data"][0] == 0.0
        assert d["shares"]["data"] < 0.2
    assert zero_in / R >= 0.95                 # measured 0.995 over 200


def test_censored_cell_gives_no_shares_with_a_reason():
    x = crossed_timings(np.random.default_rng(0), 3, 4, 10, 5, 2)
    x[1, 2] = np.nan
    d = variance_decomposition(x)
    assert d["shares"] is None and d["shares_ci95"] is None and d["components"] is None
    assert d["reason"] == "1 of 12 members censored: the ANOVA needs every cell timed"
    with pytest.raises(PhaseError, match="NaN"):
        anova_two_way(x)


def test_crossed_matrix_and_its_errors():
    init = [5, 5, 9, 9, 5, 9]
    data = [1, 2, 1, 2, 3, 3]
    il, dl, m = crossed_matrix(init, data, [10.0, 20, 30, 40, 50, np.nan])
    assert il.tolist() == [5, 9] and dl.tolist() == [1, 2, 3]
    np.testing.assert_array_equal(m, [[10, 20, 50], [30, 40, np.nan]])
    with pytest.raises(PhaseError, match=r"1 \(init, data\) pair\(s\) missing, e.g. init seed 9 x data seed 3"):
        crossed_matrix(init[:-1], data[:-1], np.ones(5))
    with pytest.raises(PhaseError, match="init seed 5 x data seed 2 appears 2 times"):
        crossed_matrix(init + [5], data + [2], np.ones(7))
    with pytest.raises(PhaseError, match="1 init seed.* x 3 data seed.*at least 2 of each"):
        crossed_matrix([5, 5, 5], [1, 2, 3], np.ones(3))
    with pytest.raises(PhaseError, match="one of each per member"):
        crossed_matrix(init, data, np.ones(5))
    for call in ((init[:-1], data[:-1], np.ones(5)), ([5, 5, 5], [1, 2, 3], np.ones(3))):
        with pytest.raises(PhaseError) as e:
            crossed_matrix(*call)
        assert "\n" not in str(e.value)


def test_spearman_by_hand_with_ties_and_a_nan():
    # x ranks 1 2.5 2.5 4 5 (a tie), y ranks 2 1 4 3 5; deviations from 3: (-2 -.5 -.5 1 2) and
    # (-1 -2 1 0 2): rho = 6.5 / sqrt(9.5 * 10)
    s = spearman([1, 2, 2, 4, 5, 3], [2, 1, 4, 3, 5, np.nan])
    assert s["n"] == 5
    np.testing.assert_allclose(s["rho"], 6.5 / np.sqrt(95))
    assert s["ci95_low"] is None and s["ci95_high"] is None          # 5 pairs: under MIN_N_SPEARMAN, no CI
    s = spearman([1, 2, 2, 4, 5, 3, 7, 6], [2, 1, 4, 3, 5, 6, 8, 7])
    assert -1 <= s["ci95_low"] <= s["rho"] <= s["ci95_high"] <= 1
    assert spearman([1, 2, np.nan], [3, 4, 5]) == {"rho": None, "ci95_low": None, "ci95_high": None, "n": 2}
    assert spearman([1, 1, 1, 1], [1, 2, 3, 4])["rho"] is None
    up = spearman(np.arange(20.0), np.exp(np.arange(20.0)))        # monotone, not linear
    assert up["rho"] == 1.0 and up["ci95_low"] == 1.0
    with pytest.raises(PhaseError, match="one length"):
        spearman([1, 2, 3], [1, 2])


def test_spearman_matches_scipy_and_its_ci_covers():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    a = rng.integers(0, 6, (7, 30)).astype(float)                  # many ties
    np.testing.assert_allclose(_average_ranks(a), stats.rankdata(a, axis=-1))
    x, y = a[0], a[1] + a[0]
    np.testing.assert_allclose(spearman(x, y)["rho"], stats.spearmanr(x, y).statistic)
    # bivariate normal with r = 0.6: population rho_s = (6 / pi) asin(r / 2); the 95% CI should
    # cover it in ~95% of samples (measured 0.94 of 100); >= 40 of 50 is 3 binomial sds below
    r, true = 0.6, 6 / np.pi * np.arcsin(0.3)
    hits = 0
    for k in range(50):
        z = rng.normal(size=(2, 60))
        s = spearman(z[0], r * z[0] + np.sqrt(1 - r * r) * z[1], n_boot=1000, seed=k)
        hits += s["ci95_low"] <= true <= s["ci95_high"]
    assert hits >= 40, hits


def test_kaplan_meier_without_censoring_is_one_minus_the_ecdf():
    t = np.array([30.0, 10, 20, 20, 50, 40, 20])
    km = kaplan_meier(t, np.ones(7, bool))
    assert km["steps"].tolist() == [10, 20, 30, 40, 50]
    np.testing.assert_allclose(km["survival"], [1 - np.mean(t <= u) for u in km["steps"]])
    assert km["n_at_risk"].tolist() == [7, 6, 3, 2, 1] and km["n_events"].tolist() == [1, 3, 1, 1, 1]
    assert np.all(km["ci95_low"] <= km["survival"]) and np.all(km["ci95_low"] >= 0)
    ok = np.isfinite(km["ci95_high"])
    assert np.all(km["survival"][ok] <= km["ci95_high"][ok]) and np.all(km["ci95_high"][ok] <= 1)


def test_kaplan_meier_with_censoring_by_hand():
    # times 3 5 5+ 8 10+ 12 (+ censored). At 3: 6 at risk, 1 event: S = 5/6. At 5: 5 at risk
    # (the member censored at 5 still counts), 1 event: S = 5/6 * 4/5 = 2/3. At 8: 3 at risk,
    # 1 event: S = 2/3 * 2/3 = 4/9. At 10: only a censoring, S stays 4/9. At 12: 1 at risk,
    # 1 event: S = 0.
    km = kaplan_meier([3, 5, 5, 8, 10, 12], [True, True, False, True, False, True])
    np.testing.assert_allclose(km["survival"], [5 / 6, 2 / 3, 4 / 9, 4 / 9, 0])
    assert km["n_at_risk"].tolist() == [6, 5, 3, 2, 1]
    # Greenwood at 5: 1/(6 * 5) + 1/(5 * 4) = 1/12; se of log(-log S) = sqrt(1/12) / ln(3/2)
    # = 0.71196; CI = (2/3)^exp(+-1.96 * 0.71196) = (2/3)^4.0355, (2/3)^0.2478 = 0.1946, 0.9044
    np.testing.assert_allclose([km["ci95_low"][1], km["ci95_high"][1]], [0.1946, 0.9044], atol=2e-4)
    assert km["ci95_low"][-1] == 0 and np.isnan(km["ci95_high"][-1])
    np.testing.assert_allclose(survival_at(km, [0, 2.9, 3, 4, 5, 9.9, 10, 100]),
                               [1, 1, 5 / 6, 5 / 6, 2 / 3, 4 / 9, 4 / 9, 0])
    times, observed = censor_at_last_step([100.0, np.nan, 300.0], 800)
    assert times.tolist() == [100, 800, 300] and observed.tolist() == [True, False, True]
    with pytest.raises(PhaseError, match="finite event or censoring time"):
        kaplan_meier([1.0, np.nan], [True, False])


def test_figures_with_a_censored_member(tmp_path):
    rng = np.random.default_rng(0)
    onset = np.concatenate([rng.uniform(200, 400, 15), [np.nan]])
    groups = {"lr 1e-3": censor_at_last_step(onset, 800),
              "lr 3e-3": censor_at_last_step(rng.uniform(100, 300, 12), 800)}
    p = figures.survival_and_ecdf(groups, tmp_path / "km.png", "onset step")
    assert p.stat().st_size > 1000
    x = crossed_timings(rng, 4, 5, 10, 5, 2)
    x[2, 3] = np.nan
    for m, name in ((x, "nan"), (np.nan_to_num(x, nan=200.0), "full")):
        d = variance_decomposition(m, n_boot=200)
        p = figures.variance_heatmap(m, np.arange(4), np.arange(10, 15), d, tmp_path / f"v_{name}.png", "midpoint")
        assert p.stat().st_size > 1000
    table = [{"name": "init norm", **spearman(rng.normal(size=20), rng.normal(size=20), n_boot=200)},
             {"name": "too few", **spearman([1.0, 2.0], [2.0, 1.0])}]
    assert figures.predictors(table, tmp_path / "pred.png").stat().st_size > 1000


def test_only_a_formation_counts_as_started_in_the_survival_curve():
    """A member with no transition (a small rise, which still crosses 10% of itself) or a collapse
    never started: censored in the survival curve, not an early event."""
    from induction_jax.phase.detect import detect
    steps = np.arange(0, 1001, 10.0)
    rise = lambda t0, height: height / (1 + np.exp(-(steps - t0) / 15))  # noqa: E731
    curves = np.stack([rise(200, 4.0),                 # forms
                       rise(50, 0.6),                  # a rise below the 1-nat minimum: no transition
                       4.0 - rise(300, 3.0)])          # collapses
    t = detect(steps, curves, Repeated.metric("in_context_score"), window=1)
    assert t.censored.tolist() == [False, True, True]
    assert t.reason[1].startswith("no transition") and "collapse" in t.reason[2]
    assert abs(t.raw_onset[0] - t.onset[0]) < 1e-9 and np.isnan(t.raw_onset[1:]).all()
    times, observed = censor_at_last_step(t.raw_onset, steps[-1])
    assert observed.tolist() == [True, False, False] and times[1:].tolist() == [1000, 1000]


def test_predictors_of_a_group_where_nothing_formed_are_not_tested():
    from induction_jax.phase.predictors import predictor_table
    quantities = {"norm_W_E": np.arange(8.0), "norm_W_pos": np.arange(8.0)[::-1]}
    table = predictor_table(quantities, np.full(8, np.nan), np.arange(8), n_boot=50)
    assert table["verdict"].startswith("not tested: 0 of 8 members timed") and not table["ci_excludes_zero"]
