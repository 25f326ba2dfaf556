"""A run directory written by induction-jax 0.2 (before tasks were a parameter: the repeated
task's settings in config.json's data section, no task columns in the members table) still
opens, resumes bitwise, analyses and reports, as the repeated task.

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


def _drop_column(text: str, name: str) -> str:
    lines = text.splitlines(keepends=True)
    i = lines[0].rstrip("\n").split(",").index(name)
    return "".join(",".join(c for j, c in enumerate(line.rstrip("\n").split(",")) if j != i) + "\n" for line in lines)


def test_an_old_run_opens_as_the_repeated_task(old_run):
    run = ij.open_run(old_run)
    assert run.config.task == Repeated(half_length=6)
    assert run.members.task == {} and len(run.members) == 2
    assert "in_context_score" in run.metrics().columns


def test_an_old_run_resumes_bitwise_and_analyses_and_reports(old_run, tmp_path):
    from induction_jax.runner import resume_run, train_run

    resume_run(old_run, {"steps": 60}, progress=False)
    fresh = train_run(ij.open_run(old_run).config, tmp_path / "fresh", progress=False)
    # the same numbers as today's code trains from scratch; today's table has one more column
    # (the task parameter min_period), which the old run's members table does not have
    new = (fresh.path / "metrics.csv").read_text()
    assert (old_run / "metrics.csv").read_text() == _drop_column(new, "min_period")
    assert (old_run / "head_metrics.csv").read_bytes() == (fresh.path / "head_metrics.csv").read_bytes()
    meta = json.loads((old_run / "config.json").read_text())
    assert meta["config"]["task"] == {"name": "repeated", "half_length": 6, "min_half_length": 0, "replace": True}
    assert "min_period" not in meta["members"]
    run = ij.open_run(old_run)
    run.analyze()
    run.phase()                                  # the API writes report.html after each analysis
    html = (old_run / "report.html").read_text()
    assert "in context score" in html.lower() and "Phase change" in html
