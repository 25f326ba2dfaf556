"""`analyze_run(RUN_DIR)`: the I/O entry of the analysis: scores.csv, circuit.json, arrays.npz and figures
(the pure scoring is `analysis.score`)."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import numpy as np

from induction_jax import signals
from induction_jax.arrays import save_arrays
from induction_jax.analysis import figures
from induction_jax.analysis.score import analyze_params, scores_table
from induction_jax.analysis.weights import load_run_checkpoint
from induction_jax.rundir import RunDir, RunDirError, json_safe, write_json_atomic, write_text_atomic


def write_figures(result: dict, params: dict, member: int, out: Path) -> dict[str, Path]:
    s, x, P = result["scores"], result["extra"], result["period"]
    row = result["circuit"]["members"][member]
    figs = {
        "attention_patterns": figures.attention_grid(x["patterns"], member, P, out / "attention_patterns.png", row),
        "head_scores": figures.score_bars(s, member, out / "head_scores.png"),
        "ablations": figures.ablation_bars(s, member, out / "ablations.png"),
        "ensemble_scores": figures.ensemble_distributions(s, out / "ensemble_scores.png",
                                                            result["circuit"]["members"]),
    }
    if result["not_applicable"] is None:
        figs |= {
            "positional_qk_prev_token_head": figures.positional_qk(
                x["positional_qk"], member, row["prev_token_head"], out / "positional_qk_prev_token_head.png"),
            "full_ov_induction_head": figures.full_ov(params, member, row["induction_head"],
                                                      out / "full_ov_induction_head.png"),
            "ov_eigenvalues": figures.ov_eigenvalues(x["ov_eigenvalues"], s, member, out / "ov_eigenvalues.png"),
        }
        if params["W_Q"].shape[1] >= 2:      # composition needs an earlier and a later layer
            figs["k_composition"] = figures.k_composition(s["k_composition"], result["baseline"], member,
                                                          out / "k_composition.png")
    return figs


# Members whose per-head arrays go into analysis/arrays.npz (and so into the report's viewers);
# beyond this the file would grow by about 100 kB a member for views nobody pages through.
REPORT_MEMBERS = 64


# The full OV circuit (V x V per member) goes to the report up to this vocabulary: 128 tokens are
# 16 kB a member in the report (int8); beyond it the report shows the static figure.
REPORT_FULL_OV_VOCAB = 128


def report_arrays(result: dict, members, params: dict | None = None) -> dict[str, np.ndarray]:
    """What the report's per-member views draw: every head's attention pattern on the first
    probe sequence (float16), its tokens, and the Q/K/V composition matrices and full-OV
    eigenvalues where the weight-based scores apply; with them, each member's single-model
    figures as data (the positional QK pattern of its previous-token head, the full OV circuit
    of its best induction head, from `params`); the first REPORT_MEMBERS members."""
    n = min(len(members), REPORT_MEMBERS)
    x, s = result["extra"], result["scores"]
    rows = result["circuit"]["members"][:n]
    out = {"members": np.arange(n), "tokens": np.asarray(x["tokens"]),
           "patterns": np.asarray(x["patterns"][:n], np.float16)}
    if "positional_qk" in x:
        out["positional_qk_prev_token_head"] = np.stack(
            [x["positional_qk"][r["member"], r["prev_token_head"][0], r["prev_token_head"][1]] for r in rows]
        ).astype(np.float16)
    if params is not None and result["not_applicable"] is None and params["W_E"].shape[1] <= REPORT_FULL_OV_VOCAB:
        out["full_ov_induction_head"] = np.stack(
            [figures.full_ov_matrix(params, r["member"], r["induction_head"]) for r in rows]).astype(np.float16)
    for mode in ("q", "k", "v"):
        if f"{mode}_composition" in s:
            out[f"{mode}_composition"] = np.asarray(s[f"{mode}_composition"][:n], np.float32)
    if "ov_eigenvalues" in x:
        out["ov_eigenvalues_real"] = np.real(x["ov_eigenvalues"][:n]).astype(np.float32)
        out["ov_eigenvalues_imag"] = np.imag(x["ov_eigenvalues"][:n]).astype(np.float32)
    return out


def write_knockout(cfg, params: dict, members, result: dict, out, k_max: int, batch_size: int,
                   what: str | None = None) -> dict | None:
    """The task's knock-outs (`analysis.knockout`) into knockout.csv, summarised for circuit.json;
    None when the task names no knock-out score or `k_max` is 0. A run whose task inputs cannot be
    read here (a corpus that changed or is elsewhere) gets `{"skipped": why}` and a line on stderr:
    the rest of the analysis does not need them."""
    from induction_jax import files
    from induction_jax.analysis import knockout
    from induction_jax.config import ConfigError

    def drop_stale():           # an earlier analysis' own (of an earlier checkpoint), which this one does not redo
        stale = f"{out.name}/knockout.csv"
        if stale in files.recorded(out.run.path):
            (out.run.path / stale).unlink(missing_ok=True)

    if cfg.task.knockout_metric is None or k_max <= 0:
        drop_stale()
        return None
    try:
        res = knockout.knockout(cfg, params, members, result["scores"]["prefix_matching_score"], k_max, batch_size,
                                what=what, stream=sys.stderr)
    except (ConfigError, OSError) as e:
        print(f"induction-jax analyze: knock-outs skipped: {e}", file=sys.stderr)
        drop_stale()
        return {"skipped": str(e)}
    header, rows = knockout.table(res)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([header, *rows])
    write_text_atomic(out / "knockout.csv", buf.getvalue())
    return {"metric": res["metric"], "batch": batch_size, "members": knockout.summary(res)}


def analyze_run(run_dir: str | Path, member: int | None = None, knockout_k: int = 2,
                knockout_batch: int = 512) -> Path:
    """Analyse every member of a run at its latest good checkpoint; single-model figures show
    `member` (default 0). Every output records the checkpoint step it describes. Where the task
    names a knock-out score, the heads it ranks are ablated against it (`write_knockout`: sets
    of up to `knockout_k` heads, on `knockout_batch` probe sequences per member)."""
    run = RunDir(Path(run_dir))
    cfg = run.read_config()
    members = run.members()
    if member is not None and not 0 <= member < len(members):
        raise RunDirError(f"--member {member}: out of range; this run has members 0..{len(members) - 1}")
    member = member or 0
    with run.lock():
        params, meta = load_run_checkpoint(run.path)
        interrupted = (f"during the analysis; the run's training and checkpoints are intact: run again "
                       f"'induction-jax analyze {run.path}'")
        signals.check(interrupted)
        result = analyze_params(params, cfg.task.induction_period(cfg.model))
        signals.check(interrupted)
        out = run.output_dir("analysis")
        # the knock-outs first (the long part, interruptible): an interrupted analysis leaves the
        # earlier one's outputs as they were
        knocked = write_knockout(cfg, params, members, result, out, knockout_k, knockout_batch, interrupted)
        header, rows = scores_table(result, members)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([header, *rows])
        write_text_atomic(out / "scores.csv", buf.getvalue())
        circuit = result["circuit"]
        for r in circuit["members"]:
            r["label"] = members.label(r["member"])
            r |= {k: v[r["member"]] for k, v in members.table().items()}
        circuit |= {"figure_member": member, "checkpoint_step": int(meta["step"]), "steps": cfg.train.steps}
        if knocked is not None:
            circuit["knockout"] = knocked
        signals.check(interrupted)
        write_figures(result, params, member, out)
        save_arrays(out / "arrays.npz", report_arrays(result, members, params))
        write_json_atomic(out / "circuit.json", json_safe(circuit))
    return out.path
