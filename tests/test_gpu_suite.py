"""benchmarks/gpu_suite.sh cannot rot: its tiny mode runs on this CPU into a temporary JSON and
docs file, with every section measured (or skipped only for a missing optional package) and
rendered between its markers, the rest of the docs file untouched."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_section  # noqa: E402
import gpu_suite  # noqa: E402

SECTIONS = ["members", "torch", "main_job", "llc", "dtype"]
MAY_BE_NONE = {"peak_device_bytes", "peak_memory_ratio", "stopped"}     # where the backend keeps no stats


def numbers(obj, where=""):
    """Every number in a JSON value, with where it sits; None only under MAY_BE_NONE keys."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if v is None:
                assert k in MAY_BE_NONE, f"{where}.{k} is null"
            else:
                yield from numbers(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numbers(v, f"{where}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield where, obj


def test_device_file_name():
    assert gpu_suite.device_file_name("NVIDIA H200") == "nvidia_h200"
    assert gpu_suite.device_file_name("TPU v5 lite") == "tpu_v5_lite"
    assert gpu_suite.device_file_name("cpu") == "cpu"


def test_write_section_replaces_only_its_own(tmp_path):
    docs = tmp_path / "performance.md"
    b, e = gpu_section.markers("gpu_a")
    ob, oe = gpu_section.markers("gpu_b")
    docs.write_text(f"# Title\n\nbefore\n\n{b}\nstale\n{e}\n\nbetween\n\n{ob}\nother device\n{oe}\nafter\n")
    gpu_section.write_section(docs, "gpu_a", "fresh\n")
    assert docs.read_text() == (f"# Title\n\nbefore\n\n{b}\nfresh\n{e}\n\nbetween\n\n{ob}\nother device\n{oe}\n"
                                "after\n")
    gpu_section.write_section(docs, "gpu_c", "new device")
    c_begin, c_end = gpu_section.markers("gpu_c")
    assert docs.read_text().endswith(f"after\n\n{c_begin}\nnew device\n{c_end}\n")
    assert not list(tmp_path.glob("*.tmp"))


def test_tiny_suite_writes_every_section(tmp_path):
    out_json, docs = tmp_path / "results" / "device.json", tmp_path / "performance.md"
    docs.write_text("# Performance\n\nkept above\n")
    env = dict(os.environ, PYTHON=sys.executable, GPU_SUITE_TINY="1")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--out-json", str(out_json),
                           "--docs", str(docs)], env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out_json.read_text())
    assert results["mode"] == "tiny" and list(results["sections"]) == SECTIONS
    for where, x in numbers(results):
        assert math.isfinite(x), f"{where} = {x}"
    s = results["sections"]
    rows = s["members"]["rows"]
    assert [r["members"] for r in rows] == list(gpu_suite.TINY.sizes) and s["members"]["stopped"] is None
    assert all(r["model_steps_per_s"] > 0 and r["member_loop"] == "vmap" for r in rows)
    if rows[0]["device"]["platform"] != "cpu":
        assert all(r["peak_device_bytes"] > 0 for r in rows)
    if importlib.util.find_spec("torch"):
        assert [w["way"] for w in s["torch"]["ways"]] == ["eager", "compile", "vmap"]
        assert s["torch"]["versus"]["members"] == 8 and s["torch"]["versus"]["vs_fastest"] > 0
    else:
        assert "torch" in s["torch"]["skipped"]
    assert s["main_job"]["wall_s"] > 0 and s["main_job"]["steps"] == 20
    if importlib.util.find_spec("torch") and importlib.util.find_spec("devinterp"):
        assert s["llc"]["max_logit_difference"] < 1e-4          # the torch twin computes our model
        assert s["llc"]["sgld"]["chains"] == 2 and s["llc"]["ours_seconds"] > 0
    else:
        assert "not installed" in s["llc"]["skipped"]
    assert s["dtype"]["bfloat16"]["model_steps_per_s"] > 0 and s["dtype"]["speed_ratio"] > 0
    text = docs.read_text()
    begin, end = gpu_section.markers(results["device_name"])
    assert text.startswith("# Performance\n\nkept above\n") and text.count(begin) == text.count(end) == 1
    section = text.split(begin)[1].split(end)[0]
    assert section.strip() == gpu_section.render(results).strip()
    for heading in ("| members | model-steps/s", "The main job", "bfloat16 against float32"):
        assert heading in section
