"""The bursty task's class sampler against `jax.random.categorical`, side by side in one run.

`bursty.draw_classes` draws a class by inverting the CDF at one uniform number;
`jax.random.categorical` (what the task used before) draws K Gumbel numbers per class drawn.
For each number of classes K this times, in the same process and alternating round by round:
one training batch of the bursty task drawn with each sampler (8 members, vmapped, compiled),
and one whole compiled training step of 8 members (Gaussian items, the study's model: 2
layers x 1 head, d_model 64, batch 32) with each. Prints the medians and the ratios.

    python benchmarks/bursty_sampler.py [--k-values 24,512,2048] [--rounds 5] [--reps 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def categorical_classes(key, logits, shape):
    """What the task drew before: `jax.random.categorical` (K Gumbel numbers per draw)."""
    import jax

    return jax.random.categorical(key, logits, shape=shape)


def programs(K: int, members: int = 8):
    """`{sampler: (sample_fn, step_fn, args)}`: compiled batch draw and train step, per sampler."""
    import functools

    import jax
    import jax.numpy as jnp

    from induction_jax import training
    from induction_jax.config import RunConfig
    from induction_jax.tasks import bursty
    from induction_jax.tasks.bursty import Bursty

    task = Bursty(bursty_items="gaussian", bursty_pairs=8, bursty_labels=32, bursty_max_classes=K, bursty_classes=K,
                  bursty_exemplars=2, bursty_novel=64, bursty_probe_copies=2, bursty_copies=4, bursty_epsilon=0.1)
    cfg = RunConfig().replace(task=task, d_vocab=task.vocab_needed, n_ctx=task.seq_len, n_layers=2, n_heads=1,
                              d_model=64, batch_size=32, lr=1e-3)
    seeds = jnp.arange(members, dtype=jnp.uint32)
    init = jax.vmap(functools.partial(training.init_member, cfg))
    state = init(seeds, seeds, jnp.full(members, 1e-3), jnp.full(members, 0.01))
    out = {}
    original = bursty.draw_classes
    for name, fn in (("inverse_cdf", original), ("categorical", categorical_classes)):
        bursty.draw_classes = fn          # traced now: each compiled program keeps the sampler it saw
        try:
            tp = state.task_params

            def draw(keys, tp):
                return jax.vmap(lambda k, p: task.sample(k, training.task_inputs(cfg, p), 32, cfg.model.d_vocab)
                                )(keys, tp)["tokens"]

            sample = jax.jit(draw).lower(jax.random.split(jax.random.PRNGKey(0), members), tp).compile()
            step = jax.jit(jax.vmap(lambda s: training.train_step(cfg, s)[0])).lower(state).compile()
        finally:
            bursty.draw_classes = original
        out[name] = (sample, step)
    return out, state


def timed(fn, *args, reps: int) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    t = time.perf_counter()
    for _ in range(reps):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t) / reps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k-values", default="24,512,2048")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=50)
    args = parser.parse_args()
    from induction_jax import use_cpu_cores
    use_cpu_cores()
    import jax

    rows = []
    for K in (int(k) for k in args.k_values.split(",")):
        progs, state = programs(K)
        keys = jax.random.split(jax.random.PRNGKey(1), 8)
        times = {f"{n}_{what}": [] for n in progs for what in ("sample", "step")}
        for r in range(args.rounds):
            for n in (list(progs) if r % 2 == 0 else list(progs)[::-1]):
                sample, step = progs[n]
                times[f"{n}_sample"].append(timed(sample, keys, state.task_params, reps=args.reps))
                times[f"{n}_step"].append(timed(step, state, reps=args.reps))
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"K": K, **{f"{k}_ms": round(1e3 * v, 3) for k, v in med.items()},
               "sample_ratio": round(med["categorical_sample"] / med["inverse_cdf_sample"], 2),
               "step_ratio": round(med["categorical_step"] / med["inverse_cdf_step"], 2),
               "model_steps_per_s_inverse_cdf": round(8 / med["inverse_cdf_step"], 1),
               "model_steps_per_s_categorical": round(8 / med["categorical_step"], 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"device": str(jax.devices()[0]), "rounds": args.rounds, "reps": args.reps, "rows": rows}))


if __name__ == "__main__":
    main()
