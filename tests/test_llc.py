"""The LLC of every member at every snapshot: the command, its vectorisation, diagnostics, stages."""

import json
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny, tree_digest
from induction_jax.cli import main
from induction_jax.slt.sampler import SGLDConfig
from induction_jax.slt.stages import stage_boundaries

FAST = ["--chains", "2", "--draws", "40", "--burn-in", "10", "--n", "128", "--batch-size", "32", "--eps", "1e-4"]


@pytest.fixture(scope="module")
def snap_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("llc") / "run"
    done = subprocess.run([sys.executable, "-m", "induction_jax.cli", "train", *tiny(), "--steps", "200",
                           "--snapshots", "every:100", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return out


def test_llc_command_writes_curves_diagnostics_and_a_report_section(capsys, snap_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(snap_run, run)
    assert main(["llc", str(run), *FAST]) == 0
    assert "stage boundaries" in capsys.readouterr().out
    stats = json.loads((run / "llc" / "stats.json").read_text())
    assert stats["steps"] == [0, 100, 200] and len(stats["members"]) == 2
    assert stats["n_beta"] == pytest.approx(128 / np.log(128))
    lines = (run / "llc" / "llc.csv").read_text().splitlines()
    assert lines[0].startswith("member,init_seed,data_seed,step,restricted_to,llc_mean") and len(lines) == 7
    for name in ("llc_curves.png", "traces.png", "eps.png", "traces.npz"):
        assert (run / "llc" / name).stat().st_size > 500
    assert "Local learning coefficient" in (run / "report.html").read_text()
    assert main(["llc", str(run), *FAST, "--head", "L1H0", "--members", "1", "--snapshots", "100-200"]) == 0
    stats = json.loads((run / "llc" / "stats.json").read_text())
    assert stats["head"] == "L1H0" and stats["steps"] == [100, 200] and stats["members"][0]["member"] == 1


def test_a_member_of_the_vmapped_estimate_equals_that_member_alone(snap_run):
    from induction_jax import snapshots
    from induction_jax.rundir import RunDir
    from induction_jax.slt.run import estimate, llc_dataset
    run = RunDir(snap_run)
    cfg = run.read_config()
    _, params = snapshots.load(run, [200])
    sgld = SGLDConfig(eps=1e-4, chains=2, draws=30, burn_in=10, batch_size=32)
    data = jax.vmap(lambda s: llc_dataset(cfg, s, 128))(jnp.asarray([0, 1], jnp.uint32))
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    both = estimate(cfg, sgld, {k: jnp.asarray(v[0]) for k, v in params.items()}, data, keys)
    alone = estimate(cfg, sgld, {k: jnp.asarray(v[0, 1:]) for k, v in params.items()},
                     jax.tree.map(lambda x: x[1:], data), keys[1:])
    np.testing.assert_allclose(both["llc_mean"][1], alone["llc_mean"][0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(both["loss"][1], alone["loss"][0], rtol=1e-4, atol=1e-5)


def test_a_step_size_100x_too_large_is_flagged(capsys, snap_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(snap_run, run)
    fast = [a if a != "1e-4" else "1e-2" for a in FAST]
    assert main(["llc", str(run), *fast, "--snapshots", "200"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err
    stats = json.loads((run / "llc" / "stats.json").read_text())
    assert not stats["eps_sweep"]["stable"] and any(m["flagged_steps"] for m in stats["members"])


@pytest.mark.parametrize("args, fragment", [
    (["--eps", "0"], "eps=0.0: must be > 0.0"),
    (["--n-beta", "-1"], "--n-beta -1: must be > 0"),
    (["--draws", "10", "--burn-in", "10"], "draws=10: must be > burn_in=10"),
    (["--head", "L3H0"], "--head L3H0: not a head or layer of this model"),
    (["--snapshots", "50"], "snapshot step 50: not in"),
])
def test_llc_bad_input(capsys, snap_run, tmp_path, args, fragment):
    run = tmp_path / "run"
    shutil.copytree(snap_run, run)
    before = tree_digest(run)
    assert main(["llc", str(run), *FAST, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err, err
    assert tree_digest(run) == before


def test_llc_of_a_run_without_snapshots(capsys, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert main(["llc", str(run), *FAST]) == 2
    assert "has no snapshots" in capsys.readouterr().err
    assert not (run / "llc").exists()


def test_stage_boundaries_find_extrema_and_plateaus():
    steps = np.array([0, 10, 20, 40, 80, 160, 320, 640, 1280, 2560])
    llc = np.array([1.0, 2.0, 4.0, 8.0, 12.0, 9.0, 9.05, 9.02, 9.03, 15.0])   # rise, a peak at 80, a plateau, a rise
    b = stage_boundaries(steps, llc, np.full(10, 0.1))
    kinds = [(x["kind"], x["step"]) for x in b]
    assert ("peak", 80.0) in kinds
    assert ("plateau_start", 160.0) in kinds and ("plateau_end", 1280.0) in kinds
    noisy = stage_boundaries(steps, llc + np.array([0, 0, 0, 0, 0, 0, 0.4, -0.4, 0.4, 0]), np.full(10, 1.0))
    assert not any(x["kind"] in ("peak", "trough") and 300 < x["step"] < 1300 for x in noisy)  # within noise
