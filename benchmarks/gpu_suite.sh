#!/usr/bin/env bash
# The first thing to run on a machine with a GPU (benchmarks/gpu_suite.py says what it
# measures): about 9 minutes on one GPU; writes benchmarks/results/<device>.json and that
# device's section of docs/performance.md. Needs no GPU: GPU_SUITE_TINY=1 (or --tiny) runs a
# tiny version on a CPU in a minute or two.
#
#     benchmarks/gpu_suite.sh [--tiny] [--out-json PATH] [--docs PATH] [--budget-s 510]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
exec "$PYTHON" benchmarks/gpu_suite.py "$@"
