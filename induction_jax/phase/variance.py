"""Where the spread of a timing comes from, and what it goes with.

A crossed design of I init seeds x J data seeds, one member (one timing) per cell, splits the
variance of the timing into an init-seed part, a data-seed part and a residual by a two-way
random-effects ANOVA without replication; generalized confidence intervals (generalized
pivotal quantities of the normal random-effects model) give their 95% CIs. `spearman` gives a
rank correlation with a bootstrap CI, for timing predictors. Below MIN_LEVELS of either
factor, or MIN_N_SPEARMAN pairs, no interval is given (tests/test_stats_calibration.py
measures why).
"""

from __future__ import annotations

import numpy as np

from induction_jax.phase.detect import PhaseError

SOURCES = ("init", "data", "residual")
# The smallest grid given a decomposition: with 2 levels a factor's variance has 1 degree of
# freedom and the 95% CI of its share spans all of [0, 1] (median width 1.0 at 2 x 2, 0.89 at 3 x 3,
# 0.49 at 8 x 8; tests/test_stats_calibration.py).
MIN_LEVELS = 3
# The fewest pairs given a Spearman CI and verdict: the bootstrap CI covers 0.94-0.97 from 6
# pairs (rho 0, 0.5, 0.8) but 0.87 at 5 (rho 0), and at 4 a bootstrap of 4 ranks gives [1, 1]
# (tests/test_stats_calibration.py; docs/definitions.md).
MIN_N_SPEARMAN = 6


def crossed_matrix(init_seeds, data_seeds, values) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(init_levels [I], data_levels [J], matrix_IJ)` from one value per member; NaN values
    (censored members) are kept as NaN cells."""
    init_E, data_E = np.asarray(init_seeds), np.asarray(data_seeds)
    values_E = np.asarray(values, float)
    if not (len(init_E) == len(data_E) == len(values_E)):
        raise PhaseError(f"{len(init_E)} init seeds, {len(data_E)} data seeds and {len(values_E)} values: "
                         f"need one of each per member")
    init_levels, row_E = np.unique(init_E, return_inverse=True)
    data_levels, col_E = np.unique(data_E, return_inverse=True)
    I, J = len(init_levels), len(data_levels)
    if I < 2 or J < 2:
        raise PhaseError(f"{I} init seed(s) x {J} data seed(s): the decomposition needs at least 2 of each")
    count_IJ = np.zeros((I, J), int)
    np.add.at(count_IJ, (row_E, col_E), 1)
    if (count_IJ > 1).any():
        i, j = np.argwhere(count_IJ > 1)[0]
        raise PhaseError(f"init seed {init_levels[i]} x data seed {data_levels[j]} appears {count_IJ[i, j]} "
                         f"times: a crossed design has exactly one member per (init, data) pair")
    if (count_IJ == 0).any():
        missing = np.argwhere(count_IJ == 0)
        i, j = missing[0]
        raise PhaseError(f"{len(missing)} (init, data) pair(s) missing, e.g. init seed {init_levels[i]} x "
                         f"data seed {data_levels[j]}: every init seed must be crossed with every data seed")
    matrix_IJ = np.full((I, J), np.nan)
    matrix_IJ[row_E, col_E] = values_E
    return init_levels, data_levels, matrix_IJ


def _anova_BIJ(x_BIJ: np.ndarray) -> dict[str, np.ndarray]:
    """Mean squares, components and shares `[B]` of a stack of B complete I x J grids."""
    _, I, J = x_BIJ.shape
    m_B = x_BIJ.mean((1, 2))
    r_BI = x_BIJ.mean(2)
    c_BJ = x_BIJ.mean(1)
    ms = {"init": J * ((r_BI - m_B[:, None]) ** 2).sum(1) / (I - 1),
          "data": I * ((c_BJ - m_B[:, None]) ** 2).sum(1) / (J - 1),
          "residual": ((x_BIJ - r_BI[:, :, None] - c_BJ[:, None, :] + m_B[:, None, None]) ** 2).sum((1, 2))
          / ((I - 1) * (J - 1))}
    comp = {"init": np.maximum(0.0, (ms["init"] - ms["residual"]) / J),
            "data": np.maximum(0.0, (ms["data"] - ms["residual"]) / I),
            "residual": ms["residual"]}
    total = comp["init"] + comp["data"] + comp["residual"]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = {k: np.where(total > 0, v / total, np.nan) for k, v in comp.items()}
    return {"mean_squares": ms, "components": comp, "shares": share, "grand_mean": m_B}


def _floats(d: dict, b: int = 0) -> dict:
    return {k: (float(v[b]) if np.isfinite(v[b]) else None) for k, v in d.items()}


def anova_two_way(matrix_IJ: np.ndarray) -> dict:
    """Two-way random-effects ANOVA without replication of a complete I x J grid.

    With grand mean m, row means r_i, column means c_j: MS_A = J sum_i (r_i - m)^2 / (I-1),
    MS_B = I sum_j (c_j - m)^2 / (J-1), MS_E = sum_ij (x_ij - r_i - c_j + m)^2 / ((I-1)(J-1)).
    Method-of-moments components: init = (MS_A - MS_E)/J, data = (MS_B - MS_E)/I, residual =
    MS_E; a negative estimate is truncated at 0. With one member per cell the init x data
    interaction cannot be told from measurement noise: the residual is their sum. Shares are
    each component over the sum of the three (None if all three are 0).
    """
    x_IJ = np.asarray(matrix_IJ, float)
    if x_IJ.ndim != 2 or min(x_IJ.shape) < 2:
        raise PhaseError(f"grid of shape {x_IJ.shape}: need an init seed x data seed matrix, at least 2 x 2")
    if not np.isfinite(x_IJ).all():
        raise PhaseError(f"{int((~np.isfinite(x_IJ)).sum())} of {x_IJ.size} cells are NaN: "
                         f"the ANOVA needs every cell timed")
    a = _anova_BIJ(x_IJ[None])
    return {"I": x_IJ.shape[0], "J": x_IJ.shape[1], "grand_mean": float(a["grand_mean"][0]),
            "mean_squares": _floats(a["mean_squares"]), "components": _floats(a["components"]),
            "shares": _floats(a["shares"])}


CI_METHOD = "generalized pivotal quantities of the random-effects model (percentile 2.5-97.5)"


def generalized_intervals(ms_init, ms_data, ms_res, I: int, J: int, n_draws: int = 2000,
                          rng: np.random.Generator | None = None) -> dict:
    """95% generalized confidence intervals `[R, 2]` of each component and share, for R grids
    given by their mean squares `[R]` (vectorised over grids so the coverage can be simulated).

    Under x_ij = m + a_i + b_j + e_ij with normal effects, SS_A / (J var_a + var_e), SS_B /
    (I var_b + var_e) and SS_E / var_e are independent chi-squares with I-1, J-1, (I-1)(J-1)
    df. Replacing each by a chi-square draw U gives the generalized pivots var_e* = SS_E / U_E,
    var_a* = max(0, (SS_A / U_A - var_e*) / J), var_b* likewise, and the shares from the same
    draw; their 2.5 and 97.5 percentiles are the interval (Weerahandi 1993; for the residual it
    is the exact chi-square interval). A nonparametric bootstrap over the crossed grid covers
    the components too rarely (0.77-0.87 at 8 x 8), a parametric percentile bootstrap 0.86-0.90;
    these cover 0.93-0.97 (tests/test_stats_calibration.py).
    """
    rng = np.random.default_rng(0) if rng is None else rng
    ms = [np.atleast_1d(np.asarray(v, float)) for v in (ms_init, ms_data, ms_res)]
    R = len(ms[0])
    df_a, df_b, df_e = I - 1, J - 1, (I - 1) * (J - 1)
    u_a = rng.chisquare(df_a, (R, n_draws))
    u_b = rng.chisquare(df_b, (R, n_draws))
    u_e = rng.chisquare(df_e, (R, n_draws))
    res = ms[2][:, None] * df_e / u_e
    comp = {"init": np.maximum(0.0, (ms[0][:, None] * df_a / u_a - res) / J),
            "data": np.maximum(0.0, (ms[1][:, None] * df_b / u_b - res) / I),
            "residual": res}
    total = comp["init"] + comp["data"] + comp["residual"]
    with np.errstate(invalid="ignore", divide="ignore"):
        share = {k: np.where(total > 0, v / total, np.nan) for k, v in comp.items()}
    q = lambda v: np.moveaxis(np.nanpercentile(v, [2.5, 97.5], axis=1), 0, -1)  # noqa: E731
    return {"components": {k: q(v) for k, v in comp.items()}, "shares": {k: q(v) for k, v in share.items()}}


def variance_decomposition(matrix_IJ: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict:
    """`anova_two_way` plus 95% CIs of each component and share (`generalized_intervals`,
    `n_boot` draws). A censored member (NaN cell) breaks the grid, and a grid under MIN_LEVELS
    of either factor is too small to mean anything: the shares are then None, with the reason.
    """
    x_IJ = np.asarray(matrix_IJ, float)
    n_nan = int((~np.isfinite(x_IJ)).sum())
    none = {"I": x_IJ.shape[0], "J": x_IJ.shape[1], "n_boot": n_boot, "ci_method": CI_METHOD, "grand_mean": None,
            "mean_squares": None, "components": None, "shares": None, "components_ci95": None, "shares_ci95": None}
    if n_nan:
        return none | {"reason": f"{n_nan} of {x_IJ.size} members censored: the ANOVA needs every cell timed"}
    if min(x_IJ.shape) < MIN_LEVELS:
        return none | {"reason": f"{x_IJ.shape[0]} init x {x_IJ.shape[1]} data seeds: a decomposition needs at least "
                                 f"{MIN_LEVELS} of each (with 2, a factor's variance has 1 degree of freedom and the "
                                 f"95% CI of its share spans all of 0-1)"}
    out = anova_two_way(x_IJ)
    I, J = x_IJ.shape
    ms = out["mean_squares"]
    gi = generalized_intervals(ms["init"], ms["data"], ms["residual"], I, J, n_boot, np.random.default_rng(seed))

    def ci(v_R2):
        return [float(v) for v in v_R2[0]] if np.isfinite(v_R2[0]).all() else None

    return out | {"n_boot": n_boot, "ci_method": CI_METHOD,
                  "components_ci95": {k: ci(gi["components"][k]) for k in SOURCES},
                  "shares_ci95": {k: ci(gi["shares"][k]) for k in SOURCES},
                  "reason": None if out["shares"]["init"] is not None
                  else "every member has the same timing: no variance to share"}


def _average_ranks(a_BN: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, tied values sharing the average of their ranks."""
    B, N = a_BN.shape
    order = np.argsort(a_BN, axis=-1, kind="stable")
    sorted_BN = np.take_along_axis(a_BN, order, -1)
    pos = np.broadcast_to(np.arange(N), (B, N))
    new = np.ones((B, N), bool)
    new[:, 1:] = sorted_BN[:, 1:] != sorted_BN[:, :-1]
    last = np.ones((B, N), bool)
    last[:, :-1] = new[:, 1:]
    # each sorted position's tie group runs from the latest group start to the next group end
    start = np.maximum.accumulate(np.where(new, pos, 0), axis=-1)
    end = np.minimum.accumulate(np.where(last, pos, N - 1)[:, ::-1], axis=-1)[:, ::-1]
    ranks = np.empty((B, N))
    np.put_along_axis(ranks, order, (start + end) / 2 + 1, -1)
    return ranks


def _pearson_BN(x_BN: np.ndarray, y_BN: np.ndarray) -> np.ndarray:
    dx = x_BN - x_BN.mean(-1, keepdims=True)
    dy = y_BN - y_BN.mean(-1, keepdims=True)
    den = np.sqrt((dx * dx).sum(-1) * (dy * dy).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (dx * dy).sum(-1) / den, np.nan)


def spearman(x, y, n_boot: int = 2000, seed: int = 0) -> dict:
    """Spearman rank correlation (average ranks for ties) over the pairs with no NaN, with a 95%
    percentile CI from resampling pairs; rho None below 3 pairs or when either side is constant,
    the CI None below MIN_N_SPEARMAN pairs."""
    x_N, y_N = np.asarray(x, float), np.asarray(y, float)
    if x_N.shape != y_N.shape or x_N.ndim != 1:
        raise PhaseError(f"x of shape {x_N.shape} and y of shape {y_N.shape}: need two 1-D arrays of one length")
    ok = np.isfinite(x_N) & np.isfinite(y_N)
    x_N, y_N = x_N[ok], y_N[ok]
    n = len(x_N)
    none = {"rho": None, "ci95_low": None, "ci95_high": None, "n": n}
    if n < 3:
        return none
    rho = _pearson_BN(_average_ranks(x_N[None]), _average_ranks(y_N[None]))[0]
    if not np.isfinite(rho):
        return none
    if n < MIN_N_SPEARMAN:      # no interval that means anything (a bootstrap of 4 ranks gives [1, 1])
        return none | {"rho": float(rho)}
    idx_BN = np.random.default_rng(seed).integers(0, n, (n_boot, n))
    boots = _pearson_BN(_average_ranks(x_N[idx_BN]), _average_ranks(y_N[idx_BN]))
    # a resample can draw one pair n times: a constant side has no rank correlation, so it is left out
    boots = boots[np.isfinite(boots)]
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return {"rho": float(rho), "ci95_low": float(lo), "ci95_high": float(hi), "n": n}
