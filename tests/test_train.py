import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from induction_jax import ensemble
from induction_jax.members import Members
from induction_jax import training as train_lib


def collect(cfg, members):
    """Train an ensemble through the chunked driver; return state and step metrics [E, steps]."""
    chunks = []
    state = ensemble.init_ensemble(cfg, members)
    state = ensemble.train(cfg, state, 0, lambda s, r: chunks.append(r))
    return state, {k: np.concatenate([c.metrics[k] for c in chunks], 1) for k in cfg.task.step_metric_names()}


@pytest.fixture(scope="module")
def short(small_cfg):
    return small_cfg.replace(steps=60, eval_every=20, chunk_steps=40)


def test_member_i_equals_single_run_with_seed_i(short):
    members = Members.from_config(short.replace(seeds=3, first_seed=5))
    state, metrics = collect(short, members)
    single = jax.jit(functools.partial(train_lib.train_member, short))
    for i, seed in enumerate(members.init_seed):
        s_state, s_metrics, _ = single(jnp.uint32(seed))
        np.testing.assert_allclose(metrics["loss"][i], s_metrics["loss"], rtol=2e-5, atol=2e-5)
        for name in s_state.params:
            np.testing.assert_allclose(state.params[name][i], s_state.params[name], rtol=2e-4, atol=2e-5)


def test_determinism_and_seeds_differ(short):
    members = Members.from_config(short.replace(seeds=2))
    a_state, a = collect(short, members)
    b_state, b = collect(short, members)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.allclose(a["loss"][0], a["loss"][1])


def test_chunking_does_not_change_the_numbers(short):
    members = Members.from_config(short.replace(seeds=2))
    _, a = collect(short, members)
    _, b = collect(short.replace(chunk_steps=20, eval_every=20), members)
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("step, total, stop, want, expect", [
    (0, 100, 100, 99, (2, 20, 2)),      # capped by the compiled length (chunk_steps 40)
    (0, 100, 100, 1, (2, 20, 1)),       # the host asked for one interval
    (0, 100, 40, 99, (2, 20, 2)),
    (20, 100, 40, 99, (2, 20, 1)),      # ends at the checkpoint at 40
    (0, 55, 55, 99, (2, 20, 2)),
    (40, 55, 55, 99, (1, 15, 1)),       # the last partial interval: a one-interval program
    (30, 100, 100, 99, (1, 10, 1)),     # off the probe grid after a resume: re-align
    (0, 7, 7, 99, (1, 7, 1)),
])
def test_next_chunk_ends_at_stops_and_probes_on_the_grid(step, total, stop, want, expect):
    assert tuple(train_lib.next_chunk(step, total, 40, 20, stop, want)) == expect


def test_chunk_lengths_change_no_number_bitwise(short):
    """Every chunk length runs in one compiled program, so how the host splits the run (time
    targets, checkpoints, a resume) changes no bit of the result."""
    members = Members.from_config(short.replace(seeds=2))
    runs = []
    for stops in ((), (20, 40), (20,)):
        chunks = []
        state = ensemble.train(short, ensemble.init_ensemble(short, members), 0, lambda s, r: chunks.append(r),
                               stops=stops, chunk_seconds=None)
        runs.append((jax.device_get(state.params), np.concatenate([c.metrics["loss"] for c in chunks], 1),
                     [len(c.steps) for c in chunks]))
    assert runs[0][2] != runs[1][2]                      # the runs really were split differently
    for params, loss, _ in runs[1:]:
        np.testing.assert_array_equal(loss, runs[0][1])
        for k in params:
            np.testing.assert_array_equal(params[k], runs[0][0][k])


def test_every_member_learns_induction(small_cfg):
    """A real learning test: the small configuration learns induction in a few hundred steps."""
    members = Members.from_config(small_cfg)
    chunks = []
    ensemble.train(small_cfg, ensemble.init_ensemble(small_cfg, members), 0, lambda s, r: chunks.append(r))
    m = {k: np.concatenate([c.metrics[k] for c in chunks], 1) for k in small_cfg.task.step_metric_names()}
    last = {k: v[:, -25:].mean(1) for k, v in m.items()}
    ln_v = np.log(small_cfg.model.d_vocab)
    assert np.all(last["loss_second_half"] < 0.6), last["loss_second_half"]
    assert np.all(last["loss_first_half"] > ln_v - 0.4), last["loss_first_half"]
    assert np.all(m["loss_second_half"][:, :10].mean(1) > ln_v - 0.3)   # it started from chance
    # ... by induction: a last-layer head attends to the token after the earlier copy
    assert np.all(chunks[-1].probes["induction_score"][:, -1] > 0.5)


def test_non_finite_member_is_frozen_and_others_untouched(short):
    members = Members(np.array([0, 1]), np.array([0, 1]), np.array([short.train.lr] * 2), np.array([0.01, 0.01]))
    state = ensemble.init_ensemble(short, members)
    clean = jax.tree.map(lambda x: x, state)
    poisoned = state._replace(params={**state.params, "W_U": state.params["W_U"].at[1, 0, 0].set(jnp.nan)})
    chunk = jax.jit(jax.vmap(functools.partial(train_lib.run_chunk, short, n_active=1, n_evals=1, eval_every=20)))
    s_clean, m_clean, _, _ = chunk(clean)
    s_bad, m_bad, _, _ = chunk(poisoned)
    assert int(s_bad.diverged_step[1]) == 0 and int(s_bad.diverged_step[0]) == -1
    np.testing.assert_array_equal(np.asarray(s_bad.params["W_Q"][1]), np.asarray(poisoned.params["W_Q"][1]))
    np.testing.assert_allclose(m_bad["loss"][0], m_clean["loss"][0], rtol=1e-6)


def test_sweep_member_equals_single_run_with_same_lr_and_seed(short):
    members = Members.grid(short.replace(seeds=2), [3e-3, 1e-2], [0.0, 0.05])
    assert len(members) == 8
    _, metrics = collect(short, members)
    i = 7                                         # lr 1e-2, weight decay 0.05, seed 1
    assert (members.lr[i], members.weight_decay[i], members.init_seed[i], members.data_seed[i]) == (1e-2, 0.05, 1, 1)
    single = jax.jit(functools.partial(train_lib.train_member, short.replace(lr=1e-2, weight_decay=0.05)))
    _, s_metrics, _ = single(jnp.uint32(1))
    np.testing.assert_allclose(metrics["loss"][i], s_metrics["loss"], rtol=2e-5, atol=2e-5)
    assert not np.allclose(metrics["loss"][6], metrics["loss"][7])     # seeds differ


def test_bfloat16_compute_forms_the_same_circuit(small_cfg):
    """The bfloat16 compute mode (float32 params, AdamW, softmax and loss) trains the same
    circuit as float32: every head's attention scores within 0.05, the same previous-token head,
    the same checks passed and failed, a similar loss."""
    from induction_jax.analysis.score import analyze_params

    members = Members.from_config(small_cfg)
    results = {}
    for dtype in ("float32", "bfloat16"):
        cfg = small_cfg.replace(compute_dtype=dtype)
        chunks = []
        state = ensemble.train(cfg, ensemble.init_ensemble(cfg, members), 0, lambda s, r: chunks.append(r))
        loss = np.concatenate([c.metrics["loss_second_half"] for c in chunks], 1)[:, -25:].mean(1)
        results[dtype] = loss, analyze_params(jax.device_get(state.params), cfg.task.half_length)
    (loss32, a32), (loss16, a16) = results["float32"], results["bfloat16"]
    assert np.all(loss16 < 0.6) and np.all(np.abs(loss16 - loss32) < 0.15), (loss32, loss16)
    # Every head's scores, not only the best one: the induction work is shared by near-equal
    # heads, whose order may flip.
    for score in ("prev_token_score", "induction_score"):
        np.testing.assert_allclose(a16["scores"][score], a32["scores"][score], atol=0.05)
    for a, b in zip(a32["circuit"]["members"], a16["circuit"]["members"]):
        assert a["prev_token_head"] == b["prev_token_head"]
        assert a["shared_checks"] == b["shared_checks"]


@pytest.mark.parametrize("task", ["repeated", "markov", "bursty", "trigger"])
def test_compiled_programs_never_read_the_host_only_settings(task, monkeypatch):
    """The compiled chunk and probe are cached under `program_config(cfg)`, which clears
    HOST_ONLY_TRAIN and the tracking settings: tracing them (with an intervention arm, whose
    windows come from the run's length) must read none of those, or a cached program could be
    another run's."""
    import dataclasses
    import sys

    from induction_jax.config import RunConfig, TrackConfig, TrainConfig

    cfg = RunConfig().replace(d_vocab=80, n_ctx=64, d_model=16, n_heads=2, seeds=2, steps=40, task=task)
    members = Members.grid(cfg, arms=["none", "ablate:L0H0@10-30"])
    state = ensemble.init_ensemble(cfg, members)
    read = set()

    def recording(cls):
        names, original = {f.name for f in dataclasses.fields(cls)}, cls.__getattribute__

        def getattribute(self, name):
            if name in names and sys._getframe(1).f_code.co_name not in ("__hash__", "__eq__", "__repr__"):
                read.add((cls.__name__, name))
            return original(self, name)
        monkeypatch.setattr(cls, "__getattribute__", getattribute)

    recording(TrainConfig)
    recording(TrackConfig)
    mesh, shared = ensemble._mesh_for(cfg, state), train_lib.shared_arrays(cfg)
    ensemble._compiled_chunk_of.__wrapped__(cfg, 2, 10, mesh).lower(state, jnp.int32(2), shared)
    ensemble._compiled_probe_of.__wrapped__(cfg, mesh).lower(state, shared)
    host_only = {("TrainConfig", name) for name in ensemble.HOST_ONLY_TRAIN} | {
        ("TrackConfig", f.name) for f in dataclasses.fields(TrackConfig)}
    assert ("TrainConfig", "compute_dtype") in read          # the recording works
    assert not read & host_only, sorted(read & host_only)


def test_a_resume_to_more_steps_reuses_the_compiled_chunk(tmp_path):
    """In one process, the same model and task at another length (a resume, a notebook's second
    run) compiles no chunk again."""
    from conftest import tiny
    from induction_jax.cli import main

    out = str(tmp_path / "run")
    assert main(["train", *tiny(), "--steps", "40", "--out", out]) == 0
    misses = ensemble._compiled_chunk_of.cache_info().misses
    assert main(["train", "--resume", out, "--steps", "80", "--no-progress"]) == 0
    assert ensemble._compiled_chunk_of.cache_info().misses == misses
