import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handbuilt import P, V, build
from induction_jax.analysis import attention as att
from induction_jax.analysis import behaviour, circuits
from induction_jax.analysis.factored import FactoredMatrix, copying_score
from induction_jax.analysis.score import analyze_params
from induction_jax.analysis.weights import WeightsError, stacked_params
from induction_jax.functional import apply
from induction_jax.losses import token_losses
from induction_jax.tasks.repeated import induction_floor, repeated_sequences, split_losses


@pytest.fixture(scope="module")
def hand():
    return stacked_params(build(), ensemble=False)


@pytest.fixture(scope="module")
def hand_result(hand):
    return analyze_params(hand, P)


def test_handbuilt_model_predicts_the_second_half(hand):
    x = repeated_sequences(jax.random.PRNGKey(0), 64, P, V, replace=False)
    p = {k: v[0] for k, v in hand.items()}
    losses = split_losses(token_losses(apply(p, x), x), P)
    assert float(losses["loss_second_half"]) < 0.1
    assert float(losses["loss_first_half"]) > np.log(V) - 0.5


def test_handbuilt_attention_scores_near_one(hand):
    x = repeated_sequences(jax.random.PRNGKey(1), 64, P, V, replace=False)
    pat = np.asarray(behaviour.mean_patterns(jax.tree.map(jnp.asarray, hand), x))[0]
    assert att.previous_token_score(pat[0, 0]) > 0.95
    assert att.induction_score(pat[1, 0], P) > 0.95
    assert att.induction_score(pat[1, 1], P) < 0.3


def test_handbuilt_circuit_is_identified(hand_result):
    row = hand_result["circuit"]["members"][0]
    assert row["prev_token_head"] == [0, 0] and row["induction_head"] == [1, 0]
    assert row["checks"]["k_composition_largest_pair"] and row["checks"]["k_composition_above_baseline"]
    assert row["ov_copying_score"] > 0.99
    assert row["ablation_prev_token_head"] > 1.0 and row["ablation_induction_head"] > 1.0
    assert row["ablation_max_other_head"] < 0.3
    assert row["clean_circuit"], row["checks"]
    s = hand_result["scores"]
    assert s["ov_top1"][0, 1, 0] == 1.0 and s["positional_prev_token_score"][0, 0, 0] > 0.95
    assert s["prefix_matching_score"][0, 1, 0] > 0.8 > s["prefix_matching_score"][0, 0, 0]


def test_factored_equals_dense():
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    A = jax.random.normal(k1, (3, 2, 12, 4))
    B = jax.random.normal(k2, (3, 2, 4, 12))
    M = FactoredMatrix(A, B)
    dense = np.asarray(A @ B, np.float64)
    np.testing.assert_allclose(M.norm(), np.linalg.norm(dense, axis=(-2, -1)), rtol=1e-5)
    np.testing.assert_allclose(M.T.AB, np.swapaxes(dense, -1, -2), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(M.S, np.linalg.svd(dense, compute_uv=False)[..., :4], rtol=1e-4)
    U, S, Vh = M.svd()
    np.testing.assert_allclose((U * S[..., None, :]) @ Vh, dense, atol=1e-4)
    dense_eig = np.linalg.eigvals(dense)
    # the 4 eigenvalues of largest modulus (the other 8 of a rank-4 matrix are zero)
    order = np.argsort(np.abs(dense_eig), axis=-1)[..., -4:]
    top = np.sort_complex(np.take_along_axis(dense_eig, order, axis=-1))
    np.testing.assert_allclose(np.sort_complex(M.eigenvalues), top, rtol=1e-4, atol=1e-4)
    C = jax.random.normal(k3, (12, 5))
    np.testing.assert_allclose((M @ C).AB, dense @ np.asarray(C), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose((M @ M.T).norm(), np.linalg.norm(dense @ np.swapaxes(dense, -1, -2),
                                                                 axis=(-2, -1)), rtol=1e-4)


def test_copying_score_of_identity_and_negation():
    assert copying_score(np.ones(5, complex)) == 1.0
    assert copying_score(-np.ones(5, complex)) == -1.0
    np.testing.assert_allclose(copying_score(np.array([1j, -1j])), 0.0, atol=1e-12)


def test_composition_score_matches_dense_definition():
    keys = jax.random.split(jax.random.PRNGKey(3), 4)
    W_V, W_Q, W_K = (np.asarray(jax.random.normal(k, (16, 4))) for k in keys[:3])
    W_O = np.asarray(jax.random.normal(keys[3], (4, 16)))
    ov, qk = W_V @ W_O, W_Q @ W_K.T
    want = np.linalg.norm(ov @ qk.T) / (np.linalg.norm(ov) * np.linalg.norm(qk))
    got = circuits.composition_score(FactoredMatrix(W_V, W_O), FactoredMatrix(W_Q, W_K.T).T)
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    base = circuits.composition_baseline(64, 16, n_draws=200)
    assert abs(base["k_composition"]["mean"] - 0.125) < 0.005
    assert abs(base["k_composition"]["std"] - 0.007) < 0.003


def _pattern(T, offset, first):
    A = np.zeros((T, T))
    for i in range(T):
        A[i, i - offset if i >= first else 0] = 1.0
    return jnp.asarray(A)


def test_scores_of_synthetic_patterns_are_one():
    P_, T = 6, 12
    assert float(att.previous_token_score(_pattern(T, 1, 1))) == 1.0
    assert float(att.induction_score(_pattern(T, P_ - 1, P_), P_)) == 1.0
    assert float(att.duplicate_token_score(_pattern(T, P_, P_), P_)) == 1.0
    assert float(att.induction_score(_pattern(T, 1, 1), P_)) == 0.0
    # token-equality versions on a repeated sequence without duplicates in a half
    x = jnp.asarray([list(range(P_)) * 2])
    stripe = _pattern(T, P_ - 1, P_)[None, None]
    np.testing.assert_allclose(att.induction_score_by_tokens(stripe, x), [1.0])
    np.testing.assert_allclose(att.duplicate_token_score_by_tokens(_pattern(T, P_, P_)[None, None], x), [1.0])


def test_ensemble_analysis_equals_per_member_stacked(hand):
    two = {k: np.concatenate([v, build(seed=1)[k][None]]) for k, v in hand.items()}
    both = analyze_params(two, P)["scores"]
    for i in range(2):
        one = analyze_params({k: v[i:i + 1] for k, v in two.items()}, P)["scores"]
        for name in ("prev_token_score", "induction_score", "mean_ablation_delta", "k_composition",
                     "ov_copying_score", "direct_logit_attribution"):
            np.testing.assert_allclose(both[name][i], one[name][0], rtol=1e-4, atol=1e-5)


def test_weights_and_architecture_errors():
    with pytest.raises(WeightsError, match="missing W_U"):
        stacked_params({k: v for k, v in build().items() if k != "W_U"}, ensemble=False)
    with pytest.raises(circuits.NotApplicable, match="LayerNorm"):
        circuits.check_weight_based({**build(), "ln1_w": np.ones((2, 8))})


def test_induction_floor_known_cases():
    distinct = np.array([[0, 1, 2, 3, 0, 1, 2, 3]])
    assert induction_floor(distinct, 4) == 0.0
    # token 0 twice in the half. Query 4 (x=0) matches j=0 (next 1) and j=2 (next 2), target 1:
    # ln 2. Query 5 (x=1) matches j=1 only: 0. Query 6 (x=0) matches j=0, 2, 4, target 2: ln 3.
    dup = np.array([[0, 1, 0, 2, 0, 1, 0, 2]])
    np.testing.assert_allclose(induction_floor(dup, 4), (np.log(2) + np.log(3)) / 3)
    x = np.asarray(repeated_sequences(jax.random.PRNGKey(0), 256, 25, 64))
    assert 0.2 < induction_floor(x, 25) < 0.4


def test_layernorm_mlp_model_marks_weight_scores_not_applicable():
    from induction_jax.config import ModelConfig
    from induction_jax.model import init_params
    cfg = ModelConfig(d_vocab=16, n_ctx=12, n_layers=2, n_heads=2, d_model=16, d_mlp=32, layer_norm=True)
    params = stacked_params(init_params(cfg, jax.random.PRNGKey(0)), ensemble=False)
    result = analyze_params(params, 6)
    assert "LayerNorm" in result["not_applicable"] or "MLPs" in result["not_applicable"]
    assert result["circuit"]["weight_based_not_applicable"] == result["not_applicable"]
    assert "k_composition" not in result["scores"] and "ov_copying_score" not in result["scores"]
    assert result["scores"]["induction_score"].shape == (1, 2, 2)
    assert np.isfinite(result["scores"]["mean_ablation_delta"]).all()


def test_one_layer_model_is_analysed_and_has_no_circuit(tmp_path):
    from induction_jax.analysis.run import write_figures
    from induction_jax.config import ModelConfig
    from induction_jax.model import init_params
    cfg = ModelConfig(d_vocab=16, n_ctx=12, n_layers=1, n_heads=2, d_model=16)
    params = stacked_params(init_params(cfg, jax.random.PRNGKey(0)), ensemble=False)
    result = analyze_params(params, 6)
    row = result["circuit"]["members"][0]
    assert row["checks"]["two_layers"] is False and not row["clean_circuit"] and not row["induction_circuit"]
    figs = write_figures(result, params, 0, tmp_path)
    assert "k_composition" not in figs and all(p.stat().st_size > 1000 for p in figs.values())


@pytest.mark.parametrize("mlp", [False, True])
def test_one_head_ablations_equal_the_whole_masked_pass(mlp):
    """`behaviour.ablations` resumes each ablated pass after the head's layer (`apply(resume_at=
    ...)`); it must give what the whole pass with that head masked (zero) or replaced by its
    mean gives, at every layer of a 3-layer model, with MLPs and LayerNorm and without, for
    3 models (an odd count: padded over the devices on a CPU)."""
    from induction_jax.config import ModelConfig
    from induction_jax.model import init_params
    cfg = ModelConfig(d_vocab=16, n_ctx=12, n_layers=3, n_heads=2, d_model=16, d_mlp=32 if mlp else 0,
                      layer_norm=mlp)
    models = [init_params(cfg, jax.random.PRNGKey(i)) for i in range(3)]
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *models)
    tokens = repeated_sequences(jax.random.PRNGKey(7), 8, 6, 16, True)
    got = behaviour.ablations(params, tokens, 6, None)

    def second_half(p, **kw):
        return split_losses(token_losses(apply(p, tokens, **kw), tokens), 6)["loss_second_half"]

    for i, p in enumerate(models):
        clean = second_half(p)
        mean_LHD = apply(p, tokens, return_activations=True)[1].head_out_BLTHD.mean((0, 2))
        np.testing.assert_allclose(got["clean_loss_second_half"][i], clean, rtol=1e-5)
        for layer in range(3):
            for h in range(2):
                onehot = jnp.zeros((3, 2)).at[layer, h].set(1.0)
                zero = second_half(p, head_mask_LH=1 - onehot)
                add = jnp.broadcast_to((onehot[..., None] * mean_LHD)[:, None, None], (3, 8, 12, 2, 16))
                mean = second_half(p, head_mask_LH=1 - onehot, head_replace_LBTHD=add)
                np.testing.assert_allclose(got["zero_ablation_delta"][i, layer, h], zero - clean, atol=2e-5)
                np.testing.assert_allclose(got["mean_ablation_delta"][i, layer, h], mean - clean, atol=2e-5)
    with pytest.raises(ValueError, match="resume_at"):
        apply(models[0], tokens, resume_at=(1, jnp.zeros((8, 12, 16))), return_activations=True)
