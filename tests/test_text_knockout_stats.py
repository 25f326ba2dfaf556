"""experiments/text_knockout.py's by-layer statistics of the single-head knock-outs, on a
hand-made table whose answers are known."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import text_knockout as tk  # noqa: E402


def _member(pm_lost):
    """[(layer, head, prefix score, {mode: fraction lost})] from {(layer, head): (pm, lost)}."""
    return [(layer, head, pm, {"mean": lost, "zero": lost}) for (layer, head), (pm, lost) in pm_lost.items()]


def test_layer_stats_counts_the_top_head_costliest_in_its_layer_and_averages_by_layer():
    single = [
        # the top prefix-matching head (L1H0) is also layer 1's costliest ...
        _member({(0, 0): (0.00, 0.2), (0, 1): (0.01, 0.4), (1, 0): (0.9, 0.8), (1, 1): (0.1, 0.1)}),
        _member({(0, 0): (0.00, 0.2), (0, 1): (0.01, 0.4), (1, 0): (0.8, 0.6), (1, 1): (0.2, 0.2)}),
        _member({(0, 0): (0.00, 0.2), (0, 1): (0.01, 0.4), (1, 0): (0.1, 0.3), (1, 1): (0.7, 0.5)}),
        # ... except here: L1H1 has the top score but L1H0 costs more (and layer 0 costs most of all)
        _member({(0, 0): (0.00, 0.9), (0, 1): (0.01, 0.9), (1, 0): (0.2, 0.4), (1, 1): (0.6, 0.1)}),
    ]
    out = tk.layer_stats({"single": single}, "mean")
    assert out["top_head_layers"] == [1, 1, 1, 1]
    assert out["top_is_costliest_in_its_layer"] == 3 and out["members"] == 4
    assert out["chance_tail"] == pytest.approx(5 / 16)            # P(X >= 3), X ~ Binomial(4, 1/2)
    assert out["per_layer"][0]["mean"] == pytest.approx((0.3 * 3 + 0.9) / 4)
    assert out["per_layer"][1]["mean"] == pytest.approx((0.45 + 0.4 + 0.4 + 0.25) / 4)
    assert out["spearman_layer"] == 1 and out["spearman_n"] == 8 and out["spearman_rho"] > 0
