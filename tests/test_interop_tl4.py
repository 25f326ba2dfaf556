"""An exported member runs the same in TransformerLens 4 (`TransformerBridge`) as in our forward pass.

TransformerLens 3.x (the `tl` extra, which writes the export) and 4.x cannot share one
environment, so TransformerLens 4 runs in a subprocess with `.tl4/` (made by .ci/run:
`pip install --no-deps --target .tl4 transformer-lens==4.3.0`; its dependencies are the
venv's) first on PYTHONPATH: tests/tl4_probe.py loads each export there and hands back
logits, attention patterns and weights. Skipped when `.tl4/` is missing, except under CI
(`CI` set, or INDUCTION_JAX_REQUIRE_TL4=1 as .ci/run sets), where that is a failure.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from handbuilt import P, V, build
from induction_jax.analysis.weights import WeightsError, stacked_params
from induction_jax.config import ModelConfig
from induction_jax.functional import apply
from induction_jax.interop import export_params, save_transformer_lens
from induction_jax.model import init_params

ROOT = Path(__file__).resolve().parents[1]
TL4 = ROOT / ".tl4"
TL4_VERSION = "4.3.0"
CFG = ModelConfig(d_vocab=16, n_ctx=12, n_layers=2, n_heads=2, d_model=16)
VIEWS = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")

# TransformerLens 3.x (which writes the export) warns that HookedTransformer is deprecated.
pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")


def _tl4_path() -> Path:
    if not (TL4 / "transformer_lens").is_dir():
        if os.environ.get("CI") or os.environ.get("INDUCTION_JAX_REQUIRE_TL4") == "1":
            pytest.fail(f"CI (or INDUCTION_JAX_REQUIRE_TL4=1) is set but {TL4} holds no TransformerLens 4; run: pip "
                        f"install --no-deps --target .tl4 transformer-lens=={TL4_VERSION}", pytrace=False)
        pytest.skip(f"{TL4} missing (pip install --no-deps --target .tl4 transformer-lens=={TL4_VERSION})")
    return TL4


def _our_forward(params: dict, tokens) -> tuple[np.ndarray, np.ndarray]:
    logits, act = apply(jax.tree.map(jnp.asarray, params), jnp.asarray(tokens), return_activations=True)
    return np.asarray(logits), np.asarray(act.pattern_BLHTS)


@pytest.fixture(scope="module")
def probed(tmp_path_factory):
    """Exports written here (TransformerLens 3.x), loaded in one TransformerLens 4 subprocess."""
    tl4 = _tl4_path()
    pytest.importorskip("transformer_lens")            # the `tl` extra writes the export
    tmp = tmp_path_factory.mktemp("tl4")
    members = [init_params(CFG, jax.random.PRNGKey(seed)) for seed in (0, 1)]
    ensemble = stacked_params({k: np.stack([np.asarray(m[k]) for m in members]) for k in members[0]})
    cases = {}
    # member 1 of a 2-member ensemble, through export_params as the command line writes it
    member = {k: v[1] for k, v in ensemble.items()}
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(2), (4, CFG.n_ctx), 0, CFG.d_vocab))
    cases["member"] = (member, export_params(ensemble, 1, "transformer-lens", tmp / "member", model_cfg=CFG),
                       tokens)
    # the hand-built induction circuit: d_head (65) != d_model / n_heads (104), sharp patterns
    half = jax.vmap(lambda k: jax.random.permutation(k, V)[:P])(jax.random.split(jax.random.PRNGKey(3), 4))
    hand = build()
    cases["hand"] = (hand, save_transformer_lens(hand, None, tmp / "hand"),
                     np.asarray(jnp.concatenate([half, half], axis=1)))
    # refused: a folder that is not an export, and an export whose config asks for LayerNorm
    (tmp / "empty").mkdir()
    shutil.copytree(tmp / "member", tmp / "layernorm")
    config = json.loads((tmp / "layernorm" / "config.json").read_text())
    (tmp / "layernorm" / "config.json").write_text(json.dumps(config | {"normalization_type": "LN"}))
    shutil.copytree(tmp / "member", tmp / "unknown")
    (tmp / "unknown" / "config.json").write_text(json.dumps(config | {"no_such_field": 1}))
    # the same member written under TransformerLens 4 (which has no HookedTransformer), then loaded there
    np.savez(tmp / "member_params.npz", **member)
    jobs = [f"export=written4={tmp / 'member_params.npz'}={tmp / 'written4'}"]
    cases["written4"] = (member, tmp / "written4", tokens)
    for name, (_, folder, toks) in cases.items():
        np.save(tmp / f"{name}.npy", toks)
        jobs.append(f"load={name}={folder}={tmp / f'{name}.npy'}")
    jobs += [f"load={name}={tmp / name}={tmp / 'member.npy'}" for name in ("empty", "layernorm", "unknown")]
    jobs.append(f"load3=hooked={tmp / 'member'}=-")
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(tl4), str(ROOT)])}
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "tl4_probe.py"), str(tmp / "result.npz"), *jobs],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp / "result.npz") as f:
        result = dict(f)
    return cases, result, tmp


def test_the_subprocess_ran_transformer_lens_4(probed):
    _, result, _ = probed
    meta = json.loads(str(result["_meta"]))
    assert meta["version"] == TL4_VERSION
    assert Path(meta["file"]).resolve().is_relative_to(TL4.resolve())


@pytest.mark.parametrize("case", ["member", "hand", "written4"])
def test_exported_member_runs_the_same_in_transformer_lens_4(probed, case):
    cases, result, _ = probed
    params, _, tokens = cases[case]
    logits, pattern = _our_forward(params, tokens)
    assert f"{case}/error" not in result, str(result.get(f"{case}/error"))
    np.testing.assert_allclose(result[f"{case}/logits"], logits, rtol=0, atol=1e-5)
    np.testing.assert_allclose(result[f"{case}/pattern"], pattern, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(result[f"{case}/pattern_alias"], result[f"{case}/pattern"])


def test_transformer_lens_4_sees_our_weights(probed):
    """Its HookedTransformer-style views (`model.W_Q [L,H,D,K]`, ...) are our arrays exactly."""
    cases, result, _ = probed
    for case in ("member", "hand", "written4"):
        params = cases[case][0]
        for name in VIEWS:
            np.testing.assert_array_equal(result[f"{case}/{name}"], np.asarray(params[name], np.float32))


def test_export_written_under_transformer_lens_4_is_the_3x_export(probed):
    """Written where HookedTransformer is gone, the folder holds the same config and the same
    state dict, key for key and bit for bit (3.x's buffers included), so it loads strictly in 3.x."""
    import torch

    _, result, tmp = probed
    assert "written4/error" not in result, str(result.get("written4/error"))
    three, four = tmp / "member", tmp / "written4"
    assert sorted(p.name for p in four.iterdir()) == ["config.json", "state_dict.pt"]
    assert json.loads((four / "config.json").read_text()) == json.loads((three / "config.json").read_text())
    old, new = (torch.load(d / "state_dict.pt", weights_only=True) for d in (three, four))
    assert sorted(new) == sorted(old)
    for key in old:
        assert new[key].dtype == old[key].dtype and torch.equal(new[key], old[key]), key


def test_transformer_lens_4_load_refuses_what_is_not_an_export(probed):
    _, result, tmp = probed
    empty, layernorm, unknown = (str(result[f"{name}/error"]) for name in ("empty", "layernorm", "unknown"))
    assert empty == f"{tmp / 'empty'}: no config.json (not a TransformerLens export directory)"
    assert "has LayerNorm (normalization_type='LN'); allowed: attention-only" in layernorm
    assert unknown == ("config.json: key 'no_such_field' is not a TransformerBridgeConfig field in TransformerLens "
                       f"{TL4_VERSION}; this export was written for another version")
    hooked = str(result["hooked/error"])
    assert hooked.startswith(f"HookedTransformer is gone in TransformerLens {TL4_VERSION}: load an export with "
                             f"load_transformer_lens4")
    assert "\n" not in empty + layernorm + unknown + hooked


def test_transformer_lens_4_load_needs_version_4():
    """In this environment (3.x, or none) the 4.x loader says what it needs, in one line."""
    from induction_jax.interop import MissingDependency, load_transformer_lens4

    with pytest.raises(MissingDependency) as e:
        load_transformer_lens4(ROOT)
    assert isinstance(e.value, WeightsError) and "\n" not in str(e.value)
    assert "needs TransformerLens 4.x" in str(e.value) or "needs torch and transformer-lens 4.x" in str(e.value)
