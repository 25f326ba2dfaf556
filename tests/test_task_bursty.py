"""The bursty few-shot classification task: its sampler has the statistics it defines (bursty
fraction, B copies, Zipf class frequencies, the exemplar noise), an ideal in-context learner
scores 1 on the ICL probes and chance on IWL and a lookup table the opposite, member i of a
per-member sweep is the single run with its parameters, and bad input is one line, exit 2,
nothing written."""

from __future__ import annotations

import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import induction_jax as ij
from induction_jax.config import ConfigError, RunConfig
from induction_jax.tasks import bursty as bt
from induction_jax.tasks.bursty import Bursty

V = 16 + 128 * 2 + 32


def _task(**kw):
    """16 labels, 128 classes of 2 exemplars, 32 novel classes (V = 304 tokens)."""
    return Bursty(**{"bursty_labels": 16, "bursty_max_classes": 128, "bursty_classes": 128, "bursty_novel": 32, **kw})


def _params(task, key=1, **kw):
    p = {**task.default_member_params(), **kw}
    return {**p, **task.member_data(jax.random.PRNGKey(key), p)}


def _sample(task, n, key=0, **kw):
    b = task.sample(jax.random.PRNGKey(key), _params(task, **kw), n, V)
    return {k: np.asarray(v) for k, v in b.items()}


def _wilson_ok(hits, n, p):
    """p inside hits/n +- 4.5 binomial standard errors (a Monte Carlo check that fails ~1e-5 of the time)."""
    return abs(hits / n - p) <= 4.5 * np.sqrt(p * (1 - p) / n) + 1e-12


def test_layout_labels_and_items_are_where_they_are_defined():
    t = _task()
    b = _sample(t, 256, epsilon=0.5)
    x = b["tokens"]
    assert x.shape == (256, 17) and x.dtype == np.int32
    assert (x[:, 1::2] < 16).all() and (x[:, 0::2] >= 16).all() and (x[:, 0::2] < 16 + 256).all()
    cls_of = (x[:, 0::2] - 16) // 2
    np.testing.assert_array_equal(cls_of[:, :-1], b["context_class"])
    np.testing.assert_array_equal(cls_of[:, -1], b["query_class"])
    label = np.asarray(_params(t)["class_label"])
    np.testing.assert_array_equal(x[:, 1::2], label[b["context_class"]])       # each class its fixed label
    np.testing.assert_array_equal(b["answer"], label[b["query_class"]])
    assert sorted(np.bincount(label, minlength=16)) == [8] * 16                  # K/L classes per label


@pytest.mark.parametrize("B, p", [(2, 0.6), (4, 0.3)])
def test_bursty_fraction_and_B_copies(B, p):
    t = _task()
    n = 4000
    b = _sample(t, n, burstiness=B, p_bursty=p, n_classes=128)
    assert _wilson_ok(b["bursty"].sum(), n, p)
    ctx, q = b["context_class"], b["query_class"]
    for row, qc in zip(ctx[b["bursty"]], q[b["bursty"]]):
        counts = np.bincount(row)
        assert (counts[counts > 0] % B == 0).all()        # N/B groups of B (groups may share a class)
        assert counts[qc] >= B
    # non-bursty: the query's class is in the context only by chance (K = 128, N = 8: about 6%)
    present = np.array([qc in row for row, qc in zip(ctx[~b["bursty"]], q[~b["bursty"]])])
    assert present.mean() < 0.12


def test_burstiness_zero_means_no_bursty_sequence():
    assert not _sample(_task(), 200, burstiness=0, p_bursty=1.0)["bursty"].any()


@pytest.mark.parametrize("a, K", [(0.0, 32), (1.5, 64)])
def test_zipf_class_frequencies(a, K):
    t = _task()
    n = 3000
    b = _sample(t, n, p_bursty=0.0, zipf=a, n_classes=K)
    classes = np.concatenate([b["context_class"].ravel(), b["query_class"]])
    P = (np.arange(1, K + 1) ** -a) / (np.arange(1, K + 1) ** -a).sum()
    counts = np.bincount(classes, minlength=128)
    assert counts[K:].sum() == 0
    for k in (0, 1, K // 2, K - 1):
        assert _wilson_ok(counts[k], len(classes), P[k]), (k, counts[k] / len(classes), P[k])
    # chi-square over all K classes against the Zipf law (df = K-1; 99.99% quantile well below K-1 + 6 sqrt(2(K-1)))
    chi2 = ((counts[:K] - len(classes) * P) ** 2 / (len(classes) * P)).sum()
    assert chi2 < (K - 1) + 6 * np.sqrt(2 * (K - 1))


@pytest.mark.parametrize("eps", [0.0, 0.3])
def test_within_class_variation_is_the_probability_of_another_exemplar(eps):
    t = _task(bursty_exemplars=4, bursty_max_classes=32, bursty_classes=32)
    b = t.sample(jax.random.PRNGKey(3), _params(t, epsilon=eps), 2000, V)
    exemplar = (np.asarray(b["tokens"])[:, 0::2] - 16) % 4
    assert _wilson_ok((exemplar != 0).sum(), exemplar.size, eps)
    if eps:
        assert set(np.unique(exemplar[exemplar != 0])) == {1, 2, 3}


def test_traced_member_parameters_draw_what_static_ones_draw():
    t = _task()
    static = _params(t, burstiness=4, p_bursty=0.6, epsilon=0.2, zipf=1.0, n_classes=64)
    traced = {k: jnp.asarray(v) for k, v in static.items()}
    for fn in (t.sample, t.probe):
        want = fn(jax.random.PRNGKey(5), static, 12, V)
        got = jax.jit(lambda k, p: fn(k, p, 12, V))(jax.random.PRNGKey(5), traced)
        for name in want:
            np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]))


def _probe_scores(t, params, logits_fn, n=3000):
    batch = t.probe(jax.random.PRNGKey(7), params, n, V)
    assert len(batch["tokens"]) == t.probe_sequences(n) == n
    logits = logits_fn(jax.random.PRNGKey(8), batch)
    acts = SimpleNamespace(pattern_BLHTS=jnp.zeros((n, 2, 1, 17, 17)))
    return {k: float(v) for k, v in t.probe_metrics(logits, acts, batch).items() if np.ndim(v) == 0}, batch


def test_probe_parts_are_what_they_claim():
    t = _task()
    params = _params(t, zipf=1.0)
    batch = {k: np.asarray(v) for k, v in t.probe(jax.random.PRNGKey(7), params, 300, V).items()}
    x, kind = batch["tokens"], batch["kind"]
    first_novel = 16 + 256
    assert (x[kind == 0][:, 0::2] >= first_novel).all() and (x[kind != 0][:, 0::2] < first_novel).all()
    for part in (0, 1):                                        # ICL probes: the query's item is in the context
        assert all(q in row for row, q in zip(x[kind == part][:, :-1:2], x[kind == part][:, -1]))
    iwl_cls = (x[kind == 2][:, 0::2] - 16) // 2
    assert all(q not in row for row, q in zip(iwl_cls[:, :-1], iwl_cls[:, -1]))
    assert (batch["answer"][kind == 1] != batch["true_label"][kind == 1]).all()


def test_ideal_in_context_learner_scores_1_on_icl_and_chance_on_iwl():
    t = _task()
    params = _params(t)
    s, batch = _probe_scores(t, params, lambda k, b: bt.in_context_predictor(k, b["tokens"], t.item_classes(b["tokens"]), 16, V))
    assert s["icl_accuracy"] == 1.0 and s["icl_swap_accuracy"] == 1.0 and s["icl_loss"] < 1e-3
    assert _wilson_ok(s["iwl_accuracy"] * 1000, 1000, 1 / 16)          # 3000 // 3 IWL queries
    assert _wilson_ok(s["swap_iwl_fraction"] * 1000, 1000, 0.0)


def test_lookup_table_scores_1_on_iwl_and_chance_on_icl():
    t = _task()
    params = _params(t)
    s, _ = _probe_scores(t, params, lambda k, b: bt.lookup_predictor(k, b["tokens"], params["class_label"], 16, 2, V))
    assert s["iwl_accuracy"] == 1.0 and s["swap_iwl_fraction"] == 1.0 and s["icl_swap_accuracy"] == 0.0
    assert _wilson_ok(s["icl_accuracy"] * 1000, 1000, 1 / 16)


def test_induction_score_reads_the_attention_from_the_query_to_its_class_labels():
    t = _task()
    batch = t.probe(jax.random.PRNGKey(7), _params(t), 30, V)
    mask = np.asarray(bt.query_label_mask(t.item_classes(batch["tokens"])), float)
    pattern = np.zeros((30, 2, 2, 17, 17))
    pattern[:, 1, 1, -1] = mask / np.maximum(mask.sum(1, keepdims=True), 1)   # head L1H1: the query attends there
    pattern[:, 1, 0, -1, 0] = 1.0                                 # head L1H0: on the first item
    pattern[:, 0, 0, np.arange(1, 16, 2), np.arange(0, 15, 2)] = 1.0   # head L0H0: each label to its item
    logits = jnp.zeros((30, 17, V))
    out = t.probe_metrics(logits, SimpleNamespace(pattern_BLHTS=jnp.asarray(pattern)), batch)
    np.testing.assert_allclose(np.asarray(out["query_label_attention"][1]), [0.0, 1.0], atol=1e-6)
    assert float(out["induction_score"]) == pytest.approx(1.0) and float(out["prev_token_score"]) == pytest.approx(1.0)


def _cfg(**kw):
    task = Bursty(bursty_max_classes=16, bursty_labels=4, bursty_novel=8, bursty_pairs=4, bursty_copies=2,
                  bursty_classes=16)
    return RunConfig().replace(task=task, **{"d_vocab": 4 + 32 + 8, "n_ctx": 9, "n_heads": 1, "d_model": 16, "seeds": 2,
                                             "steps": 20, "eval_every": 5, "batch_size": 16, "probe_batch_size": 24,
                                             "lr": 1e-2, **kw})


def test_member_of_a_per_member_sweep_is_the_single_run(tmp_path):
    sweep = ij.sweep(_cfg(), tmp_path / "sweep", task_params={"burstiness": [1, 2], "n_classes": [8, 16],
                                                             "zipf": [0.0, 1.0]}, progress=False)
    m = sweep.metrics()
    members = sweep.members.table()
    i = next(j for j in range(len(members["init_seed"])) if members["burstiness"][j] == 1
             and members["n_classes"][j] == 8 and members["zipf"][j] == 1.0 and members["init_seed"][j] == 1)
    single = ij.train(_cfg(seeds=1, first_seed=1, bursty_copies=1, bursty_classes=8, bursty_zipf=1.0),
                      tmp_path / "single", progress=False)
    s = single.metrics()
    cols = ["loss", "train_accuracy", "icl_accuracy", "iwl_accuracy", "icl_loss", "induction_score"]
    a = m[m.member == i].set_index("step")[cols]
    b = s[s.member == 0].set_index("step")[cols]
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=2e-5, atol=1e-6)
    other = m[(m.burstiness == 2) & (m.n_classes == 16) & (m.zipf == 0.0) & (m.init_seed == 1)].set_index("step")
    assert not np.allclose(other["loss"].to_numpy(float), b["loss"].to_numpy(float))


def test_a_sweep_is_timed_by_phase(tmp_path, capsys):
    run = ij.sweep(_cfg(steps=60), tmp_path / "sweep", task_params={"burstiness": [1, 2]}, progress=False)
    assert run.phase()["from_step"] == 0
    timings = (run.path / "phase" / "timings.csv").read_text()
    assert "icl_accuracy" in timings and "induction_score" in timings
    heads = (run.path / "head_metrics.csv").read_text()
    assert ",query_label_attention," in heads
    # --from-step: the curves start there (s0 is their level at that step), nothing before it is timed
    s0_from_0 = run.timings().set_index(["metric", "member"]).s0
    stats = run.phase(from_step=30)
    assert stats["from_step"] == 30
    t = run.timings()
    timed = t[~t.censored.astype(bool)]
    assert (timed.onset >= 30).all() and (timed.midpoint >= 30).all()
    assert not np.allclose(t.set_index(["metric", "member"]).s0.loc[s0_from_0.index], s0_from_0)
    from induction_jax.cli import main
    capsys.readouterr()
    code = main(["phase", str(run.path), "--from-step", "60"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--from-step 60: must be a step inside the run; allowed: 0 to 59" in err[0], err


@pytest.mark.parametrize("argv, message", [
    (["--task-param", "burstiness=3"], r"--task-param burstiness: burstiness=3 must divide the context pairs N=8"),
    (["--task-param", "burstiness=8"], r"--task-param burstiness: burstiness='8' out of range; allowed: integers 0\.\.7$"),
    (["--bursty-copies", "3"], r"bursty_copies=3: must be 0 or a divisor of bursty_pairs=8 below it$"),
    (["--task-param", "epsilon=-0.1"], r"--task-param epsilon: epsilon='-0\.1' out of range; allowed: numbers 0\.\.1$"),
    (["--bursty-epsilon", "-0.1"], r"bursty_epsilon=-0\.1: must be >= 0"),
    (["--task-param", "n_classes=200"], r"--task-param n_classes: n_classes='200' out of range; allowed: integers 2\.\.24$"),
    (["--bursty-max-classes", "1000"], r"bursty_max_classes=1000, .* = 2016 tokens must fit d_vocab=64$"),
    (["--bursty-labels", "400"], r"bursty_labels=400, .* must fit d_vocab=64$"),
    (["--bursty-pairs", "30", "--bursty-probe-copies", "6"], r"bursty_pairs=30: sequences of 2N\+1=61 tokens must fit "
                                                           r"the context n_ctx=50$"),
    # Gaussian items
    (["--bursty-items", "vectors"], r"bursty_items='vectors'.*tokens.*gaussian"),
    (["--bursty-epsilon", "2"], r"bursty_epsilon=2\.0: with token items it is a probability; allowed: 0\.\.1"),
    (["--bursty-items", "gaussian", "--d-vocab", "64"],
     r"labels \+ classes x exemplars \+ novel x exemplars = 72 tokens must fit d_vocab=64$"),
    (["--bursty-items", "gaussian", "--d-vocab", "80", "--task-param", "epsilon=11"],
     r"--task-param epsilon: epsilon='11' out of range; allowed: numbers 0\.\.10$"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, argv, message):
    from induction_jax.cli import main
    out = tmp_path / "sweep"
    code = main(["sweep", "--task", "bursty", "--out", str(out), "--seeds", "2", "--steps", "5",
                 "--no-progress", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[-1]), err
    assert not out.exists()


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"^bursty_probe_copies=3: must be a divisor"):
        Bursty(bursty_probe_copies=3)
    with pytest.raises(ConfigError, match=r"^bursty_classes=200: must be <= bursty_max_classes=24$"):
        Bursty(bursty_classes=200)
    with pytest.raises(ConfigError, match=r"^bursty_probe_copies=1: the ICL probe's N/copies=8 classes"):
        Bursty(bursty_probe_copies=1, bursty_labels=4)


# ---- Gaussian items (Reddy's form): W_E fixed per member to class prototypes plus noise -----------
def _gcfg(**kw):
    task = Bursty(bursty_items="gaussian", bursty_max_classes=32, bursty_classes=32, bursty_labels=4,
                  bursty_novel=8, bursty_exemplars=3, bursty_pairs=4, bursty_copies=2, bursty_epsilon=0.5)
    return RunConfig().replace(task=task, **{"d_vocab": task.vocab_needed + 5, "n_ctx": 9, "n_heads": 1,
                                             "d_model": 256, "seeds": 2, "steps": 6, "eval_every": 3,
                                             "batch_size": 16, "probe_batch_size": 24, "lr": 1e-2, **kw})


def _init(cfg, seed=1, task_params=None):
    from induction_jax import training
    return training.init_member(cfg, jnp.uint32(seed), jnp.uint32(seed), jnp.float32(1e-2), jnp.float32(0.0),
                                None, task_params)


@pytest.mark.parametrize("eps", [0.0, 0.5, 2.0])
def test_gaussian_items_are_prototypes_plus_noise_in_the_fixed_embedding(eps):
    cfg = _gcfg()
    t = cfg.task
    W = np.asarray(_init(cfg, task_params={"epsilon": jnp.float32(eps)}).params["W_E"])
    assert W.shape == (cfg.model.d_vocab, 256)
    items = W[t.bursty_labels:t.vocab_needed].reshape(32 + 8, 3, 256)          # training then novel classes
    norms = np.linalg.norm(items, axis=-1)
    assert abs(norms.mean() - 1) < 0.03 and abs(np.linalg.norm(W[:4], axis=-1).mean() - 1) < 0.15
    unit = items / norms[..., None]
    same = np.einsum("kad,kbd->kab", unit, unit)[:, [0, 0, 1], [1, 2, 2]]     # exemplars of one class
    other = np.einsum("kd,kd->k", unit[:-1, 0], unit[1:, 0])                  # neighbouring classes
    # cos between two exemplars of a class: 1 / (1 + eps^2) (sd ~ 1/sqrt(D) = 0.06 per pair, 120 pairs)
    assert abs(same.mean() - 1 / (1 + eps ** 2)) < 0.03, same.mean()
    assert abs(other.mean()) < 0.03
    # a different seed: other prototypes
    W2 = np.asarray(_init(cfg, seed=2, task_params={"epsilon": jnp.float32(eps)}).params["W_E"])
    assert abs(np.einsum("kd,kd->k", W[4:40], W2[4:40]).mean()) < 0.05


def test_gaussian_embedding_is_never_trained_and_the_rest_is(tmp_path):
    cfg = _gcfg(seeds=1, first_seed=3, weight_decay=0.1)
    start = _init(cfg, seed=3).params
    run = ij.train(cfg, tmp_path / "run", progress=False)
    end = run.params(member=0)
    # equal up to the rounding of drawing it eagerly here and compiled there; a step of AdamW at
    # lr 1e-2 would move every entry by about 1e-2
    np.testing.assert_allclose(np.asarray(end["W_E"]), np.asarray(start["W_E"]), rtol=0, atol=1e-6)
    assert not np.allclose(np.asarray(end["W_Q"]), np.asarray(start["W_Q"]))
    assert not np.allclose(np.asarray(end["W_U"]), np.asarray(start["W_U"]))


def test_gaussian_probe_novel_classes_have_noisy_exemplars_and_the_ideal_learner_scores_1():
    cfg = _gcfg()
    t, Vg = cfg.task, cfg.model.d_vocab
    params = _params(t)
    batch = {k: np.asarray(v) for k, v in t.probe(jax.random.PRNGKey(7), params, 3000, Vg).items()}
    x, kind = batch["tokens"], batch["kind"]
    novel = x[kind == 0]
    assert (novel[:, 0::2] >= t.first_novel).all() and (novel[:, 0::2] < t.vocab_needed).all()
    cls = np.asarray(t.item_classes(jnp.asarray(novel)))
    assert (cls >= 32).all() and all(q in row for row, q in zip(cls[:, :-1], cls[:, -1]))
    # the query is one of its class's 3 exemplars drawn afresh: the same token as a given context
    # item of its class 1/3 of the time, so it is often no token of the context at all
    assert np.mean([q not in row for row, q in zip(novel[:, :-1:2], novel[:, -1])]) > 0.1
    logits = bt.in_context_predictor(jax.random.PRNGKey(8), jnp.asarray(x), t.item_classes(jnp.asarray(x)), 4, Vg)
    acts = SimpleNamespace(pattern_BLHTS=jnp.zeros((3000, 2, 1, 9, 9)))
    s = t.probe_metrics(logits, acts, {k: jnp.asarray(v) for k, v in batch.items()})
    assert float(s["icl_accuracy"]) == 1.0 and float(s["icl_swap_accuracy"]) == 1.0


def test_the_llc_does_not_move_what_the_task_fixes():
    from induction_jax.slt.run import restriction_mask
    cfg = _gcfg()
    params = _init(cfg).params
    mask = restriction_mask(params, None, cfg)
    assert float(mask["W_E"]) == 0.0 and all(float(mask[k]) == 1.0 for k in params if k != "W_E")
    assert float(restriction_mask(params, "L1H0", cfg)["W_E"]) == 0.0
    assert restriction_mask(params, None, _cfg()) is None                   # token items: every weight moves
