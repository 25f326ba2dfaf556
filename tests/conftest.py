"""Tiny configurations shared by the tests (all on CPU, a few seconds each)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

from induction_jax.config import RunConfig  # noqa: E402

# Small enough to train in seconds; learns induction in a few hundred steps.
SMALL = RunConfig().replace(d_vocab=24, half_length=10, n_ctx=20, d_model=32, n_heads=4, lr=3e-3,
                            batch_size=32, probe_batch_size=32, steps=400, seeds=3,
                            eval_every=25, chunk_steps=100)


@pytest.fixture(scope="session")
def small_cfg() -> RunConfig:
    return SMALL
