"""How training's cost grows: model-steps/s, tokens/s and memory against members, sequence
length, d_model and vocabulary, with PyTorch's eager loop beside each point it can run.

From the reference configuration (fp32, batch 64, 2 layers x 4 heads, d_model 64, the repeated
task with T = 50 and V = 64, 8 members) one setting moves at a time: members 1 to 1,024; T
(= n_ctx, period T / 2) 50 to 512; d_model 32 to 512 (d_head = d_model / 4); d_vocab 64 to
8,192. Each point is `benchmarks/throughput.py`'s worker in a fresh process: compile apart,
chunks of 10 steps with a probe at each end (training's default cadence), the median of 3
timed chunks (of 1 from 256 members on, where a chunk takes minutes on a 2-core CPU), peak
RSS, XLA's FLOPs per model step and the bytes of its compiled program's temporaries. Beside
it, PyTorch's eager loop (one model after another: its model-steps/s does not depend on the
member count) on the same shape, in a fresh process. The text task's tokens/s against
members runs at its defaults (windows of 128 tokens of the default corpus, a BPE of 512
tokens). The matmul peak is measured in the same run. Writes
benchmarks/results/cost-curves-<device>.json and .png, and prints a table.

    python benchmarks/cost_curves.py [--axes members,seq_len,d_model,d_vocab,text] [--quick] [--no-torch]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import throughput

HERE = Path(__file__).resolve().parent

AXES = {
    "members": [1, 4, 16, 64, 256, 1024],
    "seq_len": [50, 100, 200, 512],
    "d_model": [32, 64, 128, 256, 512],
    "d_vocab": [64, 512, 2048, 8192],
    "text": [1, 8, 64],
}
QUICK = {"members": [1, 8], "seq_len": [50, 100], "d_model": [32, 64], "d_vocab": [64, 512], "text": [1]}
BASE_MEMBERS = 8


def setting(axis: str, value: int) -> tuple[int, dict, dict | None]:
    """(members, RunConfig overrides, PyTorch model shape or None) of one point."""
    if axis == "members":
        return value, {}, {}
    if axis == "seq_len":
        return BASE_MEMBERS, {"n_ctx": value, "half_length": value // 2, "min_half_length": value // 2}, \
            {"n_ctx": value}
    if axis == "d_model":
        return BASE_MEMBERS, {"d_model": value}, {"d_model": value}
    if axis == "d_vocab":
        return BASE_MEMBERS, {"d_vocab": value}, {"d_vocab": value}
    if axis == "text":
        return value, {"task": "text", "d_vocab": 512}, None
    raise ValueError(axis)


STEPS = 10     # steps per timed chunk at every point, a probe at its end: training's default cadence


def chunks_for(axis: str, value: int, quick: bool) -> int:
    """Timed chunks (their median) after the warm-up: 3, or 1 where a chunk takes minutes here."""
    return 1 if quick or (axis == "members" and value >= 256) else 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--axes", default=",".join(AXES))
    parser.add_argument("--quick", action="store_true", help="two small points per axis, 2 steps a chunk (a test)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    import importlib.util

    import jax

    with_torch = importlib.util.find_spec("torch") is not None and not args.no_torch
    axes = [a for a in args.axes.split(",") if a]
    grid = QUICK if args.quick else AXES
    cache_dir = tempfile.mkdtemp(prefix="induction-jax-cost-curves-")
    peak = throughput.matmul_peak()
    print(f"matmul peak (fp32 {peak['n']}^2 on {jax.devices()[0].platform}): {peak['flops_per_s'] / 1e9:.1f} GFLOP/s",
          flush=True)
    rows, torch_cache = [], {}
    started = time.time()
    for axis in axes:
        for value in grid[axis]:
            members, overrides, shape = setting(axis, value)
            steps, chunks = (2 if args.quick else STEPS), chunks_for(axis, value, args.quick)
            row = {"axis": axis, "value": value, "members": members, "steps_per_chunk": steps, "chunks": chunks}
            try:
                r = throughput.run_worker(members, steps, cache_dir, eval_every=steps, overrides=overrides,
                                          chunks=chunks)
                row |= {k: r[k] for k in ("model_steps_per_s", "tokens_per_s", "compile_s", "peak_rss_bytes",
                                          "xla_temp_bytes", "xla_argument_bytes", "flops_per_model_step",
                                          "achieved_flops_per_s", "seq_len", "member_loop")}
                row["fraction_of_matmul_peak"] = r["achieved_flops_per_s"] / peak["flops_per_s"]
            except RuntimeError as e:      # out of memory, or a shape the worker refuses: recorded, not a number
                row["error"] = str(e).strip().splitlines()[-1][:300]
            key = json.dumps(shape, sort_keys=True) if shape is not None else None
            if with_torch and key is not None and "error" not in row:
                if key not in torch_cache:
                    try:
                        torch_cache[key] = throughput.run_json(
                            [throughput.__file__, "--torch-worker", "eager", "--steps", str(max(5, steps)),
                             "--worker", "1", "--overrides", json.dumps(shape)], f"PyTorch eager {shape}")
                    except RuntimeError as e:
                        torch_cache[key] = {"error": str(e).strip().splitlines()[-1][:300]}
                t = torch_cache[key]
                row["torch_eager_model_steps_per_s"] = t.get("model_steps_per_s")
                row["torch_eager_peak_rss_bytes"] = t.get("peak_rss_bytes")
                if t.get("model_steps_per_s"):
                    row["vs_torch_eager"] = row["model_steps_per_s"] / t["model_steps_per_s"]
            rows.append(row)
            print(line(row), flush=True)
    device = jax.devices()[0]
    name = f"cost-curves-{device.platform}-{os.cpu_count()}cores".lower()
    kind = f"{os.cpu_count()}-core CPU" if device.platform == "cpu" else device.device_kind
    results = {"device": kind, "matmul_peak": peak, "rows": rows,
               "base": {"members": BASE_MEMBERS, "seq_len": 50, "d_model": 64, "d_vocab": 64, "batch_size": 64},
               "wall_s": time.time() - started, "quick": args.quick}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, out / f"{name}.png")
    print(f"wrote {out / (name + '.json')} and {out / (name + '.png')} in {results['wall_s']:.0f} s")


def line(row: dict) -> str:
    head = f"{row['axis']:>8} {row['value']:>5} ({row['members']:>4} members)"
    if "error" in row:
        return f"{head}: not measured: {row['error']}"
    torch = (f"; PyTorch eager {row['torch_eager_model_steps_per_s']:7.1f} ({row['vs_torch_eager']:.2f}x)"
             if row.get("vs_torch_eager") else "")
    return (f"{head}: {row['model_steps_per_s']:8.1f} model-steps/s {row['tokens_per_s'] / 1e6:7.3f} Mtok/s "
            f"{row['fraction_of_matmul_peak']:5.0%} of matmul peak, peak RSS {row['peak_rss_bytes'] / 2 ** 30:5.2f} GiB, "
            f"XLA temporaries {row['xla_temp_bytes'] / 2 ** 20:8.1f} MiB, compile {row['compile_s']:5.1f} s{torch}")


def plot(results: dict, path: Path) -> None:
    from induction_jax.plots import plt, save

    axes_present = list(dict.fromkeys(r["axis"] for r in results["rows"]))
    fig, axs = plt.subplots(2, len(axes_present), figsize=(4.0 * len(axes_present), 6.6), squeeze=False)
    labels = {"members": "members", "seq_len": "sequence length T", "d_model": "d_model", "d_vocab": "vocabulary",
              "text": "members (text task, T = 128)"}
    for j, axis in enumerate(axes_present):
        rows = [r for r in results["rows"] if r["axis"] == axis and "error" not in r]
        x = [r["value"] for r in rows]
        top, bottom = axs[0, j], axs[1, j]
        rate = "tokens_per_s" if axis == "text" else "model_steps_per_s"
        top.plot(x, [r[rate] for r in rows], "o-", label="induction-jax")
        tx = [(r["value"], r["torch_eager_model_steps_per_s"]) for r in rows if r.get("torch_eager_model_steps_per_s")]
        if tx:
            top.plot(*zip(*tx), "s--", color="tab:red", label="PyTorch eager loop")
        top.set_ylabel("tokens / s" if axis == "text" else "model-steps / s")
        bottom.plot(x, [r["peak_rss_bytes"] / 2 ** 30 for r in rows], "o-", label="peak RSS")
        temps = [(r["value"], r["xla_temp_bytes"] / 2 ** 30) for r in rows if r["xla_temp_bytes"] > 0]
        if temps:
            bottom.plot(*zip(*temps), "^:", label="XLA temporaries")
        bottom.set_ylabel("GiB")
        for ax in (top, bottom):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(labels[axis])
            ax.grid(alpha=0.3)
        top.legend(fontsize=7)
        bottom.legend(fontsize=7)
    fig.suptitle(f"How training's cost grows ({results['device']}; one setting moves from the reference)",
                 fontsize=10)
    save(fig, path)


if __name__ == "__main__":
    main()
