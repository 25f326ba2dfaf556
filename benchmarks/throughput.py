"""Training throughput of induction-jax ensembles against PyTorch's three ways, in one run.

For the reference configuration (fp32, batch 64, fixed-period reference task) and each
ensemble size: model-steps/s (members x steps / s), tokens/s, compile time apart from steady
state, peak memory, model FLOPs per step (XLA's cost analysis of one compiled train step) and
the achieved FLOP rate as a fraction of a large fp32 matmul measured in the same run on the
same device. Each size runs in a fresh process (clean compile time and peak memory); a second
run of the largest size shows the persistent compilation cache. Each task family runs at 8
members beside the repeated task (`--tasks`). PyTorch trains the same model, batch, optimiser
and data three ways (benchmarks/torch_reference.py: eager, torch.compile, a torch.func vmapped
ensemble of 8), each in a fresh process, warm-up and compile apart from steady state, against
induction-jax at 8 members.

    python benchmarks/throughput.py [--sizes 1,2,4,8,16,32] [--steps 50] [--no-torch] [--tasks all]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(size: int, steps: int, cache_dir: str | None, eval_every: int | None = None,
           compile_only: bool = False, member_loop: str = "auto", overrides: dict | None = None,
           arms: list[str] | None = None, chunks: int = 5) -> dict:
    """Runs in its own process: compile and time one ensemble size (the median of `chunks`
    timed chunks of `steps` steps, after a warm-up chunk)."""
    import functools

    import jax
    import numpy as np

    from induction_jax import ensemble, memory, training as train_lib, use_cpu_cores

    use_cpu_cores()
    from induction_jax.members import Members
    from induction_jax.config import RunConfig
    from induction_jax.runner import device_description

    if cache_dir:
        ensemble.enable_compilation_cache(cache_dir)
    every = eval_every or steps
    overrides = dict(overrides or {})
    task = overrides.pop("task", None)
    if task is None:                # the reference configuration: the fixed-period repeated task
        cfg = RunConfig().replace(**{"seeds": size, "min_half_length": 25, "eval_every": every, "chunk_steps": steps,
                                     "member_loop": member_loop, **overrides})
    else:                           # a task at its own defaults, in a context that fits its sequences
        from induction_jax import tasks

        seq_len = tasks.task_class(task)().seq_len
        n_ctx = overrides.pop("n_ctx", max(RunConfig().model.n_ctx, seq_len))
        cfg = RunConfig().replace(task=task, seeds=size, eval_every=every, chunk_steps=steps,
                                  member_loop=member_loop, n_ctx=n_ctx, **overrides)
    members = Members.from_config(cfg)
    if arms:                        # interventions: the arms in turn over the members
        from dataclasses import replace
        members = replace(members, arm=[arms[i % len(arms)] for i in range(size)])
    state = ensemble.init_ensemble(cfg, members)
    chunk = ensemble.compiled_chunk(cfg, steps // every, every, state)
    tic = time.perf_counter()
    n_active = jax.numpy.int32(steps // every)
    shared = train_lib.shared_arrays(cfg)          # the task's arrays every member reads ({} for most)
    compiled = chunk.lower(state, n_active, shared).compile()
    compile_s = time.perf_counter() - tic
    if compile_only:
        return {"members": size, "compile_s": compile_s}
    mem = compiled.memory_analysis()
    # Model FLOPs per step: XLA's cost analysis of a single member's compiled train step.
    single = jax.tree.map(lambda x: x[0], state)
    step_cost = jax.jit(functools.partial(train_lib.train_step, cfg)).lower(single).compile().cost_analysis()
    step_cost = step_cost[0] if isinstance(step_cost, list) else step_cost
    state, _, _, _ = compiled(state, n_active, shared)         # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(chunks):
        tic = time.perf_counter()
        state, metrics, _, _ = compiled(state, n_active, shared)
        jax.block_until_ready(state)
        times.append(time.perf_counter() - tic)
    best = float(np.median(times))
    model_steps = size * steps / best
    return {"members": size, "member_loop": memory.member_loop(cfg), "steps_timed": steps,
            "seconds_per_chunk": best, "compile_s": compile_s,
            "task": cfg.task.name, "seq_len": cfg.task.seq_len,
            "model_steps_per_s": model_steps, "tokens_per_s": model_steps * cfg.data.batch_size * cfg.task.seq_len,
            "flops_per_model_step": float(step_cost["flops"]),
            "achieved_flops_per_s": float(step_cost["flops"]) * model_steps,
            "xla_temp_bytes": int(getattr(mem, "temp_size_in_bytes", 0)),
            "xla_argument_bytes": int(getattr(mem, "argument_size_in_bytes", 0)),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_device_bytes": peak_device_bytes(), "device": device_description()}


def peak_device_bytes() -> int | None:
    """The largest peak memory in use on a local device since the process started, from the
    backend's memory stats; None where the backend keeps none (XLA:CPU)."""
    import jax

    peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in jax.local_devices()]
    return max(peaks) if peaks and None not in peaks else None


def matmul_peak(n: int = 2048, repeats: int = 10) -> dict:
    """fp32 FLOP rate of a large matmul on the default device (median of `repeats`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
    f = jax.jit(jnp.dot)
    f(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        f(a, b).block_until_ready()
        times.append(time.perf_counter() - tic)
    t = float(np.median(times))
    return {"n": n, "seconds": t, "flops_per_s": 2.0 * n ** 3 / t}


def torch_worker(way: str, steps: int, members: int, shape: dict | None = None) -> dict:
    """Runs in its own process: one PyTorch way (torch_reference.WAYS) on torch's default
    device, warm-up and compile timed apart from steady state; `shape`: another model than
    the reference (torch_reference.make_model's arguments)."""
    sys.path.insert(0, str(HERE))
    import torch
    import torch_reference

    device = "cuda" if torch.cuda.is_available() else "cpu"
    row = torch_reference.time_way(way, steps, members, device, **(shape or {}))
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return row | {"torch_version": torch.__version__, "threads": torch.get_num_threads(),
                  "flops_per_model_step_hand_count": torch_reference.flops_per_step(),
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "peak_device_bytes": peak}


def torch_ways(steps: int, members: int = 8, timeout: float | None = None) -> list[dict] | None:
    """Each PyTorch way in a fresh process, one after another; None without torch."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return None
    return [run_json([__file__, "--torch-worker", way, "--steps", str(steps), "--worker", str(members)],
                     f"PyTorch way {way}", timeout=timeout) for way in ("eager", "compile", "vmap")]


def versus_torch(jax_row: dict, ways: list[dict]) -> dict:
    """induction-jax's model-steps/s over each PyTorch way's, and over the fastest way's."""
    fastest = max(ways, key=lambda w: w["model_steps_per_s"])
    return {"members": jax_row["members"], "fastest_way": fastest["way"],
            "vs_fastest": jax_row["model_steps_per_s"] / fastest["model_steps_per_s"],
            "vs_way": {w["way"]: jax_row["model_steps_per_s"] / w["model_steps_per_s"] for w in ways}}


def run_json(args: list[str], what: str, env: dict | None = None, timeout: float | None = None) -> dict:
    """A worker in a fresh Python process; its result is the JSON on its last line of output.
    Past `timeout` seconds the worker is killed and subprocess.TimeoutExpired raised."""
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False, env=env,
                         timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{what}: worker failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_worker(size: int, steps: int, cache_dir: str, eval_every: int | None = None,
               compile_only: bool = False, member_loop: str = "auto", overrides: dict | None = None,
               arms: list[str] | None = None, timeout: float | None = None, chunks: int = 5) -> dict:
    extra = (["--eval-every", str(eval_every)] if eval_every else []) + (["--compile-only"] if compile_only else [])
    extra += ["--chunks", str(chunks)]
    extra += ["--member-loop", member_loop, "--overrides", json.dumps(overrides or {})]
    extra += ["--arms", ";".join(arms)] if arms else []
    return run_json([__file__, "--worker", str(size), "--steps", str(steps), "--cache-dir", cache_dir, *extra],
                    f"ensemble size {size}", timeout=timeout)


def plot(results: dict, path: Path) -> None:
    from induction_jax.plots import plt, save

    sizes = [r["members"] for r in results["jax"]]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    loop = results["jax"][0]["member_loop"]
    ax.plot(sizes, [r["model_steps_per_s"] for r in results["jax"]], "o-",
            label=f"induction-jax ({loop} over members, sharded over devices)")
    labels = {"eager": "PyTorch eager loop (one model after another)", "compile": "PyTorch, torch.compile",
              "vmap": "PyTorch, torch.func vmap over {members} members"}
    for way, color in zip((results.get("torch") or {}).get("ways", []), ("tab:red", "tab:orange", "tab:purple")):
        ax.axhline(way["model_steps_per_s"], color=color, ls="--", label=labels[way["way"]].format(**way))
    ax.set_xscale("log", base=2), ax.set_xlabel("ensemble size (members)")
    ax.set_ylabel("model-steps / s"), ax.grid(alpha=0.3), ax.legend()
    ax.set_title(f"Training throughput, reference config, fp32 ({results['device_name']})", fontsize=10)
    save(fig, path)


def task_rows(which: str, size: int, steps: int, cache_dir: str, member_loop: str) -> list[dict]:
    """Throughput of each task family beside the repeated task's, in this run."""
    from induction_jax import tasks

    names = tasks.names() if which == "all" else [] if which == "none" else which.split(",")
    if not names:
        return []
    names = ["repeated"] + [n for n in names if n != "repeated"]
    rows = [run_worker(size, steps, cache_dir, eval_every=10, member_loop=member_loop, overrides={"task": n})
            for n in names]
    base = rows[0]
    for r in rows:
        r["relative_model_steps"] = r["model_steps_per_s"] / base["model_steps_per_s"]
        r["relative_tokens"] = r["tokens_per_s"] / base["tokens_per_s"]
        print(f"task {r['task']:>10} (T={r['seq_len']}), {size} members, probes every 10 steps: "
              f"{r['model_steps_per_s']:7.1f} model-steps/s ({r['relative_model_steps']:.2f}x repeated), "
              f"{r['tokens_per_s'] / 1e6:5.2f} Mtok/s ({r['relative_tokens']:.2f}x)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,2,4,8,16,32")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed chunk (median of 5 chunks)")
    parser.add_argument("--torch-steps", type=int, default=60,
                        help="steps per timed chunk of each PyTorch way (median of 5 chunks, after 5 warm-up steps)")
    parser.add_argument("--torch-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--eval-every", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compile-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    parser.add_argument("--arms", default="", help=argparse.SUPPRESS)
    parser.add_argument("--chunks", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--member-loop", default="auto", choices=("auto", "vmap", "map"),
                        help="how members share a device (TrainConfig.member_loop); the other loop is "
                             "measured too, at one size, for the ratio")
    parser.add_argument("--probe-cadences", default="10",
                        help="probe every N steps, for each N listed: the extra training time of the probes "
                             "at 8 members, measured side by side")
    parser.add_argument("--tasks", default="all",
                        help="the task families whose throughput at 8 members (each at its defaults, probes "
                             "every 10 steps) is measured beside the repeated task's: names, 'all' or 'none'")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    if args.torch_worker is not None:
        print(json.dumps(torch_worker(args.torch_worker, args.steps, args.worker, json.loads(args.overrides))))
        return
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.steps, args.cache_dir, args.eval_every, args.compile_only,
                                args.member_loop, json.loads(args.overrides),
                                [a for a in args.arms.split(";") if a], args.chunks)))
        return
    import tempfile

    import jax

    sizes = [int(s) for s in args.sizes.split(",")]
    cache_dir = tempfile.mkdtemp(prefix="induction-jax-bench-cache-")
    peak = matmul_peak()
    print(f"matmul peak (fp32 {peak['n']}^2 on {jax.devices()[0].platform}): {peak['flops_per_s'] / 1e9:.1f} GFLOP/s")
    rows = []
    for size in sizes:
        r = run_worker(size, args.steps, cache_dir, member_loop=args.member_loop)
        r["fraction_of_matmul_peak"] = r["achieved_flops_per_s"] / peak["flops_per_s"]
        rows.append(r)
        print(f"{size:5d} members: {r['model_steps_per_s']:8.1f} model-steps/s  {r['tokens_per_s'] / 1e6:6.2f} Mtok/s  "
              f"compile {r['compile_s']:5.1f} s  peak RSS {r['peak_rss_bytes'] / 2**30:5.2f} GiB  "
              f"{r['achieved_flops_per_s'] / 1e9:6.1f} GFLOP/s = {r['fraction_of_matmul_peak']:.0%} of matmul peak",
              flush=True)
    print(f"member loop: {rows[0]['member_loop']}")
    again = run_worker(sizes[-1], args.steps, cache_dir, compile_only=True, member_loop=args.member_loop)
    print(f"second identical run, {sizes[-1]} members: compile {again['compile_s']:.2f} s (persistent cache)")
    # The in-training probes at each cadence (every 10 steps by default) against a chunk with one
    # probe at its end.
    probe_size = 8 if 8 in sizes else sizes[-1]
    plain = next(r for r in rows if r["members"] == probe_size)
    cadences = []
    for every in (int(c) for c in args.probe_cadences.split(",")):
        probed = run_worker(probe_size, args.steps, cache_dir, eval_every=every, member_loop=args.member_loop)
        cost = plain["model_steps_per_s"] / probed["model_steps_per_s"] - 1
        cadences.append({"eval_every": every, "members": probe_size, "model_steps_per_s": probed["model_steps_per_s"],
                         "result": probed,
                         "extra_time_fraction": cost})
        print(f"probes every {every} steps, {probe_size} members: {probed['model_steps_per_s']:.1f} model-steps/s, "
              f"{cost:+.1%} time against probing once per {args.steps} steps", flush=True)
    # What runs inside training, at the default probe cadence, side by side: the per-head weight
    # probes (on by default) against the same run without them, and a mix of interventions (the
    # five arms of experiments/interventions.py in turn over the members) against no interventions.
    default_every = 10
    with_weights = next((c["result"] for c in cadences if c["eval_every"] == default_every), None)
    if with_weights is None:
        with_weights = run_worker(probe_size, args.steps, cache_dir, eval_every=default_every,
                                  member_loop=args.member_loop)
    no_weights = run_worker(probe_size, args.steps, cache_dir, eval_every=default_every,
                            member_loop=args.member_loop, overrides={"weight_probes": False})
    arms = ["none", "clamp:prev:L0H0:1.0", "freeze:W_pos", "cut:K:L0H*",
            "ablate:L1H1+ablate:L1H2+ablate:L1H3"]
    intervened = run_worker(probe_size, args.steps, cache_dir, eval_every=default_every,
                            member_loop=args.member_loop, arms=arms)
    features = {"members": probe_size, "eval_every": default_every,
                "without_weight_probes": no_weights["model_steps_per_s"],
                "with_weight_probes": with_weights["model_steps_per_s"],
                "weight_probes_extra_time": no_weights["model_steps_per_s"] / with_weights["model_steps_per_s"] - 1,
                "interventions_arms": arms, "with_interventions": intervened["model_steps_per_s"],
                "interventions_extra_time": with_weights["model_steps_per_s"] / intervened["model_steps_per_s"] - 1}
    print(f"weight probes every {default_every} steps, {probe_size} members: {no_weights['model_steps_per_s']:.1f} "
          f"model-steps/s without, {with_weights['model_steps_per_s']:.1f} with: "
          f"{features['weight_probes_extra_time']:+.1%} time", flush=True)
    print(f"interventions ({len(arms)} arms in turn), {probe_size} members: {intervened['model_steps_per_s']:.1f} "
          f"model-steps/s against {with_weights['model_steps_per_s']:.1f} without: "
          f"{features['interventions_extra_time']:+.1%} time", flush=True)
    # The other member loop at the same size, measured now, for the ratio between the two.
    other_loop = "vmap" if plain["member_loop"] == "map" else "map"
    other = run_worker(probe_size, args.steps, cache_dir, member_loop=other_loop)
    print(f"member loop {other_loop}, {probe_size} members: {other['model_steps_per_s']:.1f} model-steps/s; "
          f"{plain['member_loop']} / {other_loop} = {plain['model_steps_per_s'] / other['model_steps_per_s']:.2f}x")
    # Each task family at its own defaults, side by side with the repeated task at its defaults
    # (variable periods), probes every 10 steps: model-steps/s and tokens/s (their sequence
    # lengths differ).
    families = task_rows(args.tasks, probe_size, args.steps, cache_dir, args.member_loop)
    # PyTorch's three ways, each in a fresh process, against induction-jax at 8 members (`plain`).
    ways = None if args.no_torch else torch_ways(args.torch_steps, probe_size)
    torch_row = None
    if ways:
        for w in ways:
            print(f"PyTorch {w['torch_version']} {w['way']} ({w['members']} members, {w['threads']} threads, "
                  f"{w['device']}): {w['model_steps_per_s']:.1f} model-steps/s, warm-up {w['warmup_s']:.1f} s "
                  f"for {w['warmup_steps']} steps", flush=True)
        torch_row = {"ways": ways, "versus": versus_torch(plain, ways)}
        for r in rows:
            r["ratio_to_fastest_torch"] = r["model_steps_per_s"] / max(w["model_steps_per_s"] for w in ways)
        v = torch_row["versus"]
        print(f"induction-jax at {v['members']} members / PyTorch: "
              + ", ".join(f"{k} {x:.2f}x" for k, x in v["vs_way"].items())
              + f"; vs fastest PyTorch way ({v['fastest_way']}) {v['vs_fastest']:.2f}x")
    device = rows[0]["device"]
    name = f"{device['platform']}-{device['device_kind']}-{os.cpu_count()}cores".replace(" ", "_").lower()
    results = {"device_name": name, "machine": platform.processor() or platform.machine(),
               "matmul_peak": peak, "jax": rows, "second_run": again, "torch": torch_row,
               "probe_cadences": cadences, "inside_training": features,
               "other_member_loop": other, "tasks": families,
               "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out / f"{name}.png")
    print(f"wrote {out / (name + '.json')} and {out / (name + '.png')}")


if __name__ == "__main__":
    main()
