"""Tiny configurations shared by the tests (all on CPU, a few seconds each)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# The persistent compilation cache (ensemble.enable_compilation_cache) stays off for the suite, as
# it is by default on a CPU: jaxlib 0.10's XLA:CPU executables aborted the process (SIGABRT, which
# no test can catch) both when loaded from the cache and when serialized into it, on CI's machine
# and never here. Children started by the tests inherit this.
os.environ["INDUCTION_JAX_CACHE_DIR"] = "off"
# Compile faster: the suite's models are tiny, so much of its time is XLA:CPU compiling. LLVM at
# -O1 and XLA's older (non-MLIR) fusion emitters compile the same programs several times faster
# (a tiny `train` command: 23 s -> 12 s; 600 steps of a 3-member model: 26 s -> 20 s, its steps
# no slower). Children inherit the flags, so numbers compared across processes are computed
# under the same ones; the product itself runs with XLA's defaults.
from xla_flags import SUITE_XLA_FLAGS  # noqa: E402

os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), SUITE_XLA_FLAGS]))

import pytest  # noqa: E402

import induction_jax  # noqa: E402

induction_jax.use_cpu_cores()       # explicit, as the command line does (importing sets nothing)

from induction_jax.config import RunConfig  # noqa: E402

# Small enough to train in seconds; every member forms the induction circuit in 600 steps.
SMALL = RunConfig().replace(d_vocab=32, half_length=12, n_ctx=24, d_model=32, n_heads=4, lr=1e-2,
                            batch_size=32, probe_batch_size=32, steps=600, seeds=3,
                            eval_every=25, chunk_steps=100)


@pytest.fixture(scope="session")
def small_cfg() -> RunConfig:
    return SMALL


# A tiny run for the fault tests: seconds to train, checkpoints every 100 steps.
TINY = ["--d-vocab", "16", "--half-length", "6", "--n-ctx", "12", "--d-model", "16", "--n-heads", "2",
        "--batch-size", "32", "--probe-batch-size", "8", "--seeds", "2", "--lr", "3e-3", "--eval-every", "10",
        "--chunk-steps", "20", "--checkpoint-every", "100", "--no-analysis", "--no-progress"]
STEPS = "1000"


def tiny(**flags) -> list[str]:
    """TINY with some flags replaced, e.g. tiny(seeds=1)."""
    out = list(TINY)
    for name, value in flags.items():
        out[out.index("--" + name.replace("_", "-")) + 1] = str(value)
    return out


def cli(*args, command: str = "train") -> list[str]:
    """The command line of `induction-jax train` on the tiny config (extra args last)."""
    import sys
    return [sys.executable, "-m", "induction_jax.cli", command, *(TINY if command == "train" else []), *args]


def tree_digest(path) -> str:
    """A digest of every file under `path` (names and bytes), to prove nothing changed."""
    import hashlib
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """An uninterrupted tiny run of STEPS steps."""
    import subprocess
    out = tmp_path_factory.mktemp("ref") / "run"
    subprocess.run(cli("--steps", STEPS, "--out", str(out)), check=True, capture_output=True)
    return out
