"""`benchmarks/step_profile.py`: the profile of a training chunk puts every traced op in a class,
and the classes the docs quote (the two kinds of matmul, the optimiser, the probes) are found."""

import json
import subprocess
import sys
from pathlib import Path


def test_step_profile_classifies_the_training_chunk(tmp_path):
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "step_profile.py"
    out_json = tmp_path / "profile.json"
    out = subprocess.run([sys.executable, str(script), "--members", "2", "--steps", "10", "--chunks", "1",
                          "--eval-every", "5", "--out", str(out_json)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out_json.read_text())
    shares = {r["class"]: r["share"] for r in result["classes"]}
    assert abs(sum(shares.values()) - 1) < 1e-6, shares
    for name in ("matmul: projections", "matmul: attention", "optimiser", "probes", "softmax"):
        (share,) = [v for k, v in shares.items() if k.startswith(name)]
        assert share > 0, (name, shares)
    assert 0 < result["busy_fraction"] <= 1.05 and result["wall_ms_per_member_step"] > 0
    assert "ms/member-step" in out.stdout
