"""Tiny configurations shared by the tests (all on CPU, a few seconds each)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from induction_jax.config import RunConfig  # noqa: E402

# Small enough to train in seconds; every member forms the induction circuit in 600 steps.
SMALL = RunConfig().replace(d_vocab=32, half_length=12, n_ctx=24, d_model=32, n_heads=4, lr=1e-2,
                            batch_size=32, probe_batch_size=32, steps=600, seeds=3,
                            eval_every=25, chunk_steps=100)


@pytest.fixture(scope="session")
def small_cfg() -> RunConfig:
    return SMALL
