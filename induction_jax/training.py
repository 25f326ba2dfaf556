"""Training: a whole run is a pure function of its seeds; an ensemble is `vmap` of it.

Keys are split by purpose at the top: the initial weights from `init_seed`, the training
batches from `data_seed` (the batch of step `s` is drawn from `fold_in(data_key, s)`), the
probe batch from the shared `probe_seed` (or, with `per_member_probes`, from `data_seed`).
So member (a, b) of any ensemble, chunked or resumed in any way, sees exactly the numbers
of the single run with init seed a and data seed b.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from induction_jax import model as model_lib
from induction_jax.config import RunConfig
from induction_jax.interventions import active
from induction_jax.probes import head_probe_metrics, probe_metrics


class MemberState(NamedTuple):
    """Everything one member's training carries; an ensemble stacks it on a leading axis."""

    params: dict
    opt_state: optax.OptState
    step: jax.Array            # int32, steps done
    data_key: jax.Array
    probe_key: jax.Array
    diverged_step: jax.Array   # int32, -1 while healthy; else the step whose loss or grads diverged
    intervention: object = None  # interventions.Intervention (this member's arrays) or None
    task_params: object = None   # this member's task parameters {name: scalar}; None: the task's defaults


def optimizer(cfg: RunConfig) -> optax.GradientTransformation:
    """AdamW with lr and weight decay held in the state, so they may differ per member."""
    t = cfg.train
    return optax.inject_hyperparams(optax.adamw)(learning_rate=t.lr, weight_decay=t.weight_decay,
                                                 b1=t.b1, b2=t.b2, eps=t.eps)


INIT, DATA, PROBE = 0, 1, 2         # what a key split from a seed is for


def seed_key(seed, purpose: int) -> jax.Array:
    """Purpose `INIT`, `DATA` or `PROBE` of the three-way split of a seed's key."""
    return jax.random.split(jax.random.PRNGKey(seed), 3)[purpose]


def member_keys(cfg: RunConfig, init_seed: jax.Array, data_seed: jax.Array):
    """`(init_key, data_key, probe_key)`: each from its own seed. With init_seed = data_seed = s
    and per-member probes these are the three keys of seed s."""
    probe_seed = data_seed if cfg.data.per_member_probes else jnp.uint32(cfg.data.probe_seed)
    return seed_key(init_seed, INIT), seed_key(data_seed, DATA), seed_key(probe_seed, PROBE)


# `fold_in(data_key, MEMBER_DATA)` draws what the task fixes for a member over its whole training
# (`Task.member_data`); the batch of step s is `fold_in(data_key, s)`, and no step reaches this.
MEMBER_DATA = 2**32 - 1
# `fold_in(data_key, FIXED_PARAMS)` draws the model parameters the task fixes (`Task.fixed_params`).
FIXED_PARAMS = 2**32 - 3


def member_task_params(cfg: RunConfig, data_key: jax.Array, task_params=None) -> dict | None:
    """What the task receives for a member (in `sample` and `probe`): its task parameters
    (None: the task's defaults) and the arrays the task fixes for it over its whole training
    (`Task.member_data`, e.g. its finite set of transition matrices), drawn once from its data
    key. None where there is neither (a run written before tasks were a parameter)."""
    given = dict(task_params or {})
    fixed = cfg.task.member_data(jax.random.fold_in(data_key, MEMBER_DATA),
                                 {**cfg.task.default_member_params(), **given})
    return {**given, **fixed} if (given or fixed) else None


@functools.lru_cache(maxsize=8)
def shared_arrays(cfg: RunConfig) -> dict:
    """The task's arrays shared by every member (`Task.shared_data`), as device arrays (uncommitted,
    so each compiled program places them replicated). The compiled programs take them as an
    argument; a caller that passes none gets these (then constants of its program)."""
    return {k: jnp.asarray(v) for k, v in cfg.task.shared_data(cfg.model).items()}


def task_inputs(cfg: RunConfig, task_params, shared=None) -> dict:
    """What `sample` and `probe` receive as `params`: the member's task parameters and fixed
    data, and the arrays shared by every member (`shared`; None: `shared_arrays(cfg)`)."""
    return {**(task_params or {}), **(shared_arrays(cfg) if shared is None else shared)}


def init_member(cfg: RunConfig, init_seed: jax.Array, data_seed: jax.Array, lr: jax.Array,
                weight_decay: jax.Array, intervention=None, task_params=None) -> MemberState:
    init_key, data_key, probe_key = member_keys(cfg, init_seed, data_seed)
    task_params = member_task_params(cfg, data_key, task_params)
    params = with_fixed_params(cfg, model_lib.init_params(cfg.model, init_key), data_key, task_params)
    opt_state = optimizer(cfg).init(params)
    opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    opt_state.hyperparams["weight_decay"] = jnp.asarray(weight_decay, jnp.float32)
    return MemberState(params, opt_state, jnp.int32(0), data_key, probe_key, jnp.int32(-1), intervention,
                       task_params)


def with_fixed_params(cfg: RunConfig, params: dict, data_key: jax.Array, task_params=None) -> dict:
    """`params` with the parameters the task fixes for this member (`Task.fixed_params`, drawn from
    `fold_in(data_key, FIXED_PARAMS)`) in place of their random initialisation."""
    names = cfg.task.fixed_param_names
    if not names:
        return params
    fixed = cfg.task.fixed_params(jax.random.fold_in(data_key, FIXED_PARAMS), task_params or {}, cfg.model)
    if set(fixed) != set(names):
        raise ValueError(f"task {cfg.task.name}: fixed_params gave {sorted(fixed)}, fixed_param_names says {sorted(names)}")
    for k, v in fixed.items():
        if v.shape != params[k].shape:
            raise ValueError(f"task {cfg.task.name}: fixed {k} has shape {v.shape}, the model's is {params[k].shape}")
    return {**params, **{k: v.astype(params[k].dtype) for k, v in fixed.items()}}


def loss_fn(cfg: RunConfig, params: dict, batch, edits=None):
    """The task's training loss on `batch`, and its named training metrics. With `compute_dtype` bfloat16 the float32 parameters are cast for
    the forward pass (their gradients come back in float32 through the cast). `edits`: what an
    intervention does to the forward pass at this step."""
    dtype = jnp.dtype(cfg.train.compute_dtype)
    if dtype != jnp.float32:
        params = jax.tree.map(lambda p: p.astype(dtype), params)
    logits_BTV = model_lib.forward(cfg.model, params, batch["tokens"], edits=edits, logit_vocab=cfg.task.loss_vocab)
    metrics = cfg.task.losses(logits_BTV, batch)
    # the training metrics the task declares (a task may compute more, e.g. for its probes)
    return metrics["loss"], {k: metrics[k] for k in cfg.task.step_metric_names()}


def divergence_limit(cfg: RunConfig) -> float:
    """The training loss above which a member has diverged: `divergence_loss` x ln V."""
    return cfg.train.divergence_loss * math.log(cfg.model.d_vocab)


def train_step(cfg: RunConfig, state: MemberState, shared=None) -> tuple[MemberState, dict]:
    """One AdamW step on a fresh batch, under the member's intervention at this step. A loss or
    gradient that is not finite, or a loss above `divergence_limit` (a finite blow-up),
    freezes the member at that step."""
    edits, freeze = active(state.intervention, state.step)
    batch = cfg.task.sample(jax.random.fold_in(state.data_key, state.step), task_inputs(cfg, state.task_params, shared),
                            cfg.data.batch_size, cfg.model.d_vocab)
    grads, metrics = jax.grad(functools.partial(loss_fn, cfg), has_aux=True)(state.params, batch, edits)
    with jax.named_scope("optimiser"):      # names only (benchmarks/step_profile.py reads them)
        updates, opt_state = optimizer(cfg).update(grads, state.opt_state, state.params)
    if freeze is not None:      # a frozen weight is not updated at all: no gradient step, no weight decay
        updates = {k: jnp.where(_expand(freeze[k], u) > 0, jnp.zeros_like(u), u) if k in freeze else u
                   for k, u in updates.items()}
    # what the task fixes (its `fixed_params`) is never updated either
    updates = {k: jnp.zeros_like(u) if k in cfg.task.fixed_param_names else u for k, u in updates.items()}
    with jax.named_scope("optimiser"):
        params = optax.apply_updates(state.params, updates)
    finite = (jnp.isfinite(metrics["loss"]) & (metrics["loss"] <= divergence_limit(cfg))
              & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])))
    alive = state.diverged_step < 0
    keep = finite & alive
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
    diverged_step = jnp.where(alive & ~finite, state.step, state.diverged_step)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1,
                          diverged_step=diverged_step), metrics


def _expand(mask, like):
    """A freeze mask ([], [L] or [L, H]) broadcast against its parameter's shape."""
    return mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim))


def member_probes(cfg: RunConfig, state: MemberState, shared=None):
    """The probes of one member as it is at its step, under its intervention: behaviour on the
    probe batch, and the per-head weight probes."""
    edits, _ = active(state.intervention, state.step)
    with jax.named_scope("probes"):         # names only (benchmarks/step_profile.py reads them)
        probes, task_heads = probe_metrics(cfg, state.params, state.probe_key, edits,
                                           task_inputs(cfg, state.task_params, shared))
        return probes, head_probe_metrics(cfg, state.params) | task_heads


def run_steps(cfg: RunConfig, state: MemberState, n_steps: int, shared=None) -> tuple[MemberState, dict]:
    """`n_steps` train steps inside one `lax.scan`; metrics come back stacked `[n_steps]`."""
    return jax.lax.scan(lambda s, _: train_step(cfg, s, shared), state, None, length=n_steps)


def run_chunk(cfg: RunConfig, state: MemberState, n_active: jax.Array | int, n_evals: int, eval_every: int,
              shared=None):
    """Up to `n_evals` x (`eval_every` steps, then a probe) in one compiled scan; only the first
    `n_active` intervals run, the rest pass the state through.

    Returns the new state, step metrics `[n_evals * eval_every]`, probes `[n_evals]` and the
    per-head weight probes `[n_evals, ...]` (zeros after the active part). `n_active` is a runtime value shared by every member, so one
    compiled program serves every chunk length (the host picks it to report every second or
    to stop at a checkpoint) and, not being batched, its `cond` stays a branch under `vmap`.
    Keeping the probe out of the per-step body keeps a batched `cond` (which would run both
    branches) out of the step.
    """
    def interval(s, i):
        def run_interval(s):
            s, step_metrics = run_steps(cfg, s, eval_every, shared)
            return s, (step_metrics, *member_probes(cfg, s, shared))

        def skip_interval(s):
            return s, jax.tree.map(jnp.zeros_like, jax.eval_shape(run_interval, s)[1])

        return jax.lax.cond(i < n_active, run_interval, skip_interval, s)

    state, (step_metrics, probes, head_probes) = jax.lax.scan(interval, state, jnp.arange(n_evals))
    return state, jax.tree.map(lambda x: x.reshape(-1), step_metrics), probes, head_probes


class Chunk(NamedTuple):
    """One compiled call: a scan of `n_evals` probe intervals of `eval_every` steps, of which
    the first `n_active` run."""

    n_evals: int
    eval_every: int
    n_active: int

    @property
    def steps(self) -> int:
        return self.n_active * self.eval_every


def next_chunk(step: int, total: int, chunk_steps: int, eval_every: int, stop: int, want: int) -> Chunk:
    """The call that continues from `step`: up to `want` intervals of the full-size program
    (`chunk_steps`), ending at `stop` (the next checkpoint or snapshot) where the probe grid
    allows. Off the grid (a resume from an off-grid step) or for a last partial interval, a
    one-interval program re-aligns or finishes: at most three programs, so three compiles."""
    remaining = total - step
    off_grid = step % eval_every
    if off_grid:
        return Chunk(1, min(eval_every - off_grid, remaining), 1)
    if remaining < eval_every:
        return Chunk(1, remaining, 1)
    max_evals = max(1, chunk_steps // eval_every)
    room = (min(stop, total) - step) // eval_every
    return Chunk(max_evals, eval_every, max(1, min(want, max_evals, room)))


def train_member(cfg: RunConfig, init_seed, data_seed=None, lr=None, weight_decay=None, intervention=None,
                 task_params=None, shared=None):
    """A whole run as one pure function of its seeds: `jax.jit(jax.vmap(...))(seeds)` trains
    many. `data_seed` defaults to `init_seed` (the single-seed shorthand).

    Returns the final state, step metrics `[steps]` and probes `[steps // eval_every]`.
    """
    t = cfg.train
    state = init_member(cfg, init_seed, init_seed if data_seed is None else data_seed,
                        t.lr if lr is None else lr, t.weight_decay if weight_decay is None else weight_decay,
                        intervention, task_params)
    n_evals, rem = divmod(t.steps, t.eval_every)
    state, metrics, probes, _ = run_chunk(cfg, state, n_evals, n_evals, t.eval_every, shared)
    if rem:
        state, tail = run_steps(cfg, state, rem, shared)
        metrics = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), metrics, tail)
    return state, metrics, probes
