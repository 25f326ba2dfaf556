"""Interventions during training: each member's own, as data, every arm in one compiled program."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny
from induction_jax import ensemble, interventions
from induction_jax import training as train_lib
from induction_jax.cli import main
from induction_jax.functional import apply, induction_target, previous_token_target
from induction_jax.interventions.kinds import ClampPattern, CutWrite, ZeroHeads
from induction_jax.members import Members
from induction_jax.model import init_params


@pytest.fixture(scope="module")
def short(small_cfg):
    return small_cfg.replace(steps=60, eval_every=20, chunk_steps=40)


def _train(cfg, members):
    chunks = []
    state = ensemble.train(cfg, ensemble.init_ensemble(cfg, members), 0, lambda s, r: chunks.append(r))
    return state, chunks


def _members(cfg, arms, seeds=(0,)):
    return Members.grid(cfg.replace(seeds=len(seeds), first_seed=seeds[0]), arms=arms)


def test_a_member_with_no_intervention_equals_the_plain_run(short):
    mixed, _ = _train(short, _members(short, ["none", "ablate:L1H0+clamp:prev:L0H1:0.5+cut:K:L0H0+freeze:W_pos"]))
    assert mixed.intervention is not None                       # the intervention arrays are there, zero for member 0
    s_state, s_metrics, _ = jax.jit(functools.partial(train_lib.train_member, short))(jnp.uint32(0))
    for name in s_state.params:
        np.testing.assert_allclose(mixed.params[name][0], s_state.params[name], rtol=2e-4, atol=2e-5)
    assert not np.allclose(mixed.params["W_pos"][0], mixed.params["W_pos"][1])


def _probe_tokens(cfg, batch=32):
    """Random halves repeated once, filling the context (made here: the forward pass's tests
    need no task)."""
    half = jax.random.randint(jax.random.PRNGKey(3), (batch, cfg.model.n_ctx // 2), 0, cfg.model.d_vocab)
    return jnp.concatenate([half, half], axis=1)


def test_clamp_gives_exactly_the_target_pattern_at_full_strength_and_nothing_at_zero(short):
    params = init_params(short.model, jax.random.PRNGKey(0))
    tokens = _probe_tokens(short)
    L, H, T = 2, 4, tokens.shape[1]
    _, plain = apply(params, tokens, return_activations=True)
    one = jnp.zeros((L, H)).at[0, 2].set(1.0)
    _, full = apply(params, tokens, return_activations=True, edits=[ClampPattern(one, "prev")])
    np.testing.assert_allclose(full.pattern_BLHTS[:, 0, 2], np.broadcast_to(previous_token_target(T), (len(tokens), T, T)),
                               atol=1e-6)
    np.testing.assert_array_equal(full.pattern_BLHTS[:, 0, 1], plain.pattern_BLHTS[:, 0, 1])
    _, zero = apply(params, tokens, return_activations=True, edits=[ClampPattern(jnp.zeros((L, H)), "prev")])
    np.testing.assert_array_equal(zero.pattern_BLHTS, plain.pattern_BLHTS)
    # the induction pattern of the sequence on rows that have one; other rows keep the model's
    _, ind = apply(params, tokens, return_activations=True, edits=[ClampPattern(jnp.zeros((L, H)).at[1, 3].set(1.0), "induction")])
    target, has = induction_target(tokens)
    got, mine = np.asarray(ind.pattern_BLHTS[:, 1, 3]), np.asarray(plain.pattern_BLHTS[:, 1, 3])
    np.testing.assert_allclose(got[np.asarray(has)], np.asarray(target)[np.asarray(has)], atol=1e-6)
    np.testing.assert_array_equal(got[~np.asarray(has)], mine[~np.asarray(has)])
    assert np.asarray(has)[:, T // 2:].all()     # every second-half row has a target


def test_clamp_in_training_shows_in_the_probes_and_follows_its_window(short):
    cfg = short.replace(steps=60, eval_every=10, chunk_steps=20)
    _, chunks = _train(cfg, _members(cfg, ["clamp:prev:L0H0:1.0", "clamp:prev:L0H0:1.0@20-40"]))
    steps = np.concatenate([c.probe_steps for c in chunks])
    prev = np.concatenate([c.probes["prev_token_score"] for c in chunks], 1)      # best layer-0 head
    np.testing.assert_allclose(prev[0], 1.0, atol=1e-6)                       # always clamped
    inside = (steps >= 20) & (steps < 40)
    np.testing.assert_allclose(prev[1, inside], 1.0, atol=1e-6)
    assert np.all(prev[1, ~inside] < 0.99)
    windowed = jax.tree.map(lambda x: jnp.asarray(x[1]), interventions.build(
        ["clamp:prev:L0H0:1.0", "clamp:prev:L0H0:1.0@20-40"], cfg))
    strengths = [float(interventions.active(windowed, s)[0][0].a_LH[0, 0]) for s in (19, 20, 39, 40)]
    assert strengths == [0.0, 1.0, 1.0, 0.0]


def test_a_frozen_group_is_bitwise_unchanged_and_the_rest_trains(short):
    members = _members(short, ["freeze:W_pos", "freeze:L0H1:QK", "freeze:L1"])
    init = ensemble.init_ensemble(short, members)
    init = jax.tree.map(np.asarray, jax.device_get(init.params))
    state, _ = _train(short, members)
    p = jax.tree.map(np.asarray, jax.device_get(state.params))
    np.testing.assert_array_equal(p["W_pos"][0], init["W_pos"][0])
    assert not np.array_equal(p["W_E"][0], init["W_E"][0])
    for name in ("W_Q", "W_K"):
        np.testing.assert_array_equal(p[name][1, 0, 1], init[name][1, 0, 1])
        assert not np.array_equal(p[name][1, 0, 0], init[name][1, 0, 0])
    assert not np.array_equal(p["W_V"][1, 0, 1], init["W_V"][1, 0, 1])
    for name in ("W_Q", "W_K", "W_V", "W_O"):
        np.testing.assert_array_equal(p[name][2, 1], init[name][2, 1])
        assert not np.array_equal(p[name][2, 0], init[name][2, 0])


def test_ablation_zeroes_a_head_and_a_cut_removes_exactly_one_write_from_one_input(short):
    params = init_params(short.model, jax.random.PRNGKey(1))
    tokens = _probe_tokens(short)
    L, H = 2, 4
    _, plain = apply(params, tokens, return_activations=True)
    _, abl = apply(params, tokens, return_activations=True, edits=[ZeroHeads(jnp.zeros((L, H)).at[1, 2].set(1.0))])
    assert float(jnp.abs(abl.head_out_BLTHD[:, 1, :, 2]).max()) == 0.0
    np.testing.assert_array_equal(abl.head_out_BLTHD[:, 1, :, 0], plain.head_out_BLTHD[:, 1, :, 0])
    # cut L0H1's write from layer 1's keys: by hand, the keys come from the residual without it
    cut = jnp.zeros((L, H, L, 3)).at[0, 1, 1, 1].set(1.0)
    _, cutted = apply(params, tokens, return_activations=True, edits=[CutWrite(cut)])
    x = plain.resid_pre_BLTD[:, 1]
    q = jnp.einsum("btd,hdk->bhtk", x, params["W_Q"][1])
    k = jnp.einsum("btd,hdk->bhtk", x - plain.head_out_BLTHD[:, 0, :, 1], params["W_K"][1])
    scores = jnp.einsum("bhtk,bhsk->bhts", q, k) / jnp.sqrt(8.0)
    T = tokens.shape[1]
    by_hand = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores, -jnp.inf), -1)
    np.testing.assert_allclose(cutted.pattern_BLHTS[:, 1], by_hand, atol=1e-5)
    # nothing else changes: layer 0, the residual stream it writes, and layer 1's values
    np.testing.assert_array_equal(cutted.pattern_BLHTS[:, 0], plain.pattern_BLHTS[:, 0])
    np.testing.assert_array_equal(cutted.resid_pre_BLTD[:, 1], plain.resid_pre_BLTD[:, 1])
    values_cut = jnp.einsum("bhts,bsd,hdk->bhtk", cutted.pattern_BLHTS[:, 1], x, params["W_V"][1])
    np.testing.assert_allclose(jnp.einsum("bhtk,hkd->bthd", values_cut, params["W_O"][1]),
                               cutted.head_out_BLTHD[:, 1], atol=1e-5)


def test_each_kind_is_computed_only_where_some_member_uses_it_and_that_changes_no_number(short):
    """`Intervention.sites`: the layers and cut paths some arm touches. The pass restricted to
    them gives the numbers of the pass over every layer, head and path, member by member, with
    and without LayerNorm (a cut then normalises the residual without the cut writes)."""
    arms = ["none", "clamp:prev:L0H0:1.0", "freeze:W_pos", "cut:K:L0H*", "ablate:L1H1+ablate:L1H2+ablate:L1H3",
            "clamp:induction:L1H0:0.5+cut:V:L0H1@10-30+cut:Q:L0H0"]
    iv = interventions.build(arms, short)
    assert iv.sites == (("clamp_prev", (0,)), ("clamp_induction", (1,)), ("ablate", (1,)),
                        ("cut", ((0, 1, 0), (0, 1, 1), (0, 1, 2))))
    assert interventions.build(arms[:5], short).sites == (("clamp_prev", (0,)), ("ablate", (1,)), ("cut", ((0, 1, 1),)))
    tokens = _probe_tokens(short)
    for cfg in (short, short.replace(layer_norm=True)):
        params = init_params(cfg.model, jax.random.PRNGKey(2))
        iv = interventions.build(arms, cfg)
        for e in range(len(arms)):
            edits, _ = interventions.active(jax.tree.map(lambda x, e=e: jnp.asarray(x[e]), iv), 20)
            _, narrow = apply(params, tokens, return_activations=True, edits=edits)
            everywhere_edits = [dataclasses.replace(e, **{"paths" if isinstance(e, CutWrite) else "layers": None})
                                for e in edits]
            _, everywhere = apply(params, tokens, return_activations=True, edits=everywhere_edits)
            for a, b in zip(narrow, everywhere):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # by hand with LayerNorm: L0H1's write is removed before layer 1's keys are normalised
    cfg = short.replace(layer_norm=True)
    params = init_params(cfg.model, jax.random.PRNGKey(2))
    cut = jnp.zeros((2, 4, 2, 3)).at[0, 1, 1, 1].set(1.0)
    _, plain = apply(params, tokens, return_activations=True)
    _, cutted = apply(params, tokens, return_activations=True, edits=[CutWrite(cut)])
    from induction_jax.functional import layer_norm
    x = plain.resid_pre_BLTD[:, 1]
    q = jnp.einsum("btd,hdk->bhtk", layer_norm(x, params["ln1_w"][1], params["ln1_b"][1]), params["W_Q"][1])
    k = jnp.einsum("btd,hdk->bhtk", layer_norm(x - plain.head_out_BLTHD[:, 0, :, 1], params["ln1_w"][1],
                                               params["ln1_b"][1]), params["W_K"][1])
    T = tokens.shape[1]
    scores = jnp.einsum("bhtk,bhsk->bhts", q, k) / jnp.sqrt(jnp.float32(cfg.model.d_head))
    by_hand = jax.nn.softmax(jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores, -jnp.inf), -1)
    np.testing.assert_allclose(cutted.pattern_BLHTS[:, 1], by_hand, atol=1e-5)


def test_a_member_skips_an_edit_its_arm_does_not_use_and_vmap_gives_the_same_gradients(short):
    """A clamp or cut is a branch per member (taken only where that member's masks are
    non-zero; a select under vmap): each member's gradients and logits, computed alone, equal
    those of the vmapped ensemble, for arms that use each kind, none, and a closed window."""
    arms = ["none", "clamp:prev:L0H0:1.0", "cut:K:L0H*", "clamp:induction:L1H0:0.5+cut:V:L0H1@10-30",
            "cut:Q:L0H0@50-60"]
    tokens = _probe_tokens(short)
    for cfg in (short, short.replace(layer_norm=True)):
        params = init_params(cfg.model, jax.random.PRNGKey(3))
        iv = interventions.build(arms, cfg)

        def loss(p, member_iv):
            logits = apply(p, tokens, edits=interventions.active(member_iv, 40)[0])
            return jax.nn.logsumexp(logits, -1).mean(), logits

        together = jax.jit(jax.vmap(jax.grad(loss, has_aux=True), in_axes=(None, 0)))(params, iv)
        alone = jax.jit(jax.grad(loss, has_aux=True))
        for e in range(len(arms)):
            one = alone(params, jax.tree.map(lambda x, e=e: x[e], iv))
            for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(jax.tree.map(lambda x, e=e: x[e], together))):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        # members whose arm does nothing at step 40 (none; a cut whose window has not opened) equal the plain pass
        plain = alone(params, None)
        for e in (0, 4):
            for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(jax.tree.map(lambda x, e=e: x[e], together))):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_intervention_arrays_keep_their_checkpoint_layout(short):
    """The static sites are not arrays: the leaves and their paths (what a checkpoint stores and
    its digest covers) are those of earlier versions, so their runs resume."""
    iv = interventions.build(["none", "clamp:prev:L0H0:1.0", "cut:K:L0H*"], short)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(iv)[0]]
    assert paths == [f".{kind}.{field}" for kind in ("clamp_prev", "cut") for field in ("value", "start", "stop")]


def test_every_arm_runs_in_one_compiled_program(short):
    cfg = short.replace(steps=40, eval_every=20, chunk_steps=40)
    arms = ["none", "clamp:prev:L0H0:1.0", "freeze:W_pos", "cut:K:L0H*", "ablate:L1H1+ablate:L1H2+ablate:L1H3"]
    members = Members.grid(cfg.replace(seeds=8), arms=arms)
    assert len(members) == 40
    state = ensemble.init_ensemble(cfg, members)
    # the programs are cached per model and task (ensemble.program_config), so an earlier test of
    # this process may have traced this one for other members: count what this ensemble adds
    fn = ensemble.compiled_chunk(cfg, 2, 20, state)
    before = fn._cache_size()
    ensemble.train(cfg, state, 0, chunk_seconds=None)
    assert fn._cache_size() - before <= 1


@pytest.mark.parametrize("arm, fragment", [
    ("poke:L0H0", "unknown kind 'poke'"),
    ("ablate:L2H0", "head L2H0 out of range; allowed: L0H0..L1H1"),
    ("clamp:prev:L0H0:1.5", "strength 1.5 outside [0, 1]"),
    ("ablate:L1H0@100-900", "window @100-900 outside the run"),
    ("cut:K:L1H0", "has no later layer"),
    ("cut:K:L0H0:L0", "has no later layer"),
    ("freeze:W_in", "cannot freeze 'W_in' in this model"),
])
def test_bad_arms_get_one_line_and_nothing_is_written(capsys, tmp_path, arm, fragment):
    code = main(["sweep", *[a for a in tiny() if a != "--no-analysis"], "--steps", "300", "--intervention", "none", "--intervention", arm,
                 "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "s").exists()


def test_the_paired_shift_against_control(short):
    from induction_jax.phase.run import arm_effects
    members = Members.grid(short.replace(seeds=4), arms=["none", "ablate:L1H0"])

    class T:
        midpoint = np.array([100.0, 110.0, np.nan, 120.0, 130.0, 135.0, 150.0, 148.0])

    effects = arm_effects(members, {"in_context_score": T}, "in_context_score")
    row = effects["arms"]["ablate:L1H0"]
    assert (row["n_pairs"], row["n_pairs_timed"]) == (4, 3) and row["mean_shift"] == pytest.approx(83 / 3)
    assert row["ci95_low"] <= 25 and row["ci95_high"] >= 30
    assert effects["arms"]["none"]["n_timed"] == 3

    class Two:      # two timed pairs: a shift, but no interval (docs/definitions.md: n >= 3)
        midpoint = np.array([100.0, 110.0, np.nan, np.nan, 130.0, 135.0, 150.0, np.nan])

    row = arm_effects(members, {"in_context_score": Two}, "in_context_score")["arms"]["ablate:L1H0"]
    assert row["mean_shift"] == 27.5 and row["ci95_low"] is None and "needs at least 3" in row["ci95_note"]


def test_a_sweep_of_arms_names_every_arm_in_its_tables_figures_and_report(tmp_path):
    """`sweep --intervention ...` end to end: the arm column, the effects against control, the
    figures grouped by arm and the report."""
    import json

    import pandas as pd

    out = tmp_path / "arms"
    flags = [f for f in tiny(seeds=2) if f != "--no-analysis"]
    assert main(["sweep", *flags, "--steps", "300", "--intervention", "none", "--intervention", "freeze:W_pos",
                 "--out", str(out)]) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert sorted(metrics["arm"].unique()) == ["freeze:W_pos", "none"]
    summary = json.loads((out / "summary.json").read_text())
    assert [m["arm"] for m in summary["members"]] == ["none", "none", "freeze:W_pos", "freeze:W_pos"]
    stats = json.loads((out / "phase" / "stats.json").read_text())
    assert set(stats["arms"]) == {"none", "freeze:W_pos"}
    assert stats["interventions"]["arms"]["freeze:W_pos"]["n_pairs"] == 2
    for name in ("timing_by_arm", "survival", "in_context_score", "midpoint_distribution"):
        assert (out / "phase" / f"{name}.png").stat().st_size > 1000, name
    report = (out / "report.html").read_text()
    assert "freeze:W_pos" in report and "timing_by_arm" in report and "effects-table" in report
