"""Weight-based circuit scores (docs/definitions.md), for every member, layer and head at once.

All functions take stacked weights `[E, ...]` (see `weights.stacked_params`) and return
arrays with leading `[E, L, H]` axes. They assume the reference architecture: no
LayerNorm and no MLPs (`check_weight_based` says so in one line otherwise).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from induction_jax.analysis.factored import FactoredMatrix, copying_score
from induction_jax.functional import causal_mask


class NotApplicable(ValueError):
    """A weight-based score whose assumptions the model does not meet."""


def check_weight_based(params: dict) -> None:
    extra = [n for n in ("W_in", "ln1_w") if n in params]
    if extra:
        what = "MLPs" if "W_in" in extra else "LayerNorm"
        raise NotApplicable(f"weight-based scores assume an attention-only model without LayerNorm; "
                            f"this model has {what} (pattern scores and ablations still apply)")


def QK(params: dict) -> FactoredMatrix:
    """`W_Q W_K^T`, `[E, L, H, D, D]` factored."""
    return FactoredMatrix(params["W_Q"], jnp.swapaxes(params["W_K"], -1, -2))


def OV(params: dict) -> FactoredMatrix:
    """`W_V W_O`, `[E, L, H, D, D]` factored."""
    return FactoredMatrix(params["W_V"], params["W_O"])


def positional_qk_pattern(params: dict, n_positions: int | None = None) -> jax.Array:
    """softmax(mask(W_pos QK W_pos^T / sqrt(Dh))), `[E, L, H, T, T]`."""
    W_pos = params["W_pos"][:, :n_positions]                              # [E, T, D]
    q = jnp.einsum("etd,elhdk->elhtk", W_pos, params["W_Q"])
    k = jnp.einsum("esd,elhdk->elhsk", W_pos, params["W_K"])
    scores = jnp.einsum("elhtk,elhsk->elhts", q, k) / jnp.sqrt(jnp.float32(params["W_Q"].shape[-1]))
    T = W_pos.shape[1]
    scores = jnp.where(causal_mask(T), scores, -jnp.inf)
    return jax.nn.softmax(scores, axis=-1)


def positional_prev_token_score(pattern: jax.Array) -> jax.Array:
    """Mean of diag(-1) of the positional QK pattern, `[E, L, H]`."""
    T = pattern.shape[-1]
    i = jnp.arange(1, T)
    return pattern[..., i, i - 1].mean(-1)


def full_ov_circuit(params: dict) -> FactoredMatrix:
    """`W_E OV W_U` (V x V; row = source token, column = logit), factored `[E, L, H, V, V]`."""
    E = params["W_E"][:, None, None]                                      # [E, 1, 1, V, D]
    U = params["W_U"][:, None, None]
    return FactoredMatrix(E @ params["W_V"], params["W_O"] @ U)


def ov_copying_scores(params: dict) -> dict[str, np.ndarray]:
    """Eigenvalue copying score and top-1 / top-5 diagonal accuracy of the full OV circuit."""
    M = full_ov_circuit(params)
    eig = M.eigenvalues                                                   # [E, L, H, K]
    dense = np.asarray(M.AB)                                              # [E, L, H, V, V]
    diag = np.diagonal(dense, axis1=-2, axis2=-1)[..., None]              # own logit per row
    rank = (dense > diag).sum(-1)                                         # tokens beating it
    return {"ov_copying_score": copying_score(eig),
            "ov_top1": (rank == 0).mean(-1), "ov_top5": (rank < 5).mean(-1),
            "ov_eigenvalues": eig}


def composition_score(L: FactoredMatrix, R: FactoredMatrix) -> jax.Array:
    """||L R||_F / (||L||_F ||R||_F), broadcasting over leading axes."""
    return (L @ R).norm() / (L.norm() * R.norm())


def composition_scores(params: dict) -> dict[str, jax.Array]:
    """Q-, K-, V-composition of every earlier head A into every later head B (traceable: it
    also runs inside the compiled training chunk as a probe).

    `[E, L, H, L, H]` indexed (layer_A, head_A, layer_B, head_B); NaN where layer_B <= layer_A.
    L = OV_A; R = QK_B (Q), QK_B^T (K), OV_B (V), as TransformerLens' composition_scores.
    """
    ov, qk = OV(params), QK(params)
    left = FactoredMatrix(ov.A[:, :, :, None, None], ov.B[:, :, :, None, None])
    L = params["W_Q"].shape[1]
    later = (jnp.arange(L)[None, :] > jnp.arange(L)[:, None])[:, None, :, None]   # [L, 1, L, 1]
    out = {}
    for mode, right in (("q", qk), ("k", qk.T), ("v", ov)):
        r = FactoredMatrix(right.A[:, None, None], right.B[:, None, None])
        out[f"{mode}_composition"] = jnp.where(later, composition_score(left, r), jnp.nan)
    return out


def composition_baseline(d_model: int, d_head: int, n_draws: int = 200, seed: int = 0) -> dict:
    """Mean and std of each composition score for random Gaussian factors of the model's shapes.

    The score is scale-invariant, so the init scale does not matter; only the shapes do
    (about 1/sqrt(d_model) = 0.125 at D = 64, Dh = 16).
    """
    keys = jax.random.split(jax.random.PRNGKey(seed), 4)
    shape = (n_draws, d_model, d_head)
    W_V, W_Q, W_K = (jax.random.normal(k, shape) for k in keys[:3])
    W_O = jax.random.normal(keys[3], (n_draws, d_head, d_model))
    ov = FactoredMatrix(W_V, W_O)
    qk = FactoredMatrix(W_Q, jnp.swapaxes(W_K, -1, -2))
    # A second, independent OV for V-composition (a later head's own OV).
    ov2 = FactoredMatrix(jnp.roll(W_V, 1, axis=0), jnp.roll(W_O, 1, axis=0))
    out = {}
    for mode, right in (("q", qk), ("k", qk.T), ("v", ov2)):
        s = np.asarray(composition_score(ov, right))
        out[f"{mode}_composition"] = {"mean": float(s.mean()), "std": float(s.std()), "n_draws": n_draws}
    return out
