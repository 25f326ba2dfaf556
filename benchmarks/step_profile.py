"""Where a training step's time goes: a profile of the compiled training chunk, by kind of op.

Compiles the reference configuration's training chunk (the one `induction-jax train` runs:
fp32, batch 64, fixed-period repeated task, the backend's member loop) for `--members`
members, runs it once to warm up, then traces `--chunks` chunks with `jax.profiler`
(a Perfetto trace) and sums the time of every compiled op the trace shows. Each op is put
in one class by reading its HLO (the compiled program's text): what its fused body computes
and the shape it writes:

- matmul, projections: dots whose operands are the [B*T, d] activations (Q, K, V, O,
  embedding's positional add excluded, unembedding) and their weight gradients;
- matmul, attention: batched dots over (batch, head) of [T, d_head] and [T, T] tiles
  (QK^T, PV and their gradients), with whatever elementwise work XLA fused into them;
- softmax and log-softmax: fusions computing exponentials or logarithms;
- layout copies: fusions that only move data (transposes and copies, a scale or an add
  fused in), the head split [B,T,H*K] <-> [B,H,T,K] and the transposes the weight
  gradients' products need;
- optimiser: ops of the AdamW update (named so in `training.train_step`);
- probes: the probes' ops (named so in `training.member_probes`);
- other elementwise and reductions: the rest.

Prints the table (share of op time, ms per member-step) and the wall time per member-step,
and writes it as JSON (`--out`). The classes are read off XLA's op names and fused bodies, so
they move when XLA's fusion decisions do; the shares, not the exact split, are the result.

    python benchmarks/step_profile.py [--members 8] [--steps 50] [--chunks 2] [--eval-every 50] [--task markov]
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time
from pathlib import Path

CLASSES = ("matmul: projections, embedding, unembedding, weight gradients",
           "matmul: attention products (QK, PV, their gradients)",
           "softmax and log-softmax", "layout copies (transposes)", "optimiser (AdamW)", "probes",
           "other elementwise and reductions")


CONTAINERS = ("while", "conditional", "call")


def hlo_index(text: str) -> tuple[dict, dict]:
    """The compiled module's instructions `{name: (shape, opcode, line)}` and computations
    `{name: [lines]}`."""
    comps, cur = {}, None
    for line in text.splitlines():
        m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if m and not line.startswith(" "):
            cur = m.group(1)
            comps[cur] = []
        elif cur:
            comps[cur].append(line)
    inst = {}
    for line in text.splitlines():
        parsed = parse_instruction(line)
        if parsed:
            name, shape, opcode = parsed
            inst[name] = (shape, opcode, line)
    return inst, comps


def parse_instruction(line: str) -> tuple[str, str, str] | None:
    """`(name, shape, opcode)` of an HLO instruction line, tuple shapes (multi-output fusions,
    loops) included; None for other lines."""
    m = re.match(r"\s+(?:ROOT )?%([\w.\-]+) = ", line)
    if not m:
        return None
    rest = line[m.end():]
    if rest.startswith("("):                 # a tuple shape: up to its matching parenthesis
        depth = 0
        for end, ch in enumerate(rest):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
        shape, rest = rest[:end + 1], rest[end + 1:].lstrip()
    else:
        shape, _, rest = rest.partition(" ")
    op = re.match(r"([\w\-]+)\(", rest)
    return (m.group(1), shape, op.group(1)) if op else None


def body(line: str, comps: dict, seen=None) -> tuple[set, set]:
    """The opcodes and the `op_name`s of `line` and of every instruction inside the
    computations it calls (fusions), recursively."""
    seen = set() if seen is None else seen
    parsed = parse_instruction(line)
    ops = {parsed[2]} if parsed else set()
    names = set(re.findall(r'op_name="([^"]*)"', line))
    for called in re.findall(r"calls=%([\w.\-]+)", line):
        if called in seen:
            continue
        seen.add(called)
        for sub in comps.get(called, []):
            sub_ops, sub_names = body(sub, comps, seen)
            ops |= sub_ops
            names |= sub_names
    return ops, names


def classify(shape: str, line: str, comps: dict, attention_shapes: tuple[str, ...]) -> str:
    ops, names = body(line, comps)
    if names and all("/probes/" in n for n in names):
        return CLASSES[5]
    if "dot" in ops or "convolution" in ops:
        return CLASSES[1] if any(s in shape for s in attention_shapes) else CLASSES[0]
    if "exponential" in ops or "log" in ops:
        return CLASSES[2]
    if any("/optimiser/" in n for n in names):
        return CLASSES[4]
    if ({"transpose", "copy"} & ops) and not ({"reduce", "exponential", "dot"} & ops):
        return CLASSES[3]
    return CLASSES[6]


def profile(members: int, steps: int, chunks: int, eval_every: int, task: str | None = None) -> dict:
    import jax

    from induction_jax import ensemble, memory, training as train_lib, use_cpu_cores

    use_cpu_cores()
    from induction_jax.config import RunConfig
    from induction_jax.members import Members
    from induction_jax.runner import device_description

    if task is None:                # the reference configuration: the fixed-period repeated task
        cfg = RunConfig().replace(seeds=members, min_half_length=25, eval_every=eval_every, chunk_steps=steps)
    else:                           # a task at its own defaults, in a context that fits (as the bench does)
        from induction_jax import tasks

        seq_len = tasks.task_class(task)().seq_len
        cfg = RunConfig().replace(task=task, seeds=members, eval_every=eval_every, chunk_steps=steps,
                                  n_ctx=max(RunConfig().model.n_ctx, seq_len))
    state = ensemble.init_ensemble(cfg, Members.from_config(cfg))
    n_evals = steps // eval_every
    chunk = ensemble.compiled_chunk(cfg, n_evals, eval_every, state)
    shared = train_lib.shared_arrays(cfg)
    n_active = jax.numpy.int32(n_evals)
    compiled = chunk.lower(state, n_active, shared).compile()
    inst, comps = hlo_index(compiled.as_text())
    state = compiled(state, n_active, shared)[0]                 # warm-up
    jax.block_until_ready(state)
    B, T = cfg.data.batch_size, cfg.task.seq_len
    H, K = cfg.model.n_heads, cfg.model.d_model // cfg.model.n_heads
    attention_shapes = tuple(f"[{B},{H},{a},{b}]" for a, b in ((T, T), (T, K), (K, T)))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        tic = time.perf_counter()
        for _ in range(chunks):
            state = compiled(state, n_active, shared)[0]
            jax.block_until_ready(state)
        wall = time.perf_counter() - tic
        jax.profiler.stop_trace()
        trace = sorted(glob.glob(f"{trace_dir}/plugins/profile/*/perfetto_trace.json.gz"))[-1]
        events = json.load(gzip.open(trace))["traceEvents"]
    per_op = collections.Counter()          # each op's time over all its executions, then one class per op
    for e in events:
        if e.get("ph") == "X" and e["name"] in inst and inst[e["name"]][1] not in CONTAINERS:
            per_op[e["name"]] += e["dur"]     # (a container's time is its body's ops, traced on their own)
    by_class, top = collections.Counter(), collections.defaultdict(collections.Counter)
    for name, dur in per_op.items():
        shape, _, line = inst[name]
        c = classify(shape, line, comps, attention_shapes)
        by_class[c] += dur
        top[c][f"{name} {shape.split('{')[0]}"] += dur
    total = sum(by_class.values())
    member_steps = members * steps * chunks
    rows = [{"class": c, "share": by_class[c] / total if total else 0.0,
             "ms_per_member_step": by_class[c] / 1e3 / member_steps,
             "largest_ops": [[k, round(v / 1e3 / member_steps, 4)] for k, v in top[c].most_common(4)]}
            for c in CLASSES]
    return {"task": cfg.task.name, "members": members, "steps_per_chunk": steps, "chunks": chunks, "eval_every": eval_every,
            "member_loop": memory.member_loop(cfg), "devices": len(jax.devices()), "device": device_description(),
            "wall_s": wall, "op_ms_per_member_step": total / 1e3 / member_steps,
            "wall_ms_per_member_step": wall * 1e3 / member_steps,
            "busy_fraction": total / 1e6 / (wall * len(jax.devices())), "classes": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50, help="steps per chunk")
    parser.add_argument("--chunks", type=int, default=2, help="chunks traced (after one warm-up chunk)")
    parser.add_argument("--eval-every", type=int, default=50, help="probe cadence (training's default is 10)")
    parser.add_argument("--task", default=None, help="a task family at its defaults (default: the reference "
                        "configuration, the fixed-period repeated task)")
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    if args.steps % args.eval_every:
        parser.error(f"--steps {args.steps}: allowed: a multiple of --eval-every {args.eval_every}")
    out = profile(args.members, args.steps, args.chunks, args.eval_every, args.task)
    print(f"{out['task']}: {out['members']} members, {out['device']['platform']}, member loop {out['member_loop']}, probes every "
          f"{out['eval_every']} steps: {out['wall_ms_per_member_step']:.2f} ms wall per member-step on "
          f"{out['devices']} devices, ops busy {out['busy_fraction']:.0%} of the devices' time")
    if out["busy_fraction"] < 0.8:
        print(f"warning: the traced ops fill {out['busy_fraction']:.0%} of the devices' time: the profiler "
              f"drops events past its buffer (tasks with a scan over positions emit many); trace fewer "
              f"(--members 2 --steps 10 --chunks 1)")
    print(f"{'share':>6} {'ms/member-step':>15}  class")
    for r in out["classes"]:
        print(f"{r['share']:6.1%} {r['ms_per_member_step']:15.3f}  {r['class']}")
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
