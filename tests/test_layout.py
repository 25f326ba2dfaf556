"""The parameter layout, described once (`induction_jax.layout`), and what derives from it."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest

from induction_jax import interventions, layout, memory
from induction_jax.config import ModelConfig
from induction_jax.model import init_params

ARCHS = [{}, {"d_mlp": 24}, {"layer_norm": True}, {"d_mlp": 24, "layer_norm": True}]


@pytest.mark.parametrize("kw", ARCHS)
def test_the_initial_weights_have_the_layouts_names_shapes_and_order(kw):
    model = ModelConfig(d_vocab=16, n_ctx=12, n_layers=3, n_heads=2, d_model=16, **kw)
    params = init_params(model, jax.random.PRNGKey(0))
    assert {k: v.shape for k, v in params.items()} == layout.shapes(model)
    assert list(params) == list(layout.shapes(model))                 # the order the keys are consumed in
    n = sum(v.size for v in params.values())
    assert layout.n_params(model) == n == memory.n_params(SimpleNamespace(model=model))
    assert layout.sizes_of(params) == layout.sizes(model)
    assert layout.extras(params) == {f: layout.MARKER[f] for f in layout.features(model)}
    for name, value in params.items():
        p = layout.BY_NAME[name]
        if p.init != "normal":
            np.testing.assert_array_equal(value, 1.0 if p.init == "ones" else 0.0)


def test_the_freeze_groups_are_the_layouts_per_head_per_layer_and_whole_parameters():
    model = ModelConfig(d_vocab=16, n_ctx=12, n_layers=3, n_heads=2, d_model=16, d_mlp=24, layer_norm=True)
    groups = interventions.freeze_groups(model)
    assert groups == {"W_E": (), "W_pos": (), "W_Q": (3, 2), "W_K": (3, 2), "W_V": (3, 2), "W_O": (3, 2), "W_U": (),
                      "W_in": (3,), "W_out": (3,), "ln1_w": (3,), "ln1_b": (3,), "lnf_w": (), "lnf_b": (),
                      "ln2_w": (3,), "ln2_b": (3,)}
    assert set(interventions.freeze_groups(ModelConfig())) == {"W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U"}


def test_the_attention_only_model_is_the_layout_without_optional_parts():
    assert [p.name for p in layout.present(())] == ["W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U"]
    assert layout.MARKER == {"mlp": "W_in", "layer_norm": "ln1_w"}
    assert layout.extras(["W_E", "W_Q"]) == {}
    # every optional parameter belongs to some optional part, and each part has a marker
    assert all(set(p.needs) <= set(layout.FEATURES) for p in layout.LAYOUT)
    assert {p.name for p in layout.LAYOUT if not p.needs} == {p.name for p in layout.present(())}
