"""Snapshots, in-training weight probes and the formation analysis of `dynamics`."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import tiny, tree_digest
from handbuilt import P, build
from induction_jax.cli import main
from induction_jax.dynamics.formation import formation_steps, orders
from induction_jax.dynamics.trajectories import snapshot_analysis

SNAP = ["--snapshots", "every:50", "--steps", "300"]


def _train(out, *extra):
    return subprocess.run([sys.executable, "-m", "induction_jax.cli", "train", *tiny(), *SNAP, "--out", str(out), *extra],
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("snap") / "run"
    done = _train(out)
    assert done.returncode == 0, done.stderr
    assert "snapshots: 7 steps (every:50: 0, 50, 100, 150, 200, 250, 300) of 2 members" in done.stderr
    return out


def test_snapshots_are_plain_arrays_of_the_whole_ensemble(snap_run):
    from induction_jax.analysis.weights import load_run_params
    files = sorted((snap_run / "snapshots").glob("step_*.npz"))
    assert [f.name for f in files] == [f"step_{s:08d}.npz" for s in (0, 50, 100, 150, 200, 250, 300)]
    with np.load(files[-1]) as f:                                    # no template needed
        last = {k: f[k] for k in f.files if not k.startswith("__")}
    final = load_run_params(snap_run)
    for k in final:
        np.testing.assert_array_equal(last[k], final[k])              # the last snapshot is the final params
    assert "snapshots/" in (snap_run / ".induction-jax-manifest").read_text()


def test_head_metrics_table_and_its_agreement_with_the_analysis(snap_run):
    import pandas as pd

    from induction_jax.analysis.score import analyze_params
    from induction_jax.arrays import load_arrays
    table = pd.read_csv(snap_run / "head_metrics.csv")
    assert list(table.columns) == ["member", "step", "layer", "head", "metric", "value"]
    assert set(table.step) == set(range(0, 301, 10))
    assert {"positional_prev_token_score", "k_composition_from_L0H1", "q_composition_from_L0H0",
            "v_composition_from_L0H0"} <= set(table.metric)
    params = {k: v for k, v in load_arrays(snap_run / "snapshots" / "step_00000150.npz").items()}
    result = analyze_params(params, period=6)
    row = table[(table.member == 1) & (table.step == 150) & (table.layer == 1) & (table["head"] == 0)]
    k = row[row.metric == "k_composition_from_L0H1"].value.item()
    assert k == pytest.approx(result["scores"]["k_composition"][1, 0, 1, 1, 0], rel=1e-4)
    pos = table[(table.member == 0) & (table.step == 150) & (table.layer == 0) & (table["head"] == 1)
                & (table.metric == "positional_prev_token_score")].value.item()
    assert pos == pytest.approx(result["scores"]["positional_prev_token_score"][0, 0, 1], rel=1e-4)


def test_snapshot_analysis_equals_analyze_and_a_per_snapshot_loop(snap_run):
    from induction_jax import snapshots
    from induction_jax.analysis.score import analyze_params
    from induction_jax.rundir import RunDir
    steps, params = snapshots.load(RunDir(snap_run))
    batched = snapshot_analysis(params, 6, batch=3, probe_batch=64)
    whole = snapshot_analysis(params, 6, batch=None, probe_batch=64)
    for name in ("induction_score", "mean_ablation_delta", "ov_copying_score", "k_composition"):
        np.testing.assert_allclose(batched["scores"][name], whole["scores"][name], rtol=1e-5, atol=1e-6)
    for s in (1, 4):                                    # a loop over snapshots, one analysis each
        one = analyze_params({k: v[s] for k, v in params.items()}, 6, probe_batch=64)
        for name in ("prev_token_score", "induction_score", "mean_ablation_delta", "positional_prev_token_score",
                     "ov_copying_score"):
            np.testing.assert_allclose(batched["scores"][name][s], one["scores"][name], rtol=1e-4, atol=1e-5)


def test_dynamics_command_writes_its_outputs(capsys, snap_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(snap_run, run)
    assert main(["dynamics", str(run), "--member", "1"]) == 0
    assert "formation orders" in capsys.readouterr().out
    stats = json.loads((run / "dynamics" / "stats.json").read_text())
    assert stats["snapshot_steps"] == [0, 50, 100, 150, 200, 250, 300] and len(stats["members"]) == 2
    assert {"order_counts", "lags", "median_step"} <= set(stats)
    for name in ("trajectories.png", "order.png", "animation.gif", "formation.csv", "trajectories.npz"):
        assert (run / "dynamics" / name).stat().st_size > 500
    assert "Formation in the weights" in (run / "report.html").read_text()


def test_dynamics_bad_input(capsys, snap_run, reference, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(reference, plain)
    assert main(["dynamics", str(plain)]) == 2
    assert "has no snapshots; train with --snapshots log" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(snap_run, broken)
    victim = broken / "snapshots" / "step_00000150.npz"
    victim.write_bytes(victim.read_bytes()[:300])
    before = tree_digest(broken)
    assert main(["dynamics", str(broken)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "step_00000150.npz: unreadable, truncated or damaged" in err
    assert tree_digest(broken) == before
    for spec, fragment in (("every:0", "a schedule with no steps"), ("log:1", "no steps between"),
                           ("log:500", "more than the 31 probe steps"), ("sometimes", "not a snapshot schedule")):
        assert main(["train", *tiny(), "--steps", "300", "--snapshots", spec, "--out", str(tmp_path / "x")]) == 2
        assert fragment in capsys.readouterr().err
        assert not (tmp_path / "x").exists()


def test_a_resumed_run_has_exactly_the_snapshots_of_an_uninterrupted_one(snap_run, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "induction_jax.cli", "train", *tiny(), *SNAP, "--steps", "300",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    marker = out / "snapshots" / "step_00000150.npz"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal")
    done = subprocess.run([sys.executable, "-m", "induction_jax.cli", "train", "--resume", str(out), "--no-analysis",
                           "--no-progress"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in ("metrics.csv", "head_metrics.csv"):
        assert (out / name).read_bytes() == (snap_run / name).read_bytes()
    mine = sorted(p.name for p in (out / "snapshots").iterdir())
    assert mine == sorted(p.name for p in (snap_run / "snapshots").iterdir())
    for name in mine:
        assert (out / "snapshots" / name).read_bytes() == (snap_run / "snapshots" / name).read_bytes()


# ---- a model whose sub-circuits are switched on at known steps --------------------------------------

RAMPS = {  # weights of the hand-built circuit moved in from random ones, each group over its window
    (100, 200): [("W_Q", 0, 0), ("W_K", 0, 0)],                                  # previous-token head's QK
    (300, 400): [("W_V", 0, 0), ("W_O", 0, 0), ("W_Q", 1, 0), ("W_K", 1, 0)],    # its write, the induction QK
    (500, 600): [("W_V", 1, 0), ("W_O", 1, 0)],                                  # the induction head's copying
}
EXPECTED = {"prev_token_qk": (100, 200), "prev_token_attention": (100, 200), "k_composition": (300, 400),
            "induction_attention": (300, 400), "ov_copying": (500, 600), "in_context_score": (500, 600),
            "induction_heads_necessary": (500, 600)}


def _switched_on(steps, seeds=(0, 1)):
    hand = build()
    members = []
    for seed in seeds:
        rng = np.random.default_rng(100 + seed)
        start = {k: (v if k in ("W_E", "W_pos", "W_U") else rng.normal(0, 0.02, v.shape).astype(np.float32))
                 for k, v in hand.items()}
        frames = []
        for t in steps:
            p = {k: v.copy() for k, v in start.items()}
            for (a, b), groups in RAMPS.items():
                c = float(np.clip((t - a) / (b - a), 0, 1))
                for name, layer, head in groups:
                    p[name][layer, head] = start[name][layer, head] + c * (hand[name][layer, head] - start[name][layer, head])
            frames.append(p)
        members.append({k: np.stack([f[k] for f in frames]) for k in hand})
    return {k: np.stack([m[k] for m in members], 1) for k in hand}          # [S, E, ...]


def test_a_circuit_switched_on_in_stages_gives_the_known_order_and_steps():
    steps = np.arange(0, 701, 25)
    result = snapshot_analysis(_switched_on(steps), P, batch=16, probe_batch=64)
    assert [c["member"] for c in result["final_circuits"]] == list(range(len(result["final_circuits"])))
    assert all(c["prev_token_head"] == [0, 0] and c["induction_head"] == [1, 0] for c in result["final_circuits"])
    formed, reasons = formation_steps(steps, result["events"])
    for event, (a, b) in EXPECTED.items():
        assert np.all((formed[event] >= a) & (formed[event] <= b)), (event, formed[event], reasons[event])
    for order in orders(formed):
        position = {name: i for i, name in enumerate(order.replace(" = ", " < ").split(" < "))}
        assert position["prev_token_qk"] < position["k_composition"] < position["ov_copying"]
        assert position["prev_token_attention"] < position["induction_attention"] < position["in_context_score"]
