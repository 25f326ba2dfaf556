"""The task seam is real: a task defined here, in the test file, trains as an ensemble with a
parameter swept per member, is probed, timed and reported, without editing the package; and
bad task input is refused in one line before anything is written."""

from __future__ import annotations

import json
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import induction_jax as ij
from induction_jax import tasks
from induction_jax.config import ConfigError, RunConfig, config_field
from induction_jax.losses import token_losses


# ---- a toy task: copy the token k positions back (about 40 lines) ---------------------------------
@tasks.register
@dataclass(frozen=True)
class CopyBack(tasks.Task):
    """Random tokens in which every token from position k on repeats the one k positions back."""

    name = "copy_back_test"
    length: int = config_field(12, "sequence length T", lo=4, hi=1000)
    step_metrics = (tasks.Metric("loss", "mean next-token loss", -1, 1.0, "nats"),
                    tasks.Metric("loss_copied", "loss on the copied targets", -1, 1.0, "nats"))
    probe_metric_info = (tasks.Metric("copy_gain", "loss on the fresh targets minus on the copied ones", 1, 0.5,
                                      "nats"),)
    timing_curves = ("copy_gain",)
    primary_curve, step_curve, progress_metric = "copy_gain", "loss_copied", "loss_copied"
    plot_metrics = ("loss", "loss_copied")

    @property
    def seq_len(self) -> int:
        return self.length

    def member_params(self):
        return (tasks.MemberParam("k", "how far back the copied token is", int, 3, 2, self.length // 2),)

    def _tokens(self, key, k, batch_size, d_vocab):
        fresh = jax.random.randint(key, (batch_size, self.length), 0, d_vocab)
        return jnp.take_along_axis(fresh, jnp.broadcast_to(jnp.arange(self.length) % k, fresh.shape), axis=1)

    def sample(self, key, params, batch_size, d_vocab):
        k = params.get("k", 3)
        return {"tokens": self._tokens(key, k, batch_size, d_vocab), "k": jnp.full((batch_size,), k)}

    def losses(self, logits_BTV, batch):
        loss_BT = token_losses(logits_BTV, batch["tokens"])
        copied = jnp.arange(1, self.length)[None, :] >= batch["k"][:, None]
        return {"loss": loss_BT.mean(), "loss_copied": (loss_BT * copied).sum() / copied.sum(),
                "loss_fresh": (loss_BT * ~copied).sum() / (~copied).sum()}

    def probe(self, key, params, batch_size, d_vocab):
        return {"tokens": self._tokens(key, 3, batch_size, d_vocab), "k": jnp.full((batch_size,), 3)}

    def probe_metrics(self, logits_BTV, acts, batch):
        out = self.losses(logits_BTV, batch)
        return {"copy_gain": out["loss_fresh"] - out["loss_copied"]}
# ------------------------------------------------------------------------------------------------------


def _cfg(**kw):
    return RunConfig().replace(task=CopyBack(), d_vocab=16, n_ctx=12, n_heads=2, d_model=16, seeds=2, steps=300,
                               eval_every=10, batch_size=16, probe_batch_size=16, lr=1e-2, **kw)


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    """A sweep of the toy task: k = 2, 3, 4 per member, crossed with 2 seeds, in one compiled ensemble."""
    out = tmp_path_factory.mktemp("toy") / "run"
    run = ij.sweep(_cfg(), out, task_params={"k": [2, 3, 4]}, progress=False)   # loss_fresh: computed, not kept
    run.phase()
    from induction_jax.report import write_report
    write_report(run.dir)
    return run


def test_a_task_defined_in_a_test_file_trains_probes_times_and_reports(toy_run):
    run = toy_run
    assert run.config.task == CopyBack() and run.members.task["k"].tolist() == [2, 2, 3, 3, 4, 4]
    meta = json.loads((run.path / "config.json").read_text())
    assert meta["config"]["task"] == {"name": "copy_back_test", "length": 12}
    assert meta["members"]["k"] == [2, 2, 3, 3, 4, 4]
    header = (run.path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header == ["member", "init_seed", "data_seed", "lr", "weight_decay", "arm", "k", "step", "loss",
                      "loss_copied", "copy_gain"]
    m = run.metrics()
    last = m[m.step == m.step.max()]
    # every member learnt to copy from its own k back; the probe copies from 3 back, which only
    # the k = 3 members learnt (a member trained on k = 4 predicts the wrong token there: gain < 0)
    assert (last.loss_copied < 1.0).all(), last
    gain = m.dropna(subset=["copy_gain"]).groupby("member").copy_gain.last()
    assert (gain[[2, 3]] > 1.0).all() and (gain[[4, 5]] < 0).all(), gain
    timings = (run.path / "phase" / "timings.csv").read_text()
    assert "copy_gain" in timings and "loss_copied" in timings
    stats = json.loads((run.path / "phase" / "stats.json").read_text())
    assert stats["curves"] == ["copy_gain", "loss_copied"] and stats["primary_curve"] == "copy_gain"
    assert set(stats["arms"]) == {"k 2", "k 3", "k 4"}          # the per-member parameter groups the arms
    html = (run.path / "report.html").read_text()
    assert "copy gain" in html and "k 3" in html


def test_members_differ_only_in_their_task_parameter(toy_run):
    # k is data on the ensemble axis: member (seed 0, k=2) and (seed 0, k=4) share their init, so
    # their step-0 probes agree, and their training differs from the first step on.
    m = toy_run.metrics()
    first = m[m.step == 0].set_index("member")
    assert first.copy_gain[0] == first.copy_gain[4]
    step1 = m[m.step == 1].set_index("member")
    assert step1.loss_copied[0] != step1.loss_copied[4]


@pytest.mark.parametrize("argv, message", [
    (["--task-param", "nope=1,2"], r"--task-param nope: not a parameter of task repeated; allowed: min_period$"),
    (["--task-param", "min_period=1,25"], r"--task-param min_period: min_period='1' out of range; allowed: "
                                          r"integers 2\.\.25$"),
    (["--task-param", "min_period=5", "--task-param", "min_period=10"],
     r"--task-param min_period: given twice; list all its values in one flag, e.g. --task-param min_period=5,\.\.\.$"),
    (["--task-param", "min_period"], r"--task-param 'min_period': must be NAME=v1,v2,\.\.\. \(parameters of task "
                                     r"repeated: min_period\)$"),
    # the range of a task parameter follows the task's own flags (here the half length)
    (["--task-param", "min_period=41", "--half-length", "40", "--n-ctx", "80"],
     r"--task-param min_period: min_period='41' out of range; allowed: integers 2\.\.40$"),
    # a task switched with --task is checked against the model its flags set, not the default one
    (["--task", "markov", "--chain-length", "100", "--n-ctx", "100", "--markov-alpha", "0"],
     r"markov_alpha=0\.0: must be > 0\.0"),
    (["--task", "markov", "--chain-length", "100", "--n-ctx", "99"],
     r"markov: sequences of 100 tokens must fit the context n_ctx=99$"),
    (["--task", "nope"], r"argument --task: invalid choice: 'nope' \(choose from .*repeated.*\)$"),
    (["--task", "copy_back_test", "--half-length", "6"], r"--half-length: not a setting of task copy_back_test; "
                                                          r"its settings: --length$"),
])
def test_bad_task_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, argv, message):
    import re

    from induction_jax.cli import main
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) if "invalid choice" in message else _no_raise():
        code = main(["sweep", "--out", str(out), "--seeds", "2", "--steps", "10", "--no-progress", *argv])
        assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(message, err[-1]), err
    assert not out.exists()


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_task_config_round_trips_and_names_what_is_allowed():
    cfg = _cfg()
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match=r"^config.task.name nope: unknown task; allowed: .*repeated"):
        RunConfig.from_dict({"task": {"name": "nope"}})
    with pytest.raises(ConfigError, match=r"^config.task: 'half_length' is not a parameter of task copy_back_test; "
                                          r"allowed: length$"):
        RunConfig.from_dict({"task": {"name": "copy_back_test", "half_length": 6}})
    with pytest.raises(ConfigError, match=r"^length=2: must be >= 4"):
        _cfg(length=2)
    with pytest.raises(ConfigError, match=r"^copy_back_test: sequences of 30 tokens must fit the context n_ctx=12$"):
        _cfg(length=30)
    with pytest.raises(ValueError, match="already registered"):
        tasks.register(type("Other", (CopyBack,), {"name": "copy_back_test", "__module__": "elsewhere"}))


def test_a_config_of_version_0_2_reads_as_the_repeated_task():
    old = {"model": {"d_vocab": 16, "n_ctx": 12}, "data": {"half_length": 6, "min_half_length": 0, "replace": True,
                                                           "batch_size": 8}, "train": {"steps": 40}}
    cfg = RunConfig.from_dict(old)
    assert cfg.task == tasks.Repeated(half_length=6) and cfg.data.batch_size == 8
    assert cfg.to_dict()["task"] == {"name": "repeated", "half_length": 6, "min_half_length": 0, "replace": True}
    assert "half_length" not in cfg.to_dict()["data"]


def test_member_tables_check_task_columns():
    from induction_jax.members import Members, MembersError
    cfg = RunConfig().replace(seeds=2)
    m = Members.grid(cfg, task_params={"min_period": [5, 25]})
    assert m.table()["min_period"] == [5, 5, 25, 25]
    assert Members.from_table(m.table(), cfg.task).table() == m.table()
    bad = dict(m.table(), min_period=[5, 5, 25, 99])
    with pytest.raises(MembersError, match=r"^members.min_period: min_period=99(\.0)? out of range; allowed: "
                                           r"integers 2\.\.25$"):
        Members.from_table(bad, cfg.task)
    old = {k: v for k, v in m.table().items() if k != "min_period"}
    assert Members.from_table(old, cfg.task).task == {}          # a 0.2 table: every member the task default
    assert np.all(Members.from_table(old, cfg.task).task_values(cfg.task)["min_period"] == 10)
