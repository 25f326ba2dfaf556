"""Knock-outs against the task's own in-context score (`analysis.knockout`, Olsson et al.'s
Argument 4): on a hand-built induction circuit reading a periodic token stream, ablating the
induction head removes all of the in-context score, its previous-token head part of it and a
distractor none; the clean score is the training probe's own; the sets and the fraction lost are what the
docs say; `analyze` writes them for a text run and a bad flag is one line, exit 2."""

from __future__ import annotations

import csv
import itertools
import json
import re

import numpy as np
import pytest

from induction_jax.analysis import knockout
from induction_jax.config import RunConfig
from induction_jax.members import Members

from handbuilt import P, V, build
from test_task_text import _cfg, _corpus


def test_head_sets_are_every_head_the_top_k_and_the_other_k_subsets():
    prefix = np.array([[0.1, 0.0, 0.2], [0.9, 0.5, 0.3]])          # L = 2, H = 3: order L1H0, L1H1, L1H2, L0H2...
    kinds, ks, sets = knockout.head_sets(prefix, k_max=3)
    n = 6
    assert kinds[:n] == ["single"] * n and ks[:n] == [1] * n
    assert [knockout.head_names(s) for s in sets[:n]] == ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    for k in (2, 3):
        named = [i for i, (kd, kk) in enumerate(zip(kinds, ks)) if kd == "named" and kk == k]
        controls = [i for i, (kd, kk) in enumerate(zip(kinds, ks)) if kd == "control" and kk == k]
        assert len(named) == 1 and len(controls) == len(list(itertools.combinations(range(n - k), k)))
        assert knockout.head_names(sets[named[0]]) == ["L1H0+L1H1", "L1H0+L1H1+L1H2"][k - 2]
        for c in controls:                                          # k heads, none of them named
            assert sets[c].sum() == k and (sets[c] * sets[named[0]]).sum() == 0
    _, _, capped = knockout.head_sets(np.arange(32.0).reshape(4, 8), k_max=2, max_controls=5)
    assert len(capped) == 32 + 1 + 5


def test_fraction_lost_is_relative_to_no_in_context_learning():
    clean = np.array([-2.0, -2.0, 0.0, 0.5])
    ablated = np.array([-0.5, -3.0, -1.0, 0.0])
    got = knockout.fraction_lost(clean, ablated, direction=-1)
    np.testing.assert_allclose(got[:2], [0.75, -0.5])
    assert np.isnan(got[2]) and np.isnan(got[3])                     # no in-context score to lose
    np.testing.assert_allclose(knockout.fraction_lost(0.8, 0.2, direction=1), 0.75)


def _periodic_bin(path, seed=0, n=4096):
    """A nanoGPT .bin: one permutation of P distinct tokens < V repeated, so every window is periodic."""
    block = np.random.default_rng(seed).permutation(V)[:P].astype(np.uint16)
    np.tile(block, n // P).tofile(path)
    return path


def test_the_hand_built_circuit_carries_all_of_the_in_context_score(tmp_path):
    hand = build()
    D, K = hand["W_E"].shape[1], hand["W_Q"].shape[-1]
    cfg = RunConfig().replace(task="text", corpus=str(_periodic_bin(tmp_path / "periodic.bin")), d_vocab=V,
                              n_ctx=2 * P, text_length=2 * P, d_model=D, n_heads=2, seeds=1, probe_batch_size=8,
                              heldout_fraction=0.1)
    params = {k: v[None] for k, v in hand.items()}
    prefix = np.zeros((1, 2, 2))
    prefix[0, 1, 0] = 1.0                                          # the induction head ranks first
    res = knockout.knockout(cfg, params, Members.from_config(cfg), prefix, k_max=2, batch_size=32)
    assert K == hand["W_O"].shape[2] and res["metric"] == "in_context_score"
    # clean: the late token copied (loss ~0), the early one not (no earlier copy in the window)
    assert res["clean"][0] < -2.0
    single = {knockout.head_names(s): i for i, s in enumerate(res["sets"][0]) if res["kinds"][i] == "single"}
    for mode in knockout.MODES:
        lost = res[f"fraction_lost_{mode}"][0]
        # the induction head is the only head W_U reads: without it every logit is constant, the score 0
        assert abs(lost[single["L1H0"]] - 1.0) < 0.01, (mode, lost)
        assert abs(lost[single["L0H1"]]) < 0.01 and abs(lost[single["L1H1"]]) < 0.01, (mode, lost)  # distractors
        # without the previous-token head the induction head attends evenly and copies every token of
        # the window: late tokens (in it) still beat early ones (not yet in it), so part of the score stays
        assert 0.1 < lost[single["L0H0"]] < 0.9, (mode, lost)
    summary = knockout.summary(res)[0]
    assert summary["by_k"][0]["heads"] == "L1H0" and "L1H0" in summary["by_k"][1]["heads"].split("+")
    assert summary["by_k"][0]["mean"]["named"] > 0.99 and summary["by_k"][1]["mean"]["n_controls"] == 1


def test_analyze_writes_the_knockouts_and_the_clean_score_is_the_probes_own(tmp_path, capsys):
    import induction_jax as ij
    from induction_jax.cli import main

    corpus = _corpus(tmp_path / "c.txt")
    cfg = _cfg(corpus, steps=10, n_layers=2, n_heads=4)
    run = ij.train(cfg, tmp_path / "run", progress=False)
    capsys.readouterr()
    # train's own analysis leaves the knock-outs (minutes at a study's size) to `analyze`, and says so
    assert main(["train", "--resume", str(run.path), "--steps", "20", "--no-progress"]) == 0
    assert f"knock-outs (heads ablated against in_context_score): induction-jax analyze {run.path}" in \
        capsys.readouterr().out
    assert (run.path / "analysis" / "circuit.json").is_file() and not (run.path / "analysis" / "knockout.csv").exists()
    assert main(["analyze", str(run.path), "--knockout-batch", str(cfg.data.probe_batch_size)]) == 0
    printed = capsys.readouterr().out
    assert "knock-outs: fraction of in_context_score lost" in printed
    circuit = json.loads((run.path / "analysis" / "circuit.json").read_text())
    members = circuit["knockout"]["members"]
    m = run.metrics()
    last = m[m.step == 20].set_index("member").in_context_score
    # the member's own probe batch (its probe key, the training probe's batch size): the probe's number
    np.testing.assert_allclose([r["clean"] for r in members], last.to_numpy(), rtol=1e-4, atol=1e-5)
    rows = list(csv.DictReader((run.path / "analysis" / "knockout.csv").open()))
    assert len(rows) == 2 * (8 + 1 + 15)                            # 2 members x (8 heads, top-2, 15 pairs of others)
    assert {r["kind"] for r in rows} == {"single", "named", "control"}
    code = main(["analyze", str(run.path), "--knockout-heads", "9"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(r"--knockout-heads 9: out of range; allowed: 0 \(off\) to 8", err[0])
    corpus.write_text(corpus.read_text() + "one more line\n")      # the rest of the analysis needs no corpus
    assert main(["analyze", str(run.path)]) == 0
    err = capsys.readouterr().err
    assert re.search(r"knock-outs skipped: --corpus '.*c\.txt': changed since the run started", err), err
    assert json.loads((run.path / "analysis" / "circuit.json").read_text())["knockout"]["skipped"]
    assert not (run.path / "analysis" / "knockout.csv").exists()     # the earlier analysis' knock-outs: gone
    assert main(["analyze", str(run.path), "--knockout-heads", "0"]) == 0
    assert "knockout" not in json.loads((run.path / "analysis" / "circuit.json").read_text())


@pytest.mark.parametrize("task", ["repeated"])
def test_a_task_without_a_knockout_score_has_none(task):
    assert RunConfig().replace(task=task).task.knockout_metric is None
