"""XLA:CPU compile flags side by side, in one run: what the test suite's flags cost and save.

The suite (tests/conftest.py) compiles with `--xla_backend_optimization_level=1
--xla_cpu_use_fusion_emitters=false` because most of its time is compiling tiny programs.
Each round runs `benchmarks/throughput.py --worker SIZE` (one fresh process: compile the
ensemble's training chunk, then time it) once per flag set, alternating which goes first, so
both see the same machine load. Prints, per flag set, the median compile time and
model-steps/s, and each ratio against XLA's defaults with the spread of the per-round ratios.

    python benchmarks/compile_flags.py [--size 8] [--steps 50] [--rounds 3] [--overrides '{...}']

`--overrides '{"d_vocab": 16, "half_length": 6, "min_half_length": 6, "n_ctx": 12, "d_model": 16,
"n_heads": 2, "batch_size": 32}'`
measures a model of the suite's size instead of the reference one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from xla_flags import SUITE_XLA_FLAGS  # noqa: E402  (the suite's own definition)

FLAG_SETS = {
    "default": "",
    "suite": SUITE_XLA_FLAGS,
    "O0": "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true",
}


def measure(flags: str, size: int, steps: int, overrides: str) -> dict:
    env = dict(os.environ, INDUCTION_JAX_CACHE_DIR="off", XLA_FLAGS=flags)
    if not flags:
        env.pop("XLA_FLAGS")
    out = subprocess.run([sys.executable, str(HERE / "throughput.py"), "--worker", str(size), "--steps", str(steps),
                          "--overrides", overrides], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"compile_flags: the worker failed under XLA_FLAGS={flags!r}: "
                         f"{(out.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8, help="ensemble members")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed chunk (median of 5 chunks)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overrides", default="{}", help="RunConfig.replace arguments as JSON")
    parser.add_argument("--sets", default="default,suite,O0", help=f"of {', '.join(FLAG_SETS)}")
    args = parser.parse_args()
    names = args.sets.split(",")
    unknown = [n for n in names if n not in FLAG_SETS]
    if unknown or "default" not in names:
        parser.error(f"--sets {args.sets}: allowed: a comma-separated list of {', '.join(FLAG_SETS)}, with default")
    rows = {n: [] for n in names}
    print(f"{args.rounds} rounds of {', '.join(names)}; {args.size} members, chunks of {args.steps} steps, "
          f"overrides {args.overrides}", flush=True)
    for r in range(args.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            res = measure(FLAG_SETS[n], args.size, args.steps, args.overrides)
            rows[n].append(res)
            print(f"round {r + 1} {n:8s} compile {res['compile_s']:6.2f} s  "
                  f"{res['model_steps_per_s']:8.1f} model-steps/s", flush=True)
    print(f"\ndevice: {rows['default'][0]['device']}")
    for n in names:
        comp = [x["compile_s"] for x in rows[n]]
        rate = [x["model_steps_per_s"] for x in rows[n]]
        line = (f"{n:8s} [{FLAG_SETS[n] or 'XLA defaults'}]\n  compile median {statistics.median(comp):.2f} s, "
                f"{statistics.median(rate):.1f} model-steps/s")
        if n != "default":
            c = [a["compile_s"] / b["compile_s"] for a, b in zip(rows[n], rows["default"])]
            s = [a["model_steps_per_s"] / b["model_steps_per_s"] for a, b in zip(rows[n], rows["default"])]
            line += (f"; vs defaults: compile x{statistics.median(c):.2f} [{min(c):.2f}, {max(c):.2f}], "
                     f"speed x{statistics.median(s):.2f} [{min(s):.2f}, {max(s):.2f}]")
        print(line)


if __name__ == "__main__":
    main()
