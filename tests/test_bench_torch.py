"""The bench's three PyTorch ways (benchmarks/torch_reference.py) train the same model: from the
same init on the same batches, eager, torch.compile and the torch.func vmapped ensemble give
the same losses step after step.

torch.compile runs in a child process: the C++ kernels Inductor compiles are loaded into the
process that runs them, and a CI run of the suite aborted inside XLA's loader of a cached
executable in the same pytest process later on; no JAX test shares a process with them."""

import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import torch_reference as tr  # noqa: E402

from induction_jax import RunConfig  # noqa: E402


def test_optimiser_is_the_jax_reference_configs():
    t = RunConfig().train
    assert (tr.LR, tr.WEIGHT_DECAY) == (t.lr, t.weight_decay)
    defaults = torch.optim.AdamW([torch.zeros(1)]).defaults
    assert defaults["betas"] == (t.b1, t.b2) and defaults["eps"] == t.eps


def test_three_ways_train_the_same_model():
    here = Path(__file__).resolve().parent
    code = f"import sys; sys.path.insert(0, {str(here)!r}); import test_bench_torch as t; t.three_ways_train_the_same_model()"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


def three_ways_train_the_same_model():
    """Run in a child by the test above (raises AssertionError on a difference)."""
    torch.manual_seed(1234)
    batches = [tr.make_batch(8) for _ in range(3)]
    others = [tr.make_batch(8) for _ in range(3)]
    eager, compiled = tr.make_way("eager", [0]), tr.make_way("compile", [0])
    ensemble = tr.make_way("vmap", [0, 1])          # member 0 is seed 0, member 1 another model
    alone = tr.make_way("eager", [1])
    for tokens, other in zip(batches, others):
        l_eager, l_compiled = eager(tokens), compiled(tokens)
        l_members = ensemble(torch.stack([tokens, other]))
        l_alone = alone(other)
        torch.testing.assert_close(l_compiled, l_eager, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(l_members[0], l_eager, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(l_members[1], l_alone, rtol=1e-5, atol=1e-5)
    # Three AdamW steps at lr 1e-2 moved the loss: the comparison above is of trained models.
    assert abs(float(eager(batches[0])) - float(tr.make_way("eager", [0])(batches[0]))) > 1e-3


def test_time_way_reports_steady_state_apart_from_warm_up():
    row = tr.time_way("vmap", steps=2, members=2, warmup=1, chunks=3, batch_size=4)
    assert row["members"] == 2 and row["warmup_steps"] == 1
    assert row["model_steps_per_s"] == pytest.approx(2 * 2 / row["seconds_per_chunk"])
    assert row["warmup_s"] > 0 and row["tokens_per_s"] == pytest.approx(row["model_steps_per_s"] * 4 * 50)


def test_time_way_trains_another_shape():
    """The cost curves' PyTorch points: the eager loop on a shape other than the reference."""
    row = tr.time_way("eager", steps=1, members=1, warmup=1, chunks=1, batch_size=2, n_ctx=20, d_model=32,
                      d_vocab=128)
    assert row["tokens_per_s"] == pytest.approx(row["model_steps_per_s"] * 2 * 20)
    model = tr.make_model(0, d_model=32, d_vocab=128, n_ctx=20)
    assert model.embed.weight.shape == (128, 32) and model.pos.shape == (20, 32)


def test_cost_curves_quick_writes_every_point(tmp_path):
    """`benchmarks/cost_curves.py --quick`: each axis' points measured (or their error recorded),
    the JSON and the figure written."""
    import json
    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    out = subprocess.run([sys.executable, str(bench / "cost_curves.py"), "--quick", "--axes", "d_model",
                          "--no-torch", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    (result,) = [json.loads(p.read_text()) for p in tmp_path.glob("cost-curves-*.json")]
    rows = result["rows"]
    assert [(r["axis"], r["value"], r["members"]) for r in rows] == [("d_model", 32, 8), ("d_model", 64, 8)]
    assert all(r["model_steps_per_s"] > 0 and r["peak_rss_bytes"] > 0 for r in rows), rows
    assert list(tmp_path.glob("cost-curves-*.png"))
