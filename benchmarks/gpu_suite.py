"""The first thing to run on a machine with a GPU: every speed figure of the project on one
device, in one command, within 9 minutes, written to benchmarks/results/<device>.json and to
this device's section of docs/performance.md (benchmarks/gpu_section.py renders it).

Sections, in order, each in fresh processes (benchmarks/throughput.py's workers):
- members: ensembles of 1 to 4,096 members under vmap, model-steps/s, tokens/s, compile time
  apart, peak device memory from JAX's memory stats (where the backend keeps them);
- torch: PyTorch's three ways (eager, torch.compile, torch.func vmap of 8) on the same device,
  against induction-jax at 8 members;
- main_job: the wall time of `induction-jax train` on the default configuration (two
  snapshots, steps 0 and last, for the LLC), analysis and report included;
- llc: our LLC against devinterp 2.0.1 on that run's last snapshot, on the same device
  (benchmarks/llc_vs_devinterp.py);
- dtype: bfloat16 against float32 compute at one ensemble size.

A section that would start past the time budget, or whose optional package (torch,
devinterp) is missing, is recorded as skipped with its reason; a size that runs out of
memory ends the members section. The JSON and the docs section are rewritten after each
section, so an interrupted run keeps what it measured. --tiny (or GPU_SUITE_TINY=1): a few
members and steps and a tiny LLC, about a minute or two on a CPU (tests/test_gpu_suite.py).

    benchmarks/gpu_suite.sh [--tiny] [--out-json PATH] [--docs PATH] [--budget-s 510]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gpu_section  # noqa: E402
import throughput  # noqa: E402


@dataclass(frozen=True)
class Mode:
    """How much the suite measures: the full run, or the tiny one that keeps it from rotting."""

    name: str
    sizes: tuple[int, ...]
    steps: int                      # steps per timed chunk (median of 5 chunks)
    torch_steps: int
    dtype_members: int
    train_args: tuple[str, ...]     # on top of the default configuration
    llc_args: tuple[str, ...]


FULL = Mode("full", (1, 8, 64, 256, 1024, 4096), 20, 40, 256, (), ())
TINY = Mode("tiny", (1, 8), 3, 2, 8,
            ("--seeds", "2", "--steps", "20", "--eval-every", "10", "--chunk-steps", "20"),
            ("--n", "64", "--chains", "2", "--draws", "12", "--burn-in", "4", "--batch-size", "16"))
OOM = re.compile(r"RESOURCE_EXHAUSTED|[Oo]ut of memory|OutOfMemory")


def shown(path: Path | str) -> str:
    """A path as the docs show it: relative to the checkout when inside it."""
    path = Path(path)
    return str(path.relative_to(HERE.parent)) if path.is_relative_to(HERE.parent) else str(path)


def device_file_name(device_kind: str) -> str:
    """jax.devices()[0].device_kind as a file name: 'NVIDIA H200' -> 'nvidia_h200'."""
    return re.sub(r"[^a-z0-9]+", "_", device_kind.lower()).strip("_") or "device"


class Suite:
    """The results so far, the clock, and where they are written after every section."""

    def __init__(self, mode: Mode, budget_s: float, out_json: str | None, docs: Path, command: str):
        self.mode, self.budget_s, self.out_json, self.docs = mode, budget_s, out_json, docs
        self.start = time.perf_counter()
        self.cache_dir = tempfile.mkdtemp(prefix="induction-jax-gpu-suite-cache-")
        self.results = {"mode": mode.name, "command": command, "budget_s": budget_s,
                        "started_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                        "load_average_at_start": list(os.getloadavg()), "sections": {}}

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def record(self, name: str, section: dict, began: float) -> None:
        section["section_wall_s"] = time.perf_counter() - began
        self.results["sections"][name] = section
        self.results["elapsed_s"] = time.perf_counter() - self.start
        self.results["load_average_at_end"] = list(os.getloadavg())
        self.save()

    def save(self) -> None:
        from induction_jax.files import write_json_atomic

        name = self.results.get("device_name")
        if name is None:
            return
        path = (Path(self.out_json) if self.out_json else HERE / "results" / f"{name}.json").resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.results["json_path"] = shown(path)
        write_json_atomic(path, self.results)
        gpu_section.write_section(self.docs, name, gpu_section.render(self.results))
        self.results["written"] = [str(path), str(self.docs)]


def members_section(suite: Suite) -> dict:
    rows, stopped = [], None
    for size in suite.mode.sizes:
        if suite.left() < 0.55 * suite.budget_s:
            stopped = f"{size} members and more: skipped, past 45% of the time budget"
            break
        try:
            row = throughput.run_worker(size, suite.mode.steps, suite.cache_dir, member_loop="vmap",
                                        timeout=max(suite.left() - 0.4 * suite.budget_s, 30))
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            if isinstance(e, subprocess.TimeoutExpired) or OOM.search(str(e)):
                stopped = f"{size} members: {'out of device memory' if OOM.search(str(e)) else 'timed out'}"
                break
            raise
        rows.append(row)
        if "device_name" not in suite.results:
            kind = row["device"]["device_kind"]
            suite.results["device_name"] = device_file_name(kind) + ("-tiny" if suite.mode.name == "tiny" else "")
            suite.results["device"] = row["device"]
        print(f"{size:5d} members (vmap): {row['model_steps_per_s']:10.1f} model-steps/s, compile "
              f"{row['compile_s']:.1f} s, peak device memory {row['peak_device_bytes']}", flush=True)
    return {"rows": rows, "stopped": stopped}


def torch_section(suite: Suite) -> dict:
    if importlib.util.find_spec("torch") is None:
        return {"skipped": "torch is not installed (pip install -e '.[bench]')"}
    at8 = next((r for r in suite.results["sections"]["members"].get("rows", []) if r["members"] == 8), None)
    if at8 is None:
        return {"skipped": "induction-jax at 8 members was not measured"}
    ways = throughput.torch_ways(suite.mode.torch_steps, 8, timeout=max(suite.left() / 3, 60))
    for w in ways:
        print(f"PyTorch {w['way']} on {w['device']}: {w['model_steps_per_s']:.1f} model-steps/s, "
              f"warm-up {w['warmup_s']:.1f} s", flush=True)
    return {"ways": ways, "versus": throughput.versus_torch(at8, ways)}


def main_job_section(suite: Suite, run_dir: Path) -> dict:
    from induction_jax.config import RunConfig

    steps = RunConfig().train.steps
    args = list(suite.mode.train_args)
    if "--steps" in args:
        steps = int(args[args.index("--steps") + 1])
    cmd = [sys.executable, "-c", "import sys; from induction_jax.entry import main; sys.exit(main())",
           "train", "--out", str(run_dir), "--no-progress", "--snapshots", f"every:{steps}", *args]
    tic = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=max(suite.left(), 60))
    wall = time.perf_counter() - tic
    if out.returncode != 0:
        raise RuntimeError(f"main job failed:\n{out.stderr[-2000:]}")
    print(f"main job: {wall:.1f} s wall", flush=True)
    return {"wall_s": wall, "steps": steps,
            "command": "induction-jax " + " ".join(cmd[3:]).replace(str(run_dir), "RUN_DIR")}


def llc_section(suite: Suite, run_dir: Path) -> dict:
    missing = [m for m in ("torch", "devinterp") if importlib.util.find_spec(m) is None]
    if missing:
        return {"skipped": f"{' and '.join(missing)} not installed (pip install -e '.[bench]')"}
    if "wall_s" not in suite.results["sections"].get("main_job", {}):
        return {"skipped": "no main-job run to estimate on"}
    out_json = run_dir / "llc_vs_devinterp.json"
    # JAX and torch share the device in one process: JAX must not take 75% of it up front.
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false")
    cmd = [sys.executable, str(HERE / "llc_vs_devinterp.py"), str(run_dir), "--json", str(out_json),
           *suite.mode.llc_args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=max(suite.left(), 60))
    if out.returncode != 0:
        raise RuntimeError(f"llc_vs_devinterp failed:\n{out.stderr[-2000:]}")
    result = json.loads(out_json.read_text())
    print(f"LLC: ours {result['ours_llc']:.2f} in {result['ours_seconds']:.1f} s, devinterp "
          f"{result['devinterp_llc']:.2f} in {result['devinterp_seconds']:.1f} s", flush=True)
    shown_cmd = ["python", shown(cmd[1]), "RUN_DIR", *suite.mode.llc_args]
    return result | {"command": " ".join(shown_cmd)}


def dtype_section(suite: Suite) -> dict:
    size = suite.mode.dtype_members
    fp32 = next((r for r in suite.results["sections"]["members"].get("rows", []) if r["members"] == size), None)
    fp32 = fp32 or throughput.run_worker(size, suite.mode.steps, suite.cache_dir, member_loop="vmap")
    bf16 = throughput.run_worker(size, suite.mode.steps, suite.cache_dir, member_loop="vmap",
                                 overrides={"compute_dtype": "bfloat16"}, timeout=max(suite.left(), 60))
    ratio = bf16["model_steps_per_s"] / fp32["model_steps_per_s"]
    print(f"bfloat16 / float32 at {size} members: {ratio:.2f}x model-steps/s", flush=True)
    memory = (bf16["peak_device_bytes"] / fp32["peak_device_bytes"]
              if bf16["peak_device_bytes"] and fp32["peak_device_bytes"] else None)
    return {"members": size, "float32": fp32, "bfloat16": bf16, "speed_ratio": ratio, "peak_memory_ratio": memory}


def run(suite: Suite) -> dict:
    """Every section in turn; one that would start with under a minute of the budget left is
    skipped, with that reason; one whose worker fails is recorded with its error."""
    with tempfile.TemporaryDirectory(prefix="induction-jax-gpu-suite-") as tmp:
        run_dir = Path(tmp) / "main-job"
        sections = [("members", lambda: members_section(suite)), ("torch", lambda: torch_section(suite)),
                    ("main_job", lambda: main_job_section(suite, run_dir)),
                    ("llc", lambda: llc_section(suite, run_dir)), ("dtype", lambda: dtype_section(suite))]
        for name, fn in sections:
            began = time.perf_counter()
            if name != "members" and suite.left() < 60 and suite.mode.name == "full":
                suite.record(name, {"skipped": f"under a minute of the {suite.budget_s:.0f} s budget left"}, began)
                continue
            try:
                section = fn()
            except subprocess.TimeoutExpired:
                section = {"skipped": "ran past the time budget"}
            except RuntimeError as e:       # a worker failed: keep it, go on to the next section
                print(e, file=sys.stderr)
                section = {"failed": str(e)[-1500:]}
            suite.record(name, section, began)
    return suite.results


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", default=os.environ.get("GPU_SUITE_TINY") == "1",
                    help="a few members and steps, a tiny LLC: a minute or two on a CPU (or GPU_SUITE_TINY=1)")
    ap.add_argument("--out-json", default=None, help="default: benchmarks/results/<device>.json")
    ap.add_argument("--docs", default=str(HERE.parent / "docs" / "performance.md"),
                    help="the Markdown file whose section for this device is (re)written")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall-clock budget: sections that would start past it are skipped (default 510 s; "
                         "tiny: an hour, so a slow CPU measures every section)")
    args = ap.parse_args(argv)
    command = "benchmarks/gpu_suite.sh " + " ".join(argv if argv is not None else sys.argv[1:])
    budget = args.budget_s or (3600.0 if args.tiny else 510.0)
    suite = Suite(TINY if args.tiny else FULL, budget, args.out_json, Path(args.docs), command.strip())
    results = run(suite)
    failed = [k for k, v in results["sections"].items() if "failed" in v]
    print(f"wrote {' and '.join(results.get('written', ['nothing (no ensemble size ran)']))} "
          f"in {results.get('elapsed_s', 0):.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
