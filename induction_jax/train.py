"""Training: a whole run is a pure function of a seed; an ensemble is `vmap` of it.

Keys are split by purpose at the top (init, data, probe), and the batch of step `s` is
drawn from `fold_in(data_key, s)`, so member `i` of any ensemble, chunked or resumed in
any way, sees exactly the numbers of the single run with seed `i`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from induction_jax import model as model_lib
from induction_jax.config import RunConfig
from induction_jax.data import sample_batch
from induction_jax.losses import split_losses, token_losses
from induction_jax.probes import probe_metrics

STEP_METRICS = ("loss", "loss_first_half", "loss_second_half")


class MemberState(NamedTuple):
    """Everything one member's training carries; an ensemble stacks it on a leading axis."""

    params: dict
    opt_state: optax.OptState
    step: jax.Array            # int32, steps done
    data_key: jax.Array
    probe_key: jax.Array
    diverged_step: jax.Array   # int32, -1 while finite; else the step whose loss or grads were not


def optimizer(cfg: RunConfig) -> optax.GradientTransformation:
    """AdamW with lr and weight decay held in the state, so they may differ per member."""
    t = cfg.train
    return optax.inject_hyperparams(optax.adamw)(learning_rate=t.lr, weight_decay=t.weight_decay,
                                                 b1=t.b1, b2=t.b2, eps=t.eps)


def member_keys(seed: jax.Array):
    init_key, data_key, probe_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    return init_key, data_key, probe_key


def init_member(cfg: RunConfig, seed: jax.Array, lr: jax.Array, weight_decay: jax.Array) -> MemberState:
    init_key, data_key, probe_key = member_keys(seed)
    params = model_lib.init_params(cfg.model, init_key)
    opt_state = optimizer(cfg).init(params)
    opt_state.hyperparams["learning_rate"] = jnp.asarray(lr, jnp.float32)
    opt_state.hyperparams["weight_decay"] = jnp.asarray(weight_decay, jnp.float32)
    return MemberState(params, opt_state, jnp.int32(0), data_key, probe_key, jnp.int32(-1))


def loss_fn(cfg: RunConfig, params: dict, tokens_BT: jax.Array, period_B: jax.Array):
    """Mean next-token loss. With `compute_dtype` bfloat16 the float32 parameters are cast for
    the forward pass (their gradients come back in float32 through the cast)."""
    dtype = jnp.dtype(cfg.train.compute_dtype)
    if dtype != jnp.float32:
        params = jax.tree.map(lambda p: p.astype(dtype), params)
    logits_BTV = model_lib.forward(cfg.model, params, tokens_BT)
    metrics = split_losses(token_losses(logits_BTV, tokens_BT), cfg.data.half_length, period_B)
    return metrics["loss"], metrics


def train_step(cfg: RunConfig, state: MemberState) -> tuple[MemberState, dict]:
    """One AdamW step on a fresh batch. A non-finite loss or gradient freezes the member."""
    batch = sample_batch(jax.random.fold_in(state.data_key, state.step), cfg.data, cfg.model.d_vocab)
    grads, metrics = jax.grad(functools.partial(loss_fn, cfg), has_aux=True)(state.params, *batch)
    updates, opt_state = optimizer(cfg).update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(metrics["loss"]) & jnp.all(jnp.stack(
        [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
    alive = state.diverged_step < 0
    keep = finite & alive
    params, opt_state = jax.tree.map(lambda new, old: jnp.where(keep, new, old),
                                     (params, opt_state), (state.params, state.opt_state))
    diverged_step = jnp.where(alive & ~finite, state.step, state.diverged_step)
    return MemberState(params, opt_state, state.step + 1, state.data_key, state.probe_key,
                       diverged_step), metrics


def run_steps(cfg: RunConfig, state: MemberState, n_steps: int) -> tuple[MemberState, dict]:
    """`n_steps` train steps inside one `lax.scan`; metrics come back stacked `[n_steps]`."""
    return jax.lax.scan(lambda s, _: train_step(cfg, s), state, None, length=n_steps)


def run_chunk(cfg: RunConfig, state: MemberState, n_evals: int, eval_every: int):
    """`n_evals` x (`eval_every` steps, then a probe), all in one compiled scan.

    Returns the new state, step metrics `[n_evals * eval_every]` and probes `[n_evals]`.
    Structuring the chunk this way keeps the probe out of the per-step body (a
    `lax.cond` there would run both branches once vmapped).
    """
    def interval(s, _):
        s, step_metrics = run_steps(cfg, s, eval_every)
        return s, (step_metrics, probe_metrics(cfg, s.params, s.probe_key))

    state, (step_metrics, probes) = jax.lax.scan(interval, state, None, length=n_evals)
    return state, jax.tree.map(lambda x: x.reshape(-1), step_metrics), probes


def chunk_plan(start: int, total: int, chunk_steps: int, eval_every: int) -> list[tuple[int, int]]:
    """(n_evals, eval_every) per chunk, covering steps start..total with probes every
    `eval_every` steps and at the end. At most three distinct shapes, so three compiles."""
    chunk_evals = max(1, chunk_steps // eval_every)
    plan, step = [], start
    while step < total:
        remaining = total - step
        # Re-align to the probe grid after a resume from an off-grid step.
        off_grid = step % eval_every
        if off_grid:
            n = min(eval_every - off_grid, remaining)
            plan.append((1, n))
        elif remaining >= eval_every:
            k = min(chunk_evals, remaining // eval_every)
            plan.append((k, eval_every))
            n = k * eval_every
        else:
            plan.append((1, remaining))
            n = remaining
        step += n
    return plan


def chunk_length(plan_entry: tuple[int, int]) -> int:
    return plan_entry[0] * plan_entry[1]


def train_member(cfg: RunConfig, seed, lr=None, weight_decay=None):
    """A whole run as one pure function of its seed: `jax.jit(jax.vmap(...))(seeds)` trains many.

    Returns the final state, step metrics `[steps]` and probes `[steps // eval_every]`.
    """
    t = cfg.train
    state = init_member(cfg, seed, t.lr if lr is None else lr,
                        t.weight_decay if weight_decay is None else weight_decay)
    n_evals, rem = divmod(t.steps, t.eval_every)
    state, metrics, probes = run_chunk(cfg, state, n_evals, t.eval_every)
    if rem:
        state, tail = run_steps(cfg, state, rem)
        metrics = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), metrics, tail)
    return state, metrics, probes
