"""Size and load time of the metrics table at scale: metrics.csv against Parquet, side by side.

Builds the table a run of `--members` x `--steps` writes (the real columns and format, probes
every 10 steps, values random), writes it chunk by chunk as training does, and times reading
it back with the project's reader (pandas' C parser) and, where pyarrow is installed, as a
Parquet file.

    python benchmarks/metrics_table.py [--members 1024] [--steps 2000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--chunk", type=int, default=100, help="steps written per chunk")
    args = parser.parse_args()

    from induction_jax.members import Members
    from induction_jax.metrics import TableWriter, chunk_rows, format_rows, metric_columns, read_metrics
    from induction_jax.tasks import Repeated

    task = Repeated()
    step_metrics, probe_metrics = task.step_metric_names(), task.probe_metric_names()

    E = args.members
    seeds = np.arange(E)
    members = Members(seeds, seeds, np.full(E, 1e-2), np.full(E, 0.01))
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    csv = tmp / "metrics.csv"
    columns = metric_columns(task, members)
    writer = TableWriter(csv, columns)
    tic = time.perf_counter()
    for start in range(0, args.steps, args.chunk):
        steps = np.arange(start + 1, start + args.chunk + 1)
        probe_steps = steps[steps % 10 == 0]
        table = chunk_rows(columns, members, steps, {k: rng.random((E, len(steps))) for k in step_metrics},
                           probe_steps, {k: rng.random((E, len(probe_steps))) for k in probe_metrics}, np.full(E, -1))
        writer.write(format_rows(columns, table, members))
    write_s = time.perf_counter() - tic
    size = csv.stat().st_size
    tic = time.perf_counter()
    table = read_metrics(csv)
    read_s = time.perf_counter() - tic
    rows = len(table["step"])
    print(f"metrics.csv for {E} members x {args.steps} steps: {rows:,} rows, {size / 2**20:.0f} MiB; "
          f"written in {write_s:.1f} s ({args.steps // args.chunk} chunks), read in {read_s:.2f} s")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        print("pyarrow not installed: no Parquet comparison")
        return
    parquet = tmp / "metrics.parquet"
    tic = time.perf_counter()
    pq.write_table(pa.table(table), parquet)
    pq_write = time.perf_counter() - tic
    tic = time.perf_counter()
    back = pq.read_table(parquet)
    {name: back[name].to_numpy() for name in back.column_names}
    pq_read = time.perf_counter() - tic
    print(f"Parquet of the same table: {parquet.stat().st_size / 2**20:.0f} MiB; written in {pq_write:.2f} s "
          f"(one file; training appends chunk by chunk), read in {pq_read:.2f} s; CSV / Parquet read time "
          f"{read_s / pq_read:.1f}x, size {size / parquet.stat().st_size:.1f}x")


if __name__ == "__main__":
    main()
