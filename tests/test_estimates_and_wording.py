"""The memory estimate against measured peak RSS, the refusal and the planner reading that one
estimate, and one-line errors that name the flags the user typed."""

import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import tiny
from induction_jax import memory
from induction_jax.cli import main
from induction_jax.config import RunConfig

# A model whose state is large (W_pos of 100000 positions: 18 MiB of state per member) and whose
# compute is tiny (one layer, one sequence of 6 tokens per step), so the per-member memory stands
# well above the noise of the ~0.7 GB that Python, JAX and the compiled programs take anyway.
RSS_FLAGS = ["--d-vocab", "8", "--half-length", "3", "--n-ctx", "100000", "--d-model", "16", "--n-heads", "1",
             "--n-layers", "1", "--batch-size", "1", "--probe-batch-size", "2", "--steps", "1", "--eval-every", "1",
             "--chunk-steps", "1", "--checkpoint-every", "1", "--weight-probes", "false", "--no-analysis",
             "--no-progress"]
RSS_SIZES = (2, 8, 14)
CHILD = ("import sys\nfrom induction_jax.cli import main\nrc = main(sys.argv[1:])\n"
         "print('VmHWM_KiB', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
         "sys.exit(rc)\n")


def _peak_rss_bytes(tmp_path, n: int) -> int:
    """`induction-jax train` of n members in a fresh process; its peak RSS (VmHWM)."""
    out = subprocess.run([sys.executable, "-c", CHILD, "train", *RSS_FLAGS, "--seeds", str(n),
                          "--out", str(tmp_path / f"run{n}")], capture_output=True, text=True,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return int(re.search(r"VmHWM_KiB (\d+)", out.stdout).group(1)) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmHWM from /proc")
def test_the_memory_estimate_grows_like_the_measured_peak_rss(tmp_path):
    """The peak RSS of a whole `train` (init, chunks, the checkpoints at steps 0 and 1) at three
    ensemble sizes. The RSS holds a fixed ~0.7 GB of Python, JAX and compiled code that the
    estimate does not model, so what is compared is the growth per member: the least-squares
    slope of the measured peaks against the estimate's bytes per member (host and devices: one
    RAM on a CPU), within 25%. (Compilation adds up to ~200 MiB of its own to the peak, unevenly; the members of this
    model, 60 MiB each, outweigh it.)"""
    sizes = np.asarray(RSS_SIZES, float)
    rss = np.asarray([_peak_rss_bytes(tmp_path, n) for n in RSS_SIZES], float)
    measured_slope, baseline = np.polyfit(sizes, rss, 1)
    cfg = _cfg_of_flags()
    est = memory.estimate(cfg, jax.devices())
    est_slope = (est.host_bytes(RSS_SIZES[-1], RSS_SIZES[-1]) - est.host_bytes(RSS_SIZES[0], RSS_SIZES[0])) / (
        RSS_SIZES[-1] - RSS_SIZES[0])
    figures = (f"peak RSS {', '.join(f'{n}: {r / 2**20:.0f} MiB' for n, r in zip(RSS_SIZES, rss))}; measured "
               f"{measured_slope / 2**20:.2f} MiB per member + {baseline / 2**20:.0f} MiB, estimate "
               f"{est_slope / 2**20:.2f} MiB per member")
    print(figures)
    assert abs(measured_slope / est_slope - 1) <= 0.25, figures


def _cfg_of_flags() -> RunConfig:
    from induction_jax.cli import build_parser, config_from_args
    return config_from_args(build_parser().parse_args(["train", *RSS_FLAGS, "--seeds", "1"]))


def _budget(monkeypatch, nbytes: int) -> None:
    monkeypatch.setattr(memory, "host_memory_bytes", lambda: nbytes)
    monkeypatch.setattr(memory, "available_memory_bytes", lambda devices: nbytes)


def test_the_refusal_and_the_planner_agree_at_the_boundary(monkeypatch, small_cfg):
    """A budget in which 1000 members fit only in groups: the planner groups them, and every
    count it accepts fits by the figures it logs; one member past the refusal's 'at most N fit'
    is refused, and N itself is accepted (in groups)."""
    devices = jax.devices()
    cfg = small_cfg.replace(d_model=64, n_heads=4)
    est = memory.estimate(cfg, devices)
    budget = est.host_bytes(1000, len(devices)) + est.device_member * 10 * len(devices)
    _budget(monkeypatch, budget)
    est = memory.estimate(cfg, devices)
    assert not est.fits(1000, 1000) and est.fits(1000, len(devices))
    logs = []
    group = memory.plan_groups(cfg, 1000, devices, log=logs.append)
    assert len(devices) <= group < 1000 and est.fits(1000, group)
    need, avail = (float(x) for x in re.search(r"need about ([\d.]+) GiB .* of ([\d.]+) GiB", logs[0]).groups())
    assert need <= avail, logs[0]
    fit = est.max_members()
    assert fit >= 1000
    assert est.fits(fit, memory.plan_groups(cfg, fit, devices, log=lambda m: None))
    with pytest.raises(memory.ResourceError, match=rf"^{fit + 1} members need about .* at most {fit} members fit$"):
        memory.plan_groups(cfg, fit + 1, devices)
    with pytest.raises(memory.ResourceError, match=rf"at most {fit} members fit$"):
        memory.check_host(cfg, fit + 1, devices)
    memory.check_host(cfg, fit, devices)
    # Devices with their own memory (an accelerator): the host holds every member, the devices a group.
    gpu = memory.Estimate(host_member=3_000, device_member=2_000, device_fixed=10_000, n_devices=4, shared=False,
                          host_avail=3_000_000, device_avail=4 * 50_000)
    assert gpu.max_members() == 1000
    for n in (4, 10, 97, 1000):
        g = gpu.max_group(n)
        assert g <= n and gpu.fits(n, g) and (g == n or not gpu.fits(n, g + gpu.n_devices)), (n, g)
    assert not gpu.fits(1001, 4)


def _one_line(capsys, *argv) -> str:
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    return err


def _sweep(tmp_path, *arms):
    flags = [a for a in tiny() if a != "--no-analysis"]
    return ["sweep", *flags, "--steps", "300", *[x for a in arms for x in ("--intervention", a)],
            "--out", str(tmp_path / "s")]


@pytest.mark.parametrize("arm, fragment", [
    ("ablate:L0H0+ablate:L0H0", "--intervention 'ablate:L0H0+ablate:L0H0': 'ablate:L0H0' appears twice in one arm; "
                                "each part may appear once (different heads, kinds or windows combine"),
    ("ablate:L0H0@0-100+ablate:L0H0@200-", "'ablate:L0H0@200-' sets what 'ablate:L0H0@0-100' already sets"),
    ("ablate:L1H*+ablate:L1H1", "'ablate:L1H1' sets what 'ablate:L1H*' already sets"),
    ("none+none", "--intervention 'none+none': 'none' stands alone (the arm with no intervention) and cannot be "
                  "combined with +; allowed: none, or clamp"),
    ("ablate:L0H0+none", "'none' stands alone"),
])
def test_a_repeated_or_combined_none_part_is_refused_in_one_line(capsys, tmp_path, arm, fragment):
    err = _one_line(capsys, *_sweep(tmp_path, "none", arm))
    assert err.startswith("induction-jax sweep: error: ") and fragment in err, err
    assert not (tmp_path / "s").exists()


def test_different_parts_of_one_arm_combine(small_cfg):
    from induction_jax.interventions import spec
    cfg = small_cfg.replace(steps=300)
    assert len(spec.parse("ablate:L0H0+ablate:L0H1", cfg)) == 2
    assert len(spec.parse("ablate:L1H0@0-100+clamp:prev:L0H0:0.5@0-100+freeze:W_pos", cfg)) == 3


def test_llc_n_errors_name_n_and_batch_size(capsys, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *tiny(seeds=1), "--steps", "20", "--out", str(run)]) == 0
    capsys.readouterr()
    err = _one_line(capsys, "llc", str(run), "--n", "0")
    assert err == ("induction-jax llc: error: --n 0 (dataset items) with --batch-size 64: each SGLD step draws "
                   "batch_size items from the n without replacement; allowed: --n >= 64"), err
    err = _one_line(capsys, "llc", str(run), "--n", "10")
    assert "--n 10 (dataset items) with --batch-size 64" in err and "allowed: --n >= 64, or --batch-size 1..10" in err
    err = _one_line(capsys, "llc", str(run), "--n", "1", "--batch-size", "1")
    assert "--n 1 (dataset items): n_beta = n / ln n (the default, no --n-beta) needs n >= 2" in err, err
    assert not (run / "llc").exists()


def test_a_seed_range_past_the_largest_seed_names_first_seed_and_seeds(capsys, tmp_path):
    err = _one_line(capsys, "train", *tiny(seeds=2), "--first-seed", "2147483647", "--out", str(tmp_path / "r"))
    assert err == ("induction-jax train: error: --first-seed 2147483647 --seeds 2: the members' seeds "
                   "2147483647..2147483648 go past 2147483647; allowed: first seed + seeds - 1 <= 2147483647, "
                   "so --first-seed at most 2147483646 for --seeds 2"), err
    assert not (tmp_path / "r").exists()
    from induction_jax.members import Members, MembersError
    with pytest.raises(MembersError, match=r"^members.init_seed: -1 out of range; allowed: integers 0..2147483647$"):
        Members.from_table({"init_seed": [0, -1], "data_seed": [0, 1], "lr": [1e-2] * 2, "weight_decay": [0.0] * 2})


def test_a_checkpoint_digest_mismatch_reads_as_one_grammatical_line():
    from induction_jax.checkpoint import CheckpointError, _verify
    for item in ("state", "params"):
        with pytest.raises(CheckpointError, match=rf"^the digest of its {item} does not match the one recorded "
                                                  r"\(the files were altered or damaged\)$"):
            _verify({"a": np.zeros(2)}, {"digest": {item: "0" * 32}}, item)
