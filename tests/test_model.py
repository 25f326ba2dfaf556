import jax
import jax.numpy as jnp
import numpy as np
import pytest

from induction_jax.config import ModelConfig
from induction_jax.model import forward, init_params

CFG = ModelConfig(d_vocab=16, n_ctx=12, n_layers=2, n_heads=2, d_model=16)


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


def tokens(batch=3, P=6):
    """Random halves repeated once `[batch, 2P]` (made here: the model's tests need no task)."""
    half = jax.random.randint(jax.random.PRNGKey(1), (batch, P), 0, CFG.d_vocab)
    return jnp.concatenate([half, half], axis=1)


def test_circuit_layout_shapes(params):
    L, H, D, K, V = 2, 2, 16, 8, 16
    shapes = {k: v.shape for k, v in params.items()}
    assert shapes == {"W_E": (V, D), "W_pos": (12, D), "W_Q": (L, H, D, K), "W_K": (L, H, D, K),
                      "W_V": (L, H, D, K), "W_O": (L, H, K, D), "W_U": (D, V)}
    n_params = sum(v.size for v in jax.tree.leaves(init_params(ModelConfig(), jax.random.PRNGKey(0))))
    assert n_params == 44_160           # the reference model: about 44k parameters


def test_forward_shapes_and_activations(params):
    x = tokens()
    logits, acts = forward(CFG, params, x, return_activations=True)
    assert logits.shape == (3, 12, 16)
    assert acts.pattern_BLHTS.shape == (3, 2, 2, 12, 12)
    assert acts.head_out_BLTHD.shape == (3, 2, 12, 2, 16)
    np.testing.assert_allclose(acts.pattern_BLHTS.sum(-1), 1.0, rtol=1e-5)
    assert float(jnp.abs(jnp.triu(acts.pattern_BLHTS, 1)).max()) == 0.0     # causal
    # The residual stream is the embedding plus every head's output; logits read it out.
    resid = acts.resid_pre_BLTD[:, 0] + acts.head_out_BLTHD.sum((1, 3))
    np.testing.assert_allclose(resid @ params["W_U"], logits, atol=1e-5)
    np.testing.assert_allclose(forward(CFG, params, x), logits, atol=1e-6)


def _loss_at(cfg, params, onehot_BTV, targets_BT, t):
    logp = jax.nn.log_softmax(forward(cfg, params, onehot_BTV)[0, t])
    return -logp[targets_BT[0, t + 1]]


@pytest.mark.parametrize("kw", [{}, {"d_mlp": 32, "layer_norm": True}])
def test_causality_loss_at_t_has_zero_gradient_wrt_later_inputs(kw):
    cfg = ModelConfig(d_vocab=16, n_ctx=12, n_layers=2, n_heads=2, d_model=16, **kw)
    p = init_params(cfg, jax.random.PRNGKey(0))
    x = tokens(batch=1)
    onehot = jax.nn.one_hot(x, cfg.d_vocab)
    np.testing.assert_allclose(forward(cfg, p, onehot), forward(cfg, p, x), atol=1e-5)
    for t in (0, 4, 9):
        g = jax.grad(_loss_at, argnums=2)(cfg, p, onehot, x, t)
        assert float(jnp.abs(g[0, t + 1:]).max()) == 0.0
        assert float(jnp.abs(g[0, : t + 1]).max()) > 0.0


def test_jit_equals_eager(params):
    x = tokens()
    eager = forward(CFG, params, x)
    jitted = jax.jit(lambda p, t: forward(CFG, p, t))(params, x)
    np.testing.assert_allclose(eager, jitted, atol=1e-5, rtol=1e-5)


def test_head_mask_zero_removes_that_heads_output(params):
    x = tokens()
    logits, acts = forward(CFG, params, x, return_activations=True)
    mask = jnp.ones((2, 2)).at[1, 0].set(0.0)
    masked = forward(CFG, params, x, head_mask_LH=mask)
    # Removing a last-layer head subtracts exactly its direct contribution.
    np.testing.assert_allclose(masked, logits - acts.head_out_BLTHD[:, 1, :, 0] @ params["W_U"], atol=1e-5)


@pytest.mark.parametrize("kw", [{"d_mlp": 32}, {"layer_norm": True}, {"d_mlp": 32, "layer_norm": True}])
def test_options_mlp_and_layernorm_run_and_stay_causal(kw):
    cfg = ModelConfig(d_vocab=16, n_ctx=12, n_layers=2, n_heads=2, d_model=16, **kw)
    p = init_params(cfg, jax.random.PRNGKey(0))
    x = tokens()
    base = forward(cfg, p, x)
    assert base.shape == (3, 12, 16) and bool(jnp.all(jnp.isfinite(base)))
    changed = forward(cfg, p, x.at[:, 8:].set(0))
    np.testing.assert_allclose(base[:, :8], changed[:, :8], atol=1e-5)


def test_attention_core_backward_equals_autodiff():
    """The hand-written backward of the attention core is autodiff's gradient, for cotangents
    on both the output and the pattern."""
    from induction_jax import functional

    keys = jax.random.split(jax.random.PRNGKey(3), 5)
    q, k, v = (jax.random.normal(key, (3, 2, 9, 5)) for key in keys[:3])
    dz = jax.random.normal(keys[3], (3, 2, 9, 5))
    dpattern = jax.random.normal(keys[4], (3, 2, 9, 9))

    def objective(core):
        def f(q, k, v):
            z, pattern = core(q, k, v)
            return (z * dz).sum() + (pattern * dpattern).sum()
        return f

    ours = jax.grad(objective(functional.attention_core), argnums=(0, 1, 2))(q, k, v)
    autodiff = jax.grad(objective(functional._attention_core_fwd), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(ours, autodiff):
        assert float(jnp.abs(b).max()) > 1e-3
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
