"""SGLD draws from the localised tempered posterior around a parameter snapshot w*.

The posterior is p(w) ~ exp(-n_beta L_n(w) - gamma/2 ||w - w*||^2). One step, on a minibatch
of m of the n items:

    w <- w - (eps / 2) (n_beta grad L_m(w) + gamma (w - w*)) + N(0, eps)

A chain is a pure function of its key (one `lax.scan`); `sample` is `vmap` of it over chains,
and composes with `jit`/`vmap` over members, snapshots or step sizes. `sample_batch` is the
compiled entry the commands use: every chain of many settings (model, step size, gamma) on
one axis, sharded over the devices and run as training runs its members (`lax.map` on a
CPU, `vmap` on an accelerator: `memory.member_loop`), so a whole grid of estimates is one
compiled program with no per-chain Python loop, and one estimate's chains use every core.

With `sampler="rmsprop-sgld"` the step is preconditioned per weight, as devinterp 2.0.1's
`SGMCMC.rmsprop_sgld` does it (its defaults alpha 0.99, stability constant 0.1):

    v <- alpha v + (1 - alpha) g^2,   G = 1 / (sqrt(v) + RMS_EPS),   g = grad L_m(w)
    w <- w - (eps / 2) G (n_beta g + gamma (w - w*)) + N(0, eps G)

v starts at 0 and lives in the scan's carry, so the chain stays a pure function of its key.
Like devinterp it omits the divergence correction of a state-dependent preconditioner (G
changes slowly once v has settled), so it targets the same posterior only approximately;
weights whose gradients are small get steps up to 1 / RMS_EPS = 10x eps, which is what lets
it mix at a small gamma, where plain SGLD with a step small enough for the stiff directions
barely moves the soft ones.

The trace records the *minibatch* loss L_m(w_t) at the state before step t (as devinterp
does), not L_n(w_t). The batch of step t is drawn from `fold_in(key, t)`, independently of
w_t (which depends only on earlier batches), so E[L_m(w_t) | w_t] = L_n(w_t) exactly: the
trace mean is an unbiased estimate of E[L_n(w)] along the chain. It costs nothing (the value
comes with the gradient), where L_n at every draw would cost n/m extra forward passes per
step; the price is extra per-draw variance, which averages out over the draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from induction_jax import ensemble
from induction_jax.config import ConfigError, check_fields, config_field
from induction_jax.memory import member_loop

LossFn = Callable[[Any, Any], jax.Array]
SAMPLERS = ("sgld", "rmsprop-sgld")
RMS_ALPHA = 0.99    # RMSProp-SGLD: decay of the running mean of squared gradients (devinterp's default)
RMS_EPS = 0.1       # RMSProp-SGLD: stability constant in G = 1 / (sqrt(v) + RMS_EPS) (devinterp's default)


@dataclass(frozen=True)
class SGLDConfig:
    """SGLD for the local learning coefficient.

    The defaults were chosen by measurement (experiments/llc_calibration.py, docs/studies/llc-stages.md): on the
    default model at initialisation, in the middle of the phase change and at the end of
    training, the estimate is stable (no flagged chain or drift at eps/2, eps, 2 eps, the three
    within 10%) for eps 7.5e-5 to 1.5e-4 at gamma 1000 at all three, and at no eps at gamma 100
    once trained (the chains wander off w*: the mean loss doubles). 250 draws with 80 burned
    in showed no drift there. The estimate is that of the posterior localised at gamma, not
    of w* alone (a direction of curvature c counts fully only when n_beta c >> gamma): see
    docs/definitions.md, and `diagnostics.gamma_sensitivity` / `--gamma auto` to measure it.
    """

    eps: float = config_field(1e-4, "SGLD step size (the noise variance per step)", lo=0.0, hi=1e6,
                        lo_open=True)
    gamma: float = config_field(1000.0, "localisation strength: the pull toward w* (0 = none)", lo=0.0, hi=1e12)
    n_beta: float = config_field(0.0, "inverse temperature times n; 0 = n / ln n for the n dataset items",
                           lo=0.0, hi=1e15)
    chains: int = config_field(4, "independent chains, all started at w*", lo=1, hi=1_000_000)
    draws: int = config_field(250, "SGLD steps per chain, each recording one loss (burn-in included)",
                        lo=1, hi=100_000_000)
    burn_in: int = config_field(80, "first draws of each chain discarded by the estimators", lo=0, hi=100_000_000)
    batch_size: int = config_field(64, "minibatch size m, drawn without replacement from the n items at "
                             "every step; must be <= n", lo=1, hi=100_000_000)
    sampler: str = config_field("sgld", "sgld, or rmsprop-sgld (per-weight preconditioned steps, as devinterp's "
                          "SGMCMC.rmsprop_sgld)", choices=SAMPLERS)

    def __post_init__(self):
        check_fields(self)
        if self.draws <= self.burn_in:
            raise ConfigError(f"draws={self.draws}: must be > burn_in={self.burn_in}")

    def check_items(self, n: int) -> None:
        """Raise a one-line `ConfigError` if this config cannot sample from n items."""
        need = max(self.batch_size, 2 if self.n_beta == 0 else 1)
        if n >= need:
            return
        if self.batch_size > n:
            smaller = f", or --batch-size 1..{n}" if n >= max(1, 2 if self.n_beta == 0 else 1) else ""
            raise ConfigError(f"--n {n} (dataset items) with --batch-size {self.batch_size}: each SGLD step draws "
                              f"batch_size items from the n without replacement; allowed: --n >= {need}{smaller}")
        raise ConfigError(f"--n {n} (dataset items): n_beta = n / ln n (the default, no --n-beta) needs n >= 2; "
                          f"allowed: --n >= 2, or give --n-beta")

    def n_beta_for(self, n: int) -> float:
        """The inverse temperature: `n_beta`, or n / ln n when it is 0."""
        return self.n_beta or n / math.log(n)


class ChainResult(NamedTuple):
    """One chain's record, one entry per draw ([draws]; [chains, draws] from `sample`)."""

    loss: jax.Array      # minibatch loss L_m(w_t) at the state before step t (t = 0 is w*)
    sq_dist: jax.Array   # ||w_t - w*||^2 over all parameters, at the same state


class SampleResult(NamedTuple):
    """`sample`'s output: the chains and the constants the estimators and diagnostics need."""

    chains: ChainResult   # leaves [chains, draws]
    init_loss: jax.Array  # L_n(w*) on the full dataset
    n_beta: jax.Array
    gamma: jax.Array
    eps: jax.Array
    n_free: jax.Array     # number of weights the chains move (the masked-in count), float


def num_items(dataset) -> int:
    sizes = {x.shape[0] for x in jax.tree.leaves(dataset)}
    if len(sizes) != 1:
        raise ConfigError(f"dataset: every leaf must share the leading item axis, got sizes {sorted(sizes)}")
    return sizes.pop()


def _moves(w_star, mask):
    """The boolean pytree of weights a chain may move (None = all), broadcast to the params."""
    if mask is None:
        return None
    return jax.tree.map(lambda p, mk: jnp.broadcast_to(jnp.asarray(mk) != 0, p.shape), w_star, mask)


def n_free(w_star, mask=None) -> jax.Array:
    """How many weights the chains move."""
    moves = _moves(w_star, mask)
    if moves is None:
        return jnp.float32(sum(p.size for p in jax.tree.leaves(w_star)))
    return sum(jnp.sum(m, dtype=jnp.float32) for m in jax.tree.leaves(moves))


def full_loss(loss_fn: LossFn, params, dataset, chunk: int) -> jax.Array:
    """L_n(params): the mean loss over all n items, in equal chunks of `chunk` when they divide n
    (the mean of equal-sized chunk means is the mean; chunks bound the memory of a large n)."""
    n = num_items(dataset)
    if chunk >= n or n % chunk:
        return loss_fn(params, dataset)
    chunks = jax.tree.map(lambda x: x.reshape(n // chunk, chunk, *x.shape[1:]), dataset)
    return jnp.mean(jax.lax.map(lambda b: loss_fn(params, b), chunks))


def sgld_chain(key, loss_fn: LossFn, w_star, dataset, cfg: SGLDConfig, mask=None, eps=None,
               gamma=None) -> ChainResult:
    """One chain of `cfg.draws` SGLD steps from w*, as one `lax.scan`.

    `loss_fn(params, batch)` is the mean loss over a batch; `dataset` a pytree of arrays with a
    leading axis of n items. `mask` (optional) has the structure of the params with 0/1 leaves
    broadcastable to them: only masked-in weights move (drift and noise both), the rest stay
    exactly at w* (the refined LLC of one head or layer). `eps` overrides `cfg.eps` and may be
    traced, so a caller can `vmap` over step sizes (a traced eps is not validated: keep it > 0);
    `gamma` likewise overrides `cfg.gamma` (keep it >= 0). `cfg.sampler` picks plain SGLD or
    RMSProp-SGLD (module docstring).
    """
    n = num_items(dataset)
    cfg.check_items(n)
    m = cfg.batch_size
    eps = cfg.eps if eps is None else eps
    gamma = cfg.gamma if gamma is None else gamma
    n_beta = cfg.n_beta_for(n)
    noise_sd = jnp.sqrt(eps)
    rms = cfg.sampler == "rmsprop-sgld"
    moves = _moves(w_star, mask)

    leaves, treedef = jax.tree.flatten(w_star)
    offsets = np.cumsum([0] + [p.size for p in leaves])
    n_draw = int(offsets[-1]) + (n if m < n else 0)

    def unflatten(z):
        return treedef.unflatten([z[a:b].reshape(p.shape).astype(p.dtype)
                                  for a, b, p in zip(offsets[:-1], offsets[1:], leaves)])

    def minibatch(z_n):
        if m == n:      # the whole dataset: no need to permute it
            return dataset
        # The m largest of n iid normals: every m-subset is equally likely (exchangeability);
        # `top_k` is several times faster on a CPU than the sort inside `random.choice(replace=False)`.
        idx = jax.lax.top_k(z_n, m)[1]
        return jax.tree.map(lambda x: x[idx], dataset)

    def step(state, t):
        w, v = state
        # One normal draw per step gives the noise and the batch: XLA compiles a vmapped
        # threefry call slowly, and a transformer has many leaves.
        z = jax.random.normal(jax.random.fold_in(key, t), (n_draw,), jnp.float32)
        loss, grads = jax.value_and_grad(loss_fn)(w, minibatch(z[int(offsets[-1]):]))
        sq_dist = sum(jnp.sum(jnp.square(p - p0)) for p, p0 in zip(jax.tree.leaves(w), leaves))
        if rms:
            v = jax.tree.map(lambda a, g: RMS_ALPHA * a + (1 - RMS_ALPHA) * jnp.square(g), v, grads)
            delta = jax.tree.map(
                lambda p, p0, g, zp, a: (lambda G: -0.5 * eps * G * (n_beta * g + gamma * (p - p0))
                                         + jnp.sqrt(eps * G) * zp)(1.0 / (jnp.sqrt(a) + RMS_EPS)),
                w, w_star, grads, unflatten(z), v)
        else:
            delta = jax.tree.map(lambda p, p0, g, zp: -0.5 * eps * (n_beta * g + gamma * (p - p0)) + noise_sd * zp,
                                 w, w_star, grads, unflatten(z))
        if moves is not None:
            # `where`, not a product: a non-finite gradient of a frozen weight must not leak in.
            delta = jax.tree.map(lambda d, mv: jnp.where(mv, d, jnp.zeros_like(d)), delta, moves)
        w = jax.tree.map(lambda p, d: p + d, w, delta)
        return (w, v), ChainResult(loss, sq_dist)

    v0 = jax.tree.map(jnp.zeros_like, w_star) if rms else None
    _, trace = jax.lax.scan(step, (w_star, v0), jnp.arange(cfg.draws))
    return trace


def sample(key, loss_fn: LossFn, w_star, dataset, cfg: SGLDConfig, mask=None, eps=None,
           gamma=None) -> SampleResult:
    """`cfg.chains` chains (chain c uses `jax.random.split(key, chains)[c]`), vmapped, plus L_n(w*).

    Pure and traceable: `jax.jit(jax.vmap(...))` over w_star and dataset (members, snapshots)
    or over `eps` or `gamma` works as for any JAX function, with `loss_fn` and `cfg` static.
    """
    n = num_items(dataset)
    cfg.check_items(n)
    eps = cfg.eps if eps is None else eps
    gamma = cfg.gamma if gamma is None else gamma
    keys = jax.random.split(key, cfg.chains)
    chains = jax.vmap(lambda k: sgld_chain(k, loss_fn, w_star, dataset, cfg, mask, eps, gamma))(keys)
    return SampleResult(chains, full_loss(loss_fn, w_star, dataset, cfg.batch_size),
                        jnp.float32(cfg.n_beta_for(n)), jnp.asarray(gamma, jnp.float32),
                        jnp.asarray(eps, jnp.float32), n_free(w_star, mask))


class Unit(NamedTuple):
    """One chain of `sample_batch`: model `model` of the stacked models, its key, eps and gamma."""

    key: jax.Array
    model: jax.Array
    eps: jax.Array
    gamma: jax.Array


def _take(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


@dataclass(frozen=True)
class _UnitChain:
    """`sgld_chain` of one `Unit` (hashable, so `ensemble.map_axis` reuses its compiled program)."""

    loss_fn: LossFn
    cfg: SGLDConfig

    def __call__(self, u: Unit, params_N, data_N, mask):
        return sgld_chain(u.key, self.loss_fn, _take(params_N, u.model), _take(data_N, u.model), self.cfg, mask,
                          u.eps, u.gamma)


@dataclass(frozen=True)
class _ModelLoss:
    """L_n of one stacked model (hashable, as `_UnitChain`)."""

    loss_fn: LossFn
    chunk: int

    def __call__(self, j, params_N, data_N):
        return full_loss(self.loss_fn, _take(params_N, j), _take(data_N, j), self.chunk)


def sample_batch(key_M, loss_fn: LossFn, params_N, data_N, cfg: SGLDConfig, model_M=None, eps_M=None,
                 gamma_M=None, mask=None, loop: str | None = None) -> SampleResult:
    """`sample` for M settings at once; leaves of the result get a leading [M].

    Setting i samples model `model_M[i]` of the stacked `params_N` and `data_N` (default: model
    i) with key `key_M[i]` (chain c uses `split(key_M[i], chains)[c]`, as `sample`) at
    `eps_M[i]` and `gamma_M[i]` (default: the config's). All M x chains chains are one axis
    of one compiled call (`ensemble.map_axis`, `loop` as `memory.member_loop`, default its
    rule for this backend); L_n(w*) is computed once per model. The same numbers as `sample`
    per setting, to float rounding."""
    loop = loop or member_loop()
    M, C = len(key_M), cfg.chains
    n_models = jax.tree.leaves(params_N)[0].shape[0]
    n = jax.tree.leaves(data_N)[0].shape[1]
    cfg.check_items(n)
    model_M = jnp.arange(M, dtype=jnp.int32) if model_M is None else jnp.asarray(model_M, jnp.int32)
    eps_M = jnp.full((M,), cfg.eps, jnp.float32) if eps_M is None else jnp.asarray(eps_M, jnp.float32)
    gamma_M = jnp.full((M,), cfg.gamma, jnp.float32) if gamma_M is None else jnp.asarray(gamma_M, jnp.float32)
    rep = lambda x: jnp.repeat(x, C, 0)      # noqa: E731
    units = Unit(jax.vmap(lambda k: jax.random.split(k, C))(jnp.asarray(key_M)).reshape(M * C, -1),
                 rep(model_M), rep(eps_M), rep(gamma_M))
    chains = ensemble.map_axis(loop, _UnitChain(loss_fn, cfg), units, params_N, data_N, mask)
    chains = jax.tree.map(lambda x: x.reshape(M, C, *x.shape[1:]), chains)
    init_N = ensemble.map_axis(loop, _ModelLoss(loss_fn, cfg.batch_size), jnp.arange(n_models, dtype=jnp.int32),
                               params_N, data_N)
    free = n_free(_take(params_N, 0), mask)
    return SampleResult(chains, init_N[model_M], jnp.full((M,), cfg.n_beta_for(n), jnp.float32), gamma_M, eps_M,
                        jnp.full((M,), free, jnp.float32))
