"""--log tensorboard / wandb: the trackers' files, read back with the trackers' own readers
(TensorBoard's EventAccumulator and event-file loader; `wandb leet inspect`), hold exactly the
values of metrics.csv, once each, also across a resume that re-computes logged steps."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny

from induction_jax import tracking
from induction_jax.cli import main
from induction_jax.metrics import read_metrics

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.backend.event_processing.event_file_loader import LegacyEventFileLoader  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

METRICS = ("loss", "loss_first_half", "loss_second_half", "in_context_score", "probe_loss_second_half",
           "prev_token_score", "induction_score")


def _train(out: Path, *flags: str, steps: int = 40) -> None:
    assert main(["train", *tiny(checkpoint_every=20), "--steps", str(steps), "--out", str(out), *flags]) == 0


def _resume(out: Path, *flags: str) -> None:
    assert main(["train", "--resume", str(out), "--no-analysis", "--no-progress", *flags]) == 0


def _expected(run: Path) -> dict[tuple[int, str], dict[int, float]]:
    """(member, metric) -> {step: value} of metrics.csv's finite values."""
    table = read_metrics(run / "metrics.csv")
    out: dict = {}
    for name in METRICS:
        have = np.isfinite(table[name])
        for m, s, v in zip(table["member"][have].astype(int), table["step"][have].astype(int), table[name][have]):
            assert s not in out.setdefault((m, name), {})
            out[(m, name)][s] = v
    return out


def _check_same(got: dict[tuple[int, str], list[tuple[int, float]]], run: Path) -> None:
    """`got`: (member, metric) -> every (step, value) logged; once per step, equal to metrics.csv."""
    want = _expected(run)
    assert set(got) == set(want)
    for key, points in got.items():
        steps = [s for s, _ in points]
        assert len(steps) == len(set(steps)), f"{key}: a step logged twice"
        assert sorted(steps) == sorted(want[key]), key
        np.testing.assert_allclose([v for _, v in sorted(points)], [want[key][s] for s in sorted(steps)],
                                   rtol=1e-5, atol=1e-6, err_msg=str(key))


def _raw_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar event of every event file in `logdir` (TensorBoard's own loader, no dedup)."""
    out: dict = {}
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        for event in LegacyEventFileLoader(str(path)).Load():
            for v in event.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def _hparams(acc: EventAccumulator) -> dict:
    md = acc.SummaryMetadata("_hparams_/session_start_info")
    info = plugin_data_pb2.HParamsPluginData.FromString(md.plugin_data.content).session_start_info
    return {k: (v.number_value if v.HasField("number_value") else v.string_value) for k, v in info.hparams.items()}


def test_tensorboard_ensemble_scalars_equal_metrics_csv(tmp_path):
    run = tmp_path / "run"
    _train(run, "--log", "tensorboard")
    acc = EventAccumulator(str(run / "tensorboard" / "ensemble"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {f"member{m}/{k}" for m in (0, 1) for k in METRICS}
    _check_same({(int(t[6:t.index("/")]), t[t.index("/") + 1:]): [(e.step, e.value) for e in acc.Scalars(t)]
                 for t in acc.Tags()["scalars"]}, run)
    hp = _hparams(acc)
    assert hp["train.seeds"] == 2 and hp["train.steps"] == 40 and hp["task.name"] == "repeated"
    assert "| 1 | 1 | 1 | 0.003 |" in acc.Tensors("members")[0].tensor_proto.string_val[0].decode()
    assert "tensorboard/" in (run / ".induction-jax-manifest").read_text().split()   # --overwrite removes it


def test_tensorboard_per_member_resume_logs_each_point_once(tmp_path):
    """Killed after checkpoint 40 with steps to 60 logged: the resume re-computes 41-60 and goes on
    to 80; every point is in the event files once, as metrics.csv has it."""
    run = tmp_path / "run"
    _train(run, "--log", "tensorboard", "--log-group", "member", steps=60)
    shutil.rmtree(run / "checkpoints" / "60")
    _resume(run, "--steps", "80")
    assert sorted(p.name for p in (run / "tensorboard").iterdir()) == ["member0", "member1"]
    got = {}
    for m in (0, 1):
        logdir = run / "tensorboard" / f"member{m}"
        assert len(list(logdir.glob("events.out.tfevents.*"))) == 2          # one file per session
        got |= {(m, tag): points for tag, points in _raw_scalars(logdir).items()}
        acc = EventAccumulator(str(logdir))
        acc.Reload()
        hp = _hparams(acc)
        assert hp["member"] == m and hp["init_seed"] == m and hp["lr"] == pytest.approx(3e-3)
    _check_same(got, run)
    assert max(s for points in got.values() for s, _ in points) == 80


def test_tracker_switched_on_at_resume_catches_up_with_the_table(tmp_path):
    run = tmp_path / "run"
    _train(run)
    assert not (run / "tensorboard").exists()
    _resume(run, "--steps", "60", "--log", "tensorboard")
    _check_same({(int(t[6:t.index("/")]), t[t.index("/") + 1:]): points
                 for t, points in _raw_scalars(run / "tensorboard" / "ensemble").items()}, run)
    assert json.loads((run / "config.json").read_text())["config"]["track"]["log"] == "tensorboard"


def _wandb_children() -> list[int]:
    """wandb's service processes started by this process."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmd = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and b"wandb" in cmd:
            kids.append(int(stat.parent.name))
    return kids


def test_wandb_offline_run_holds_the_config_and_scalars_once_across_a_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)          # offline is the default: no network
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    run = tmp_path / "run"
    _train(run, "--log", "wandb", steps=60)
    shutil.rmtree(run / "checkpoints" / "60")
    _resume(run)
    assert not _wandb_children()                 # its service process was shut down
    run_id = (run / "wandb" / "run_id").read_text().strip()
    files = sorted((run / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 2                       # the resume: a second offline folder, same run id
    records = [r for f in files for r in tracking.wandb_records(f)]
    config = next(r for r in records if r["type"] == "run")["run"]["config"]["update"]
    assert config["train"]["seeds"] == 2 and config["task"]["name"] == "repeated"
    assert config["members"]["init_seed"] == [0, 1] and config["members"]["lr"] == [0.003, 0.003]
    got: dict = {}
    for r in records:
        if r["type"] == "history":
            step = int(r["history"]["step"]["num"])
            for key, value in r["history"]["item"].items():
                if not key.startswith("_"):
                    got.setdefault((int(key[6:key.index("/")]), key[key.index("/") + 1:]), []).append((step, value))
    _check_same(got, run)


@pytest.mark.parametrize("flags, message", [
    (["--log", "tensorbord"], "--log: log='tensorbord': must be one of none, tensorboard, wandb, tensorboard+wandb"),
    (["--log", "tensorboard", "--log-group", "seed"], "--log-group: log_group='seed': must be one of ensemble, member"),
])
def test_a_bad_log_value_is_one_line_naming_the_flag_and_writes_nothing(capsys, tmp_path, flags, message):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"induction-jax train: error: {message}"
    assert not out.exists()


def test_a_tracker_not_installed_is_one_line_before_anything_is_written(capsys, tmp_path, monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    out = tmp_path / "run"
    assert main(["train", *tiny(), "--out", str(out), "--log", "tensorboard+wandb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("needs the wandb package, which is not installed (pip install 'induction-jax[track]')")
    assert len(err.splitlines()) == 1 and not out.exists()
