"""experiments/text_timing_variance.py's attention read-out, on the hand-built induction circuit
(tests/handbuilt.py): it must name the textbook attention where it is there."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
from handbuilt import P, build  # noqa: E402
import text_timing_variance as ttv  # noqa: E402


def test_attention_offsets_name_the_textbook_circuit():
    params = {k: np.asarray(v)[None] for k, v in build().items()}
    (row,) = ttv.attention_offsets(params, P, n_seq=16)
    assert row["sharpest_head"] == 0 and row["mode_offset"] == P - 1 and row["mode_share"] > 0.9, row
    assert row["induction_score"] > 0.8 and row["top_weight"] > 0.8, row
    assert row["layer0_offset"] == 1 and row["layer0_mass"] > 0.8, row
    assert row["second_half_loss"] < 0.5, row


def test_path_cuts_find_the_textbook_circuits_k_composition():
    """Cutting the previous-token head's write from the induction head's keys loses the copy;
    from its queries or values it does not (the hand-built circuit reads both from the token
    embedding)."""
    params = {k: np.asarray(v)[None] for k, v in build().items()}
    (row,) = ttv.path_cuts(params, P, n_seq=16)
    assert row["clean"] < 0.5, row
    assert row["cut_K"] > row["clean"] + 2.0, row
    assert row["cut_Q"] < row["clean"] + 0.5 and row["cut_V"] < row["clean"] + 0.5, row
