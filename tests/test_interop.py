"""Export to npz / safetensors / TransformerLens and import from TransformerLens.

The npz, safetensors and refusal tests always run; the TransformerLens ones need the `tl` extra.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handbuilt import build
from induction_jax.analysis import circuits
from induction_jax.analysis.weights import CIRCUIT_NAMES, WeightsError, stacked_params
from induction_jax.config import ModelConfig
from induction_jax.functional import apply
from induction_jax.interop import FORMATS, export_params, to_transformer_lens
from induction_jax.model import init_params

# TransformerLens 3.x warns that HookedTransformer is deprecated (in favour of TransformerBridge).
pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")

CFG = ModelConfig(d_vocab=16, n_ctx=12, n_layers=2, n_heads=2, d_model=16)


@pytest.fixture(scope="module")
def ensemble():
    """Two members stacked `[2, ...]`, numpy."""
    members = [init_params(CFG, jax.random.PRNGKey(seed)) for seed in (0, 1)]
    return stacked_params({k: np.stack([np.asarray(m[k]) for m in members]) for k in members[0]})


def _one_line_error(fn, *args, match: str, **kwargs) -> str:
    with pytest.raises(WeightsError, match=match) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


# ---- npz / safetensors -------------------------------------------------------------------------

def _read(fmt: str, path) -> dict:
    if fmt == "npz":
        with np.load(path) as f:
            return dict(f)
    from safetensors.numpy import load_file
    return load_file(str(path))


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_file_round_trip_every_member(ensemble, tmp_path, fmt):
    path = export_params(ensemble, None, fmt, tmp_path / "weights")   # no suffix added
    assert path == tmp_path / "weights" and path.is_file()
    back = _read(fmt, path)
    assert sorted(back) == sorted(CIRCUIT_NAMES)
    for name in CIRCUIT_NAMES:
        assert back[name].dtype == np.float32
        np.testing.assert_array_equal(back[name], ensemble[name])


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_file_round_trip_one_member(ensemble, tmp_path, fmt):
    back = _read(fmt, export_params(ensemble, 1, fmt, tmp_path / f"m1.{fmt}"))
    assert back["W_Q"].shape == (2, 2, 16, 8)                          # [L, H, D, K]: no ensemble axis
    for name in CIRCUIT_NAMES:
        np.testing.assert_array_equal(back[name], ensemble[name][1])
    # A single model's params (no ensemble axis) export as themselves.
    single = {k: v[1] for k, v in ensemble.items()}
    again = _read(fmt, export_params(single, None, fmt, tmp_path / f"single.{fmt}"))
    assert all(np.array_equal(again[k], back[k]) for k in CIRCUIT_NAMES)


# ---- bad input ---------------------------------------------------------------------------------

def test_member_out_of_range(ensemble, tmp_path):
    for member in (2, -1):
        msg = _one_line_error(export_params, ensemble, member, "npz", tmp_path / "x.npz",
                              match="out of range")
        assert "0..1" in msg
    single = {k: v[0] for k, v in ensemble.items()}
    assert "0..0" in _one_line_error(export_params, single, 1, "npz", tmp_path / "x.npz", match="out of range")
    assert not (tmp_path / "x.npz").exists()


def test_unknown_format(ensemble, tmp_path):
    msg = _one_line_error(export_params, ensemble, 0, "onnx", tmp_path / "x", match="unknown")
    assert all(fmt in msg for fmt in FORMATS)


def test_transformer_lens_export_refuses_mlps_layernorm_and_ensembles(ensemble, tmp_path):
    """Refused from the params alone, before torch is needed."""
    single = {k: v[0] for k, v in ensemble.items()}
    mlp = single | {"W_in": np.zeros((2, 16, 32), np.float32), "W_out": np.zeros((2, 32, 16), np.float32)}
    _one_line_error(to_transformer_lens, mlp, match=r"has MLPs \(W_in\)")
    ln = single | {"ln1_w": np.ones((2, 16), np.float32), "ln1_b": np.zeros((2, 16), np.float32)}
    _one_line_error(to_transformer_lens, ln, match=r"has LayerNorm \(ln1_w\)")
    _one_line_error(to_transformer_lens, single, ModelConfig(d_vocab=16, n_ctx=12, d_model=16, n_heads=2,
                                                             d_mlp=32), match="has MLPs")
    _one_line_error(to_transformer_lens, single, ModelConfig(d_vocab=16, n_ctx=12, d_model=16, n_heads=4),
                    match="n_heads=4 but the weights have n_heads=2")
    _one_line_error(to_transformer_lens, ensemble, match="takes one member")
    msg = _one_line_error(export_params, ensemble, None, "transformer-lens", tmp_path / "tl",
                          match="holds one model")
    assert "0..1" in msg


# ---- TransformerLens ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tl():
    return pytest.importorskip("transformer_lens")


def _tl_forward(model, tokens_BT):
    import torch

    logits, cache = model.run_with_cache(torch.tensor(np.asarray(tokens_BT)))
    pattern_BLHTS = np.stack([cache["pattern", layer].numpy() for layer in range(model.cfg.n_layers)], 1)
    return logits.detach().numpy(), pattern_BLHTS


def _max_diffs(params: dict, model, tokens_BT) -> tuple[float, float]:
    logits, act = apply(jax.tree.map(jnp.asarray, params), jnp.asarray(tokens_BT), return_activations=True)
    tl_logits, tl_pattern = _tl_forward(model, tokens_BT)
    return (float(np.abs(np.asarray(logits) - tl_logits).max()),
            float(np.abs(np.asarray(act.pattern_BLHTS) - tl_pattern).max()))


def test_exported_member_runs_the_same_in_transformer_lens(tl, ensemble, tmp_path):
    from induction_jax.interop import load_transformer_lens

    out = export_params(ensemble, 1, "transformer-lens", tmp_path / "tl", model_cfg=CFG)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "state_dict.pt"]
    model = load_transformer_lens(out, device="cpu")
    tokens = jax.random.randint(jax.random.PRNGKey(2), (4, CFG.n_ctx), 0, CFG.d_vocab)
    logit_diff, pattern_diff = _max_diffs({k: v[1] for k, v in ensemble.items()}, model, tokens)
    assert logit_diff < 1e-4 and pattern_diff < 1e-5


def test_handbuilt_model_runs_the_same_in_transformer_lens(tl, tmp_path):
    """d_head (65) != d_model / n_heads (104): TransformerLens takes both from the config."""
    from handbuilt import P, V
    from induction_jax.interop import load_transformer_lens, save_transformer_lens

    params = build()
    model = load_transformer_lens(save_transformer_lens(params, None, tmp_path / "hand"), device="cpu")
    # halves of P distinct tokens, repeated once (made here: the interop's tests need no task)
    half = jax.vmap(lambda k: jax.random.permutation(k, V)[:P])(jax.random.split(jax.random.PRNGKey(3), 4))
    tokens = jnp.concatenate([half, half], axis=1)
    logit_diff, pattern_diff = _max_diffs(params, model, tokens)
    assert logit_diff < 1e-4 and pattern_diff < 1e-5


def test_state_dict_loads_strictly_and_round_trips(tl, ensemble):
    from induction_jax.interop import from_transformer_lens

    single = {k: v[0] for k, v in ensemble.items()}
    config, state = to_transformer_lens(single, CFG)
    model = tl.HookedTransformer(tl.HookedTransformerConfig(**config, device="cpu"))
    model.load_state_dict(state)                                       # strict: buffers included
    assert all(float(state[k].abs().max()) == 0 for k in state if k.rsplit(".", 1)[-1].startswith("b_"))
    back = from_transformer_lens(model)
    assert sorted(back) == sorted(CIRCUIT_NAMES)
    assert all(np.array_equal(back[k], single[k]) for k in CIRCUIT_NAMES)


@pytest.fixture(scope="module")
def tl_model(tl):
    """A TransformerLens attention-only model, TransformerLens' own random init (3 layers)."""
    cfg = tl.HookedTransformerConfig(n_layers=3, d_model=24, n_ctx=10, d_head=6, n_heads=3, d_vocab=20,
                                     attn_only=True, normalization_type=None, device="cpu", seed=0)
    return tl.HookedTransformer(cfg)


def test_imported_model_runs_the_same(tl_model):
    from induction_jax.interop import from_transformer_lens

    tokens = jax.random.randint(jax.random.PRNGKey(4), (4, 10), 0, 20)
    logit_diff, pattern_diff = _max_diffs(from_transformer_lens(tl_model), tl_model, tokens)
    assert logit_diff < 1e-4 and pattern_diff < 1e-5


def test_imported_model_has_transformer_lens_composition_scores(tl_model):
    from induction_jax.interop import from_transformer_lens

    params = jax.tree.map(jnp.asarray, stacked_params(from_transformer_lens(tl_model), ensemble=False))
    ours = circuits.composition_scores(params)
    for mode in "QKV":
        theirs = tl_model.all_composition_scores(mode).detach().numpy()       # [L1, H1, L2, H2]
        mine = ours[f"{mode.lower()}_composition"][0]
        later = ~np.isnan(mine)
        assert np.array_equal(later, theirs != 0)                           # both: layer_B > layer_A
        np.testing.assert_allclose(mine[later], theirs[later], rtol=1e-4)


def _same_multiset(a: np.ndarray, b: np.ndarray, tol: float) -> None:
    """Eigenvalues come in no fixed order: every one of `a` is near one of `b`, and back."""
    dist = np.abs(a[..., :, None] - b[..., None, :])
    scale = np.abs(b).max(-1)[..., None]
    assert (dist.min(-1) <= tol * scale).all() and (dist.min(-2) <= tol * scale).all()


def test_imported_model_has_transformer_lens_eigenvalues(tl_model):
    from induction_jax.analysis.factored import copying_score
    from induction_jax.interop import from_transformer_lens

    params = jax.tree.map(jnp.asarray, stacked_params(from_transformer_lens(tl_model), ensemble=False))
    ov = circuits.ov_copying_scores(params)
    full_ov = (tl_model.W_E @ tl_model.OV @ tl_model.W_U).eigenvalues.detach().numpy()   # [L, H, K]
    _same_multiset(ov["ov_eigenvalues"][0], full_ov, 1e-4)
    np.testing.assert_allclose(ov["ov_copying_score"][0], copying_score(full_ov), atol=1e-5)
    for ours, theirs in ((circuits.OV(params), tl_model.OV), (circuits.QK(params), tl_model.QK)):
        _same_multiset(ours.eigenvalues[0], theirs.eigenvalues.detach().numpy(), 1e-4)


def test_import_refuses_mlps_and_layernorm(tl):
    from induction_jax.interop import from_transformer_lens

    base = dict(n_layers=1, d_model=8, n_ctx=6, d_head=4, n_heads=2, d_vocab=10, device="cpu")
    mlp = tl.HookedTransformer(tl.HookedTransformerConfig(**base, d_mlp=16, act_fn="relu",
                                                          normalization_type=None))
    _one_line_error(from_transformer_lens, mlp, match=r"has MLPs \(attn_only=False, d_mlp=16\); allowed: "
                    r"attention-only")
    ln = tl.HookedTransformerConfig(**base, attn_only=True, normalization_type="LN")
    _one_line_error(from_transformer_lens, tl.HookedTransformer(ln),
                    match=r"has LayerNorm \(normalization_type='LN'\); allowed: .*normalization_type=None")
    _one_line_error(from_transformer_lens, tl.HookedTransformer(ln).state_dict(), match="needs its cfg")


def test_import_warns_on_dropped_biases(tl_model):
    from induction_jax.interop import from_transformer_lens

    state = {k: v.clone() for k, v in tl_model.state_dict().items()}
    state["blocks.0.attn.b_Q"] += 1.0
    with pytest.warns(UserWarning, match=r"dropped nonzero biases \(blocks\.0\.attn\.b_Q\)"):
        params = from_transformer_lens(state, tl_model.cfg)
    assert params["W_Q"].shape == (3, 3, 24, 6)
