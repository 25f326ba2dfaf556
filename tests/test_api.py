"""The Python API, the README's example and the notebook as a user runs them; export; presets;
importing the package has no side effects."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from induction_jax.cli import main

from guard import run_until_quiet

ROOT = Path(__file__).resolve().parents[1]


def _readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs_as_written(tmp_path):
    code = _readme_python_example()
    assert len(code.strip().splitlines()) <= 10
    done = run_until_quiet([sys.executable, "-c", code], tmp_path)     # a hang guard, not a time limit
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "demo"
    assert (run / "analysis" / "circuit.json").is_file() and (run / "phase" / "stats.json").is_file()
    assert list((run / "exports").glob("member0-step*.npz"))


def test_the_notebook_runs_top_to_bottom(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")      # stored without outputs
    # Executed in a child process under the hang guard (no per-cell time limit a slow host could exceed).
    executed = tmp_path / "executed.ipynb"
    script = ("import nbformat, sys\n"
              "from nbclient import NotebookClient\n"
              f"nb = nbformat.read({str(ROOT / 'examples' / 'quickstart.ipynb')!r}, as_version=4)\n"
              f"NotebookClient(nb, timeout=None, kernel_name='python3', resources={{'metadata': {{'path': {str(tmp_path)!r}}}}}).execute()\n"
              f"nbformat.write(nb, {str(executed)!r})\n")
    done = run_until_quiet([sys.executable, "-c", script], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    nb = nbformat.read(executed, as_version=4)
    assert (tmp_path / "runs" / "notebook" / "report.html").is_file()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "induction circuit in" in outputs and "midpoint" in outputs


def test_importing_the_package_sets_nothing_and_the_device_setting_is_explicit():
    probe = ("import os, sys, warnings\n"
             "import induction_jax as ij\n"
             "assert 'jax' not in sys.modules and 'XLA_FLAGS' not in os.environ\n"
             "{first}\n"
             "n = ij.use_cpu_cores(2)\n"
             "import jax\n"
             "assert n == 2 and len(jax.devices('cpu')) == 2, jax.devices()\n"
             "with warnings.catch_warnings(record=True) as w:\n"
             "    warnings.simplefilter('always')\n"
             "    assert ij.use_cpu_cores(3) == 2 and 'already started' in str(w[0].message)\n")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "INDUCTION_JAX_CPU_DEVICES")}
    for first in ("pass", "import jax"):          # the same whether JAX was imported first or not
        done = subprocess.run([sys.executable, "-c", probe.format(first=first)], capture_output=True, text=True,
                              env=env)
        assert done.returncode == 0, done.stderr


def test_run_objects_and_their_errors(reference, tmp_path):
    import induction_jax as ij
    from induction_jax.rundir import RunDirError
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    r = ij.open_run(run)
    df = r.metrics()
    assert set(df["member"]) == {0, 1} and df["step"].max() == 1000 and "in_context_score" in df
    assert r.checkpoint_steps() == [800, 900, 1000]
    p = r.params(step=800, member=1)
    assert p["W_Q"].shape == (2, 2, 16, 8)
    assert not np.array_equal(p["W_Q"], r.params(member=1)["W_Q"])
    with pytest.raises(RunDirError, match="member 5: out of range"):
        r.params(member=5)
    with pytest.raises(RunDirError, match="run Run.analyze"):
        r.scores()
    with pytest.raises(RunDirError, match="not a run directory"):
        ij.open_run(tmp_path)
    result = ij.analyze_weights(r.params(member=0), period=6)     # weights from any source
    assert result["scores"]["induction_score"].shape == (1, 2, 2)


def test_export_formats_and_bad_input(capsys, reference, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert main(["export", str(run), "--member", "1", "--format", "npz"]) == 0
    path = run / "exports" / "member1-step1000.npz"
    assert path.is_file() and "exports/member1-step1000.npz" in (run / ".induction-jax-manifest").read_text()
    arrays = np.load(path)
    assert arrays["W_Q"].shape == (2, 2, 16, 8)
    assert main(["export", str(run), "--all", "--format", "safetensors", "--out", str(tmp_path / "all.st")]) == 0
    from safetensors.numpy import load_file
    assert load_file(str(tmp_path / "all.st"))["W_E"].shape == (2, 16, 16)
    capsys.readouterr()
    for args, fragment in ((["--member", "2"], "member 2: out of range; this run has members 0..1"),
                           (["--format", "onnx"], "format 'onnx': unknown; allowed: npz, safetensors, transformer-lens"),
                           (["--step", "7"], "checkpoint step 7: not in")):
        assert main(["export", str(run), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and fragment in err


def test_exported_member_loads_in_transformer_lens(reference, tmp_path):
    pytest.importorskip("transformer_lens")
    torch = pytest.importorskip("torch")
    from induction_jax.functional import apply
    from induction_jax.interop import load_transformer_lens
    assert main(["export", str(reference), "--member", "1", "--format", "transformer-lens",
                 "--out", str(tmp_path / "tl")]) == 0
    model = load_transformer_lens(tmp_path / "tl")
    tokens = np.random.default_rng(0).integers(0, 16, (3, 12))
    import induction_jax as ij
    ours = np.asarray(apply(ij.open_run(reference).params(member=1), tokens))
    theirs = model(torch.tensor(tokens)).detach().numpy()
    assert np.abs(ours - theirs).max() < 1e-4


def test_the_seed001_preset(capsys):
    from induction_jax.cli import build_parser, config_from_args
    cfg = config_from_args(build_parser().parse_args(["train", "--preset", "seed001"]))
    assert (cfg.task.min_half_length, cfg.task.half_length, cfg.model.d_vocab, cfg.model.n_layers,
            cfg.model.n_heads, cfg.model.d_model, cfg.train.lr, cfg.data.batch_size, cfg.train.steps) == (
        25, 25, 64, 2, 4, 64, 1e-3, 64, 3000)
    assert config_from_args(build_parser().parse_args(["train", "--preset", "seed001", "--steps", "5"])).train.steps == 5
