"""Sharding over devices and training in member groups change nothing but speed and memory."""

import os

import jax
import numpy as np
import pandas as pd
import pytest

from induction_jax import ensemble, memory
from induction_jax.members import Members
from induction_jax import training as train_lib


def run(cfg, members, devices=None, group=None):
    chunks = []
    state = ensemble.init_ensemble(cfg, members, devices)
    state = ensemble.train(cfg, state, 0, lambda s, r: chunks.append(r), group=group)
    return state, {k: np.concatenate([c.metrics[k] for c in chunks], 1) for k in cfg.task.step_metric_names()}


@pytest.fixture(scope="module")
def setup(small_cfg):
    cfg = small_cfg.replace(steps=40, eval_every=20, chunk_steps=40, seeds=4)
    return cfg, Members.from_config(cfg)


def test_cpu_cores_are_exposed_as_devices():
    assert len(jax.devices()) == (jax.local_device_count())
    assert len(jax.devices()) >= 2 or (jax.devices()[0].platform != "cpu")


def assert_same_training(a, b):
    """Equal to float32 rounding: the same per-member math, compiled for other batch shapes."""
    (s1, m1), (s2, m2) = a, b
    for k in m1:
        np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5, atol=1e-6)
    for k in s1.params:
        np.testing.assert_allclose(s1.params[k], s2.params[k], rtol=1e-4, atol=1e-5)


def test_sharded_equals_unsharded(setup):
    cfg, members = setup
    sharding = ensemble.ensemble_sharding(len(members))
    assert len(sharding.mesh.devices.ravel()) == min(len(jax.devices()), 4) or len(jax.devices()) == 3
    assert_same_training(run(cfg, members, devices=jax.devices()[:1]), run(cfg, members))


def test_member_loop_map_equals_vmap(setup):
    """Members one after another on each device (`map`, the CPU default) or batched (`vmap`)."""
    cfg, members = setup
    assert memory.member_loop(cfg.replace(member_loop="auto")) == (
        "map" if jax.default_backend() == "cpu" else "vmap")
    assert_same_training(run(cfg.replace(member_loop="map"), members),
                         run(cfg.replace(member_loop="vmap"), members))


def test_member_groups_equal_one_call(setup):
    cfg, members = setup
    assert_same_training(run(cfg, members), run(cfg, members, group=2))


def test_group_planning_and_resource_errors(setup):
    cfg, members = setup
    assert memory.plan_groups(cfg, 4, jax.devices()) == 4           # small: no estimate needed
    assert memory.plan_groups(cfg.replace(member_group=2), 4, jax.devices()) == 2
    with pytest.raises(memory.ResourceError, match="member_group=8: larger than the ensemble"):
        memory.plan_groups(cfg.replace(member_group=8), 4, jax.devices())
    with pytest.raises(memory.ResourceError, match="devices=99"):
        ensemble.select_devices(99)
    huge = cfg.replace(batch_size=200_000, probe_batch_size=1)
    with pytest.raises(memory.ResourceError, match="one member needs about"):
        memory.plan_groups(huge, 1, jax.devices())
    logs = []
    group = memory.plan_groups(cfg.replace(batch_size=2_000, member_loop="vmap"), 20_000, jax.devices(),
                               log=logs.append)
    assert 0 < group < 20_000 and group % len(jax.devices()) == 0
    assert "MiB per member" in logs[0]
    # More members than the host can hold the state of: refused up front, with the estimate.
    with pytest.raises(memory.ResourceError, match=r"100000 members need about .* GiB of host memory.*at most \d+"):
        memory.plan_groups(cfg.replace(d_model=64), 100_000, jax.devices())
    # A probe batch that cannot fit is in the estimate too.
    with pytest.raises(memory.ResourceError, match="one member needs about"):
        memory.plan_groups(cfg.replace(probe_batch_size=1_000_000), 1, jax.devices())


def test_two_processes_equal_one(tmp_path):
    """Two processes on this machine (jax.distributed over localhost, gloo) train one ensemble
    sharded over both; the result equals the single-process run."""
    import socket
    import subprocess
    import sys

    from induction_jax.analysis.weights import load_run_params

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tiny = ["--d-vocab", "16", "--half-length", "6", "--n-ctx", "12", "--d-model", "16", "--n-heads", "2",
            "--batch-size", "16", "--probe-batch-size", "8", "--seeds", "4", "--steps", "60",
            "--eval-every", "20", "--chunk-steps", "20", "--checkpoint-every", "40", "--no-analysis",
            "--no-progress"]
    env = dict(os.environ, INDUCTION_JAX_CPU_DEVICES="1")
    one = subprocess.run([sys.executable, "-m", "induction_jax.cli", "train", *tiny, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, env=env)
    assert one.returncode == 0, one.stderr
    procs = [subprocess.Popen([sys.executable, "-m", "induction_jax.cli", "train", *tiny, "--out", str(tmp_path / "two"),
                               "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    a, b = (pd.read_csv(tmp_path / name / "metrics.csv") for name in ("one", "two"))
    assert list(a.columns) == list(b.columns) and (a["arm"] == b["arm"]).all()
    numeric = [c for c in a.columns if c != "arm"]
    np.testing.assert_allclose(a[numeric].to_numpy(float), b[numeric].to_numpy(float), rtol=1e-5, atol=1e-6, equal_nan=True)
    pa, pb = load_run_params(tmp_path / "one"), load_run_params(tmp_path / "two")
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=1e-4, atol=1e-6)
