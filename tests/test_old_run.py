"""A run directory written by induction-jax 0.2 (before tasks were a parameter: the repeated
task's settings in config.json's data section, no task columns in the members table) still
opens, resumes, analyses and reports, as the repeated task. Its numbers are compared with
today's to float32 rounding, not bitwise: XLA:CPU's code (and so the last bits of every sum)
depends on the CPU's instruction set and on the compiler flags (the suite compiles with faster
ones), and on this AVX-512 machine the 0.2 metrics differ from today's by up to 1e-5 (the CSV's
6 significant digits).

The fixture tests/fixtures/run_v020 was written by 0.2.0 (commit a445cfc) with
`induction-jax train --d-vocab 16 --n-ctx 12 --half-length 6 --n-heads 2 --d-model 16 --seeds 2
--steps 40 --eval-every 5 --checkpoint-every 20 --snapshots every:20 --batch-size 8
--probe-batch-size 8`; its figures, report and step-0 checkpoint were left out to keep it small.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import induction_jax as ij
from induction_jax.tasks import Repeated

FIXTURE = Path(__file__).parent / "fixtures" / "run_v020"


@pytest.fixture()
def old_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


def test_an_old_run_opens_as_the_repeated_task(old_run):
    run = ij.open_run(old_run)
    assert run.config.task == Repeated(half_length=6)
    assert run.members.task == {} and len(run.members) == 2
    assert "in_context_score" in run.metrics().columns


def _assert_same_table(old: Path, new: Path, tol: float = 1e-4):
    """The same rows and columns (the new table may have more columns); float columns equal to
    `tol` (absolute and relative), the others exactly."""
    import numpy as np
    import pandas as pd

    a, b = pd.read_csv(old), pd.read_csv(new)
    assert a.shape[0] == b.shape[0] and set(a.columns) <= set(b.columns)
    for c in a.columns:
        if a[c].dtype.kind == "f":
            np.testing.assert_allclose(b[c].to_numpy(), a[c].to_numpy(), rtol=tol, atol=tol, err_msg=c)
        else:
            assert (a[c].to_numpy() == b[c].to_numpy()).all(), c


def test_an_old_run_resumes_and_analyses_and_reports(old_run, tmp_path):
    from induction_jax.runner import resume_run, train_run

    resume_run(old_run, {"steps": 60}, progress=False)
    fresh = train_run(ij.open_run(old_run).config, tmp_path / "fresh", progress=False)
    # the 0.2 steps 0-40 and their resumed steps 40-60 are today's fresh run (to float32 rounding);
    # today's table has one more column (the task parameter min_period), which the old run's
    # members table does not have
    _assert_same_table(old_run / "metrics.csv", fresh.path / "metrics.csv")
    _assert_same_table(old_run / "head_metrics.csv", fresh.path / "head_metrics.csv")
    assert "min_period" in (fresh.path / "metrics.csv").read_text().splitlines()[0].split(",")
    meta = json.loads((old_run / "config.json").read_text())
    assert meta["config"]["task"] == {"name": "repeated", "half_length": 6, "min_half_length": 0, "replace": True}
    assert "min_period" not in meta["members"]
    run = ij.open_run(old_run)
    run.analyze()
    run.phase()                                  # the API writes report.html after each analysis
    html = (old_run / "report.html").read_text()
    assert "in context score" in html.lower() and "Phase change" in html
