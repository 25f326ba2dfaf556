"""A new kind of intervention is one function in a test file: no edit of the package."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from induction_jax import ensemble, interventions
from induction_jax.functional import apply
from induction_jax.members import Members
from induction_jax.model import init_params


@pytest.fixture
def scale():
    """`scale:LxHy:a`: the head's output times 1 - a/2 (a = 1 halves it), as one function."""

    @interventions.per_head("scale", "z", strength=True)
    def scale_head(z_BHTK, a_H, at):
        return z_BHTK * (1.0 - 0.5 * a_H)[None, :, None, None]

    yield scale_head
    interventions.unregister("scale")


def test_a_kind_defined_in_one_function_parses_acts_at_its_site_and_trains(scale, small_cfg):
    cfg = small_cfg.replace(steps=40, eval_every=20, chunk_steps=40, seeds=2)
    assert "scale:LxHy:a" in interventions.spec.syntax()
    iv = interventions.build(["none", "scale:L1H2:1.0@0-20"], cfg)
    assert dict(iv.sites) == {"scale": (1,)}
    params = init_params(cfg.model, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, cfg.model.n_ctx), 0, cfg.model.d_vocab)
    _, plain = apply(params, tokens, return_activations=True)
    member = jax.tree.map(lambda x: jnp.asarray(x[1]), iv)
    for step, factor in ((10, 0.5), (20, 1.0)):          # inside its window, then after it
        edits, freeze = interventions.active(member, step)
        assert freeze is None
        _, acts = apply(params, tokens, return_activations=True, edits=edits)
        np.testing.assert_allclose(acts.head_out_BLTHD[:, 1, :, 2], factor * plain.head_out_BLTHD[:, 1, :, 2],
                                   rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(acts.head_out_BLTHD[:, 0], plain.head_out_BLTHD[:, 0])
    # errors name the kind's own syntax
    with pytest.raises(interventions.InterventionError, match=r"write scale:LxHy\[:a\]"):
        interventions.build(["scale:L1H2:0.5:7"], cfg)
    # and it trains beside the other kinds, in one compiled program: the member whose arm is
    # `none` ends as the plain member of the same seeds
    members = Members.grid(cfg, arms=["none", "scale:L1H2:1.0@0-20+ablate:L0H0"])
    state = ensemble.train(cfg, ensemble.init_ensemble(cfg, members), 0)
    plain_members = Members.grid(cfg, arms=["none"])
    plain_state = ensemble.train(cfg, ensemble.init_ensemble(cfg, plain_members), 0)
    for name in plain_state.params:
        np.testing.assert_allclose(state.params[name][:2], plain_state.params[name], rtol=2e-4, atol=2e-5)
        assert not np.allclose(state.params[name][2:], plain_state.params[name])


def test_an_edit_class_reaches_the_pass_without_a_kind():
    """The mechanism under the kinds: any `Edit` at a named site, here the keys' input."""
    import dataclasses

    from induction_jax.config import ModelConfig
    from induction_jax.functional import Edit

    @dataclasses.dataclass(frozen=True)
    class ZeroKeysInput(Edit):
        layers: tuple = (1,)
        site = "attn_in"

        def __call__(self, x_BTD, at):
            return jnp.zeros_like(at.resid_BTD) if at.qkv == 1 else x_BTD     # None: the plain input

    cfg = ModelConfig(d_vocab=16, n_ctx=12, n_layers=2, n_heads=2, d_model=16)
    params = init_params(cfg, jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 0, 16)
    _, plain = apply(params, tokens, return_activations=True)
    _, acts = apply(params, tokens, return_activations=True, edits=[ZeroKeysInput()])
    T = tokens.shape[1]
    uniform = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]     # equal scores: uniform over the past
    np.testing.assert_allclose(acts.pattern_BLHTS[:, 1], np.broadcast_to(uniform, acts.pattern_BLHTS[:, 1].shape),
                               atol=1e-6)
    np.testing.assert_array_equal(acts.pattern_BLHTS[:, 0], plain.pattern_BLHTS[:, 0])
