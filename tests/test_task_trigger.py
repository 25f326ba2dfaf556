"""The trigger-bigram task (Bietti et al. 2023): the sampler against its definition (every trigger is
followed by its output, other transitions follow pi within Monte Carlo error, random triggers are
drawn from the unigram), the global bigram model (exact Zipf stationary distribution; a corpus'
counts), the floors (the ideal copier's in-context loss 0, pi's own bigram loss), the memory-recall
probes on hand-set weights (recall 1) and on random weights (chance), member i of a per-member sweep
equal to the single run with its parameters, and bad input one line, exit 2, nothing written."""

from __future__ import annotations

import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import induction_jax as ij
from induction_jax.config import ConfigError, ModelConfig, RunConfig
from induction_jax.model import init_params
from induction_jax.tasks import trigger as tg
from induction_jax.tasks.trigger import Trigger, bigram_model


def _draw(task, n, V, key=0, **params):
    batch = task.sample(jax.random.PRNGKey(key), params, n, V)
    return {k: np.asarray(v) for k, v in batch.items()}


def _recount(tokens, forced):
    """trigger_count recomputed in Python from its definition: the occurrences of x_t as a trigger
    up to and including t (0 if x_t is no trigger)."""
    out = np.zeros((tokens.shape[0], tokens.shape[1] - 1), np.int64)
    for b, row in enumerate(tokens):
        seen = {}
        for t in range(len(row) - 1):
            if row[t] in forced[b]:
                seen[row[t]] = seen.get(row[t], 0) + 1
                out[b, t] = seen[row[t]]
    return out


@pytest.mark.parametrize("fixed", [1, 0])
def test_every_active_trigger_is_followed_by_its_output_and_counts_are_occurrences(fixed):
    task = Trigger(trigger_length=40, trigger_max=4)
    b = _draw(task, 64, 32, key=fixed, k=jnp.int32(2), fixed_triggers=jnp.int32(fixed))
    x, q, o, active = b["tokens"], b["triggers"], b["outputs"], b["active"]
    assert x.shape == (64, 40) and x.min() >= 0 and x.max() < 32
    assert active[:, :2].all() and not active[:, 2:].any()
    forced = [{int(q[i, j]): int(o[i, j]) for j in range(2)} for i in range(64)]
    for i in range(64):
        assert len(set(q[i])) == 4                                    # distinct triggers
        for t in range(39):
            if x[i, t] in forced[i]:
                assert x[i, t + 1] == forced[i][x[i, t]]
    np.testing.assert_array_equal(b["trigger_count"], _recount(x, forced))
    if fixed:
        np.testing.assert_array_equal(q, np.tile(np.argsort(bigram_model(task, 32).rank)[:4], (64, 1)))
    else:
        assert len({tuple(r[:2]) for r in q}) > 20                    # drawn per sequence
    assert (b["trigger_count"] >= 2).sum() > 100                      # the in-context targets exist


def test_other_transitions_follow_pi_within_monte_carlo_error():
    task = Trigger(trigger_length=64, trigger_count=1, trigger_max=1)
    V = 16
    b = _draw(task, 2048, V, key=3)
    pi = bigram_model(task, V).pi
    src, dst = b["tokens"][:, :-1], b["tokens"][:, 1:]
    free = b["trigger_count"] == 0
    counts = np.zeros((V, V))
    np.add.at(counts, (src[free], dst[free]), 1)
    n_a = counts.sum(1, keepdims=True)
    assert (n_a[1:] > 500).all() and n_a[0] == 0                      # token 0 is the trigger: never free
    z = (counts[1:] / n_a[1:] - pi[1:]) / np.sqrt(pi[1:] * (1 - pi[1:]) / n_a[1:] + 1e-12)
    assert np.abs(z).max() < 5.0, np.abs(z).max()                     # 240 cells, 5 sigma
    # the first token is drawn from the unigram
    first = np.bincount(b["tokens"][:, 0], minlength=V) / 2048
    u = bigram_model(task, V).unigram
    assert np.abs(first - u).max() < 5 * np.sqrt(u.max() / 2048)


def test_random_triggers_are_drawn_from_the_unigram():
    task = Trigger(trigger_length=8, trigger_count=1, trigger_max=3, trigger_fixed=False)
    V = 16
    q = _draw(task, 8192, V, key=4)["triggers"][:, 0]                 # the first of a draw without replacement
    u = bigram_model(task, V).unigram
    freq = np.bincount(q, minlength=V) / len(q)
    assert np.abs(freq - u).max() < 5 * np.sqrt(u.max() / len(q))


def test_traced_member_parameters_draw_what_the_static_settings_draw():
    task = Trigger(trigger_length=20, trigger_count=2, trigger_max=4, trigger_fixed=False)
    static = _draw(task, 8, 32, key=5)
    traced = jax.jit(lambda key, k, f: task.sample(key, {"k": k, "fixed_triggers": f}, 8, 32))(
        jax.random.PRNGKey(5), jnp.int32(2), jnp.int32(0))
    for name in ("tokens", "trigger_count", "triggers"):
        np.testing.assert_array_equal(static[name], np.asarray(traced[name]))


def test_the_synthetic_bigram_has_the_zipf_unigram_as_stationary_distribution():
    model = bigram_model(Trigger(trigger_zipf=1.2, trigger_concentration=0.5), 40)
    np.testing.assert_allclose(model.pi.sum(1), 1.0, atol=1e-12)
    u = (np.arange(40) + 1.0) ** -1.2
    np.testing.assert_allclose(model.unigram, u / u.sum(), atol=1e-15)
    np.testing.assert_allclose(model.unigram @ model.pi, model.unigram, atol=1e-10)
    np.testing.assert_array_equal(model.rank, np.arange(40))          # token v has rank v
    assert not np.allclose(model.pi, model.unigram[None])              # rows are not the unigram


def test_a_corpus_gives_its_character_counts(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abab ba")
    task = Trigger(trigger_corpus=str(path), trigger_count=1, trigger_max=2)
    model = bigram_model(task, 8)
    assert model.chars == " ab" and model.n_tokens == 3
    # pairs: ab, ba, ab, b_, _b, ba -> a: {b: 2}; b: {a: 2, ' ': 1}; ' ': {b: 1}
    np.testing.assert_allclose(model.pi[1, :3], [0, 0, 1])
    np.testing.assert_allclose(model.pi[2, :3], [1 / 3, 2 / 3, 0])
    np.testing.assert_allclose(model.pi[0, :3], [0, 0, 1])
    np.testing.assert_allclose(model.unigram, [1 / 7, 3 / 7, 3 / 7, 0, 0, 0, 0, 0])
    b = _draw(task, 64, 8, key=6)
    assert b["tokens"].max() < 3 and (b["outputs"] < 3).all()          # only the corpus' tokens occur


class _Acts(SimpleNamespace):
    pass


def _oracle_logits(batch, V, pi):
    """The ideal predictor: log pi after a non-trigger, the known output after a trigger seen
    before, uniform over the n tokens at a first occurrence."""
    x, count = batch["tokens"], batch["trigger_count"]
    B, T = x.shape
    logits = np.full((B, T, V), -1e9, np.float32)
    forced = {(b, int(q)): int(o) for b in range(B) for q, o, a in zip(batch["triggers"][b], batch["outputs"][b],
                                                                     batch["active"][b]) if a}
    n = int(batch["n_tokens"][0])
    for b in range(B):
        for t in range(T - 1):
            if count[b, t] == 0:
                logits[b, t] = np.log(np.maximum(pi[x[b, t]], 1e-30))
            elif count[b, t] == 1:
                logits[b, t, :n] = 0.0
            else:
                logits[b, t, forced[(b, int(x[b, t]))]] = 0.0
    return jnp.asarray(logits)


def test_the_floors_are_the_ideal_copier_and_pi_itself():
    task = Trigger(trigger_length=48)
    V = 24
    batch = _draw(task, 64, V, key=7)
    pi = bigram_model(task, V).pi
    acts = _Acts(pattern_BLHTS=jnp.zeros((64, 2, 1, 48, 48)))
    out = task.probe_metrics(_oracle_logits(batch, V, pi), acts, {k: jnp.asarray(v) for k, v in batch.items()})
    floors = task.baselines(batch)
    assert float(out["icl_loss"]) == pytest.approx(0.0, abs=1e-6) and floors["icl_floor_loss"] == 0.0
    assert float(out["icl_accuracy"]) == 1.0
    assert float(out["first_output_loss"]) == pytest.approx(np.log(V), rel=1e-5)
    assert float(out["bigram_loss"]) == pytest.approx(floors["bigram_floor_loss"], rel=1e-5)
    # pi's loss on the bigram targets is its conditional entropy, weighted by the sources, within MC error
    src = batch["tokens"][:, :-1][batch["trigger_count"] == 0]
    H = -(pi * np.log(np.maximum(pi, 1e-300))).sum(1)
    n = len(src)
    assert floors["bigram_floor_loss"] == pytest.approx(H[src].mean(), abs=5 * np.log(V) / np.sqrt(n))
    assert 0.5 < floors["bigram_floor_loss"] < np.log(V) - 0.3          # informative global bigrams
    # a uniform predictor is at ln V everywhere, and is beaten on both parts by the oracle
    flat = task.probe_metrics(jnp.zeros((64, 48, V)), acts, {k: jnp.asarray(v) for k, v in batch.items()})
    assert float(flat["icl_loss"]) == pytest.approx(np.log(V), rel=1e-5)
    assert float(flat["bigram_loss"]) == pytest.approx(np.log(V), rel=1e-5)


def _hand_set(V=8, T=8):
    """Weights that store the three associations exactly: one-hot tokens and positions (D = V + T),
    one head per layer (d_head = D). Layer 0: query p_t, key of p_s is p_{s+1} (previous token);
    its OV remaps e_z to e_perm(z). Layer 1: key W_K^2 undoes the remap; OV and W_U copy."""
    D = V + T
    perm = np.roll(np.arange(V), 3)
    E = np.eye(D)[:V]
    P = np.eye(D)[V:]
    I = np.eye(D)
    shift = np.zeros((D, D))
    for s in range(T - 1):
        shift[V + s, V + s + 1] = 1.0
    remap = np.zeros((D, D))
    remap[np.arange(V), perm] = 1.0
    W = {"W_E": E, "W_pos": P, "W_U": np.eye(D)[:, :V],
         "W_Q": np.stack([I, I])[:, None], "W_K": np.stack([shift, remap.T])[:, None],
         "W_V": np.stack([remap, I])[:, None], "W_O": np.stack([I, I])[:, None]}
    return {k: jnp.asarray(v, jnp.float32) for k, v in W.items()}


def test_memory_recall_is_one_on_weights_that_store_the_association():
    W = _hand_set()
    assert float(tg.wo2_recall(W)) == 1.0
    assert float(tg.wk1_recall(W, 8)) == 1.0
    assert float(tg.wk2_recall(W, jnp.ones(8, bool))) == 1.0
    assert float(tg.wk2_recall(W, jnp.arange(8) < 3)) == 1.0            # the fixed triggers only
    # break each association: recall drops
    broken = dict(W, W_U=W["W_U"][:, ::-1])
    assert float(tg.wo2_recall(broken)) == 0.0
    assert float(tg.wk1_recall(dict(W, W_K=W["W_K"].at[0].set(jnp.eye(16)[None])), 8)) < 0.2
    assert float(tg.wk2_recall(dict(W, W_V=W["W_V"].at[0].set(jnp.eye(16)[None])), jnp.ones(8, bool))) < 0.5


def test_memory_recall_of_random_weights_is_at_chance():
    model = ModelConfig(d_vocab=64, n_ctx=64, n_layers=2, n_heads=1, d_model=64)
    draws = [init_params(model, jax.random.PRNGKey(i)) for i in range(12)]
    wo2 = np.mean([float(tg.wo2_recall(W)) for W in draws])
    wk1 = np.mean([float(tg.wk1_recall(W, 64)) for W in draws])
    wk2 = np.mean([float(tg.wk2_recall(W, jnp.ones(64, bool))) for W in draws])
    # chance: 1/64 per token (1/(t+1) per position, mean over t = 1..63: 0.058); 12 x 64 draws
    se = np.sqrt((1 / 64) / (12 * 64))
    assert abs(wo2 - 1 / 64) < 5 * se + 0.01 and abs(wk2 - 1 / 64) < 5 * se + 0.01, (wo2, wk2)
    chance_pos = np.mean(1 / (np.arange(1, 64) + 1))
    assert abs(wk1 - chance_pos) < 0.04, (wk1, chance_pos)


def _cfg(**kw):
    base = dict(task="trigger", trigger_length=16, n_ctx=16, d_vocab=12, n_layers=2, n_heads=2, d_model=16,
                seeds=1, first_seed=1, steps=10, eval_every=5, batch_size=8, probe_batch_size=8, trigger_max=3)
    return RunConfig().replace(**(base | kw))


def test_member_of_a_per_member_sweep_is_the_single_run(tmp_path):
    sweep = ij.sweep(_cfg(), tmp_path / "sweep", task_params={"k": [1, 3], "fixed_triggers": [0, 1]},
                     progress=False)
    m = sweep.metrics()
    members = sweep.members.table()
    assert members["k"] == [1, 1, 3, 3] and members["fixed_triggers"] == [0, 1, 0, 1]
    single = ij.train(_cfg(trigger_count=3, trigger_fixed=False), tmp_path / "single", progress=False)
    s = single.metrics()
    cols = ["loss", "train_icl_loss", "icl_loss", "icl_accuracy", "bigram_loss", "wo2_recall", "wk2_recall",
            "wk1_recall", "induction_attention"]
    a = m[m.member == 2].set_index("step")[cols]
    b = s[s.member == 0].set_index("step")[cols]
    np.testing.assert_allclose(a.to_numpy(float), b.to_numpy(float), rtol=2e-5, atol=1e-6)
    # the members with another k or kind of trigger trained on other data from the same init
    for j in (0, 3):
        assert not np.allclose(m[m.member == j].set_index("step")["loss"].to_numpy(float), a["loss"].to_numpy(float))


@pytest.mark.parametrize("argv, message", [
    (["--trigger-max", "20", "--trigger-count", "3"], r"trigger_max=20: k triggers must be distinct tokens; "
                                                      r"allowed: <= 12 \(the task's vocabulary\)$"),
    (["--trigger-count", "5", "--trigger-max", "4"], r"trigger_count=5: must be <= trigger_max=4$"),
    (["--task-param", "k=0,2"], r"--task-param k: k='0' out of range; allowed: integers 1\.\.8$"),
    (["--task-param", "fixed_triggers=2"], r"--task-param fixed_triggers: fixed_triggers='2' out of range; "
                                           r"allowed: integers 0\.\.1$"),
    (["--trigger-corpus", "/nonexistent/shakespeare.txt"], r"--trigger-corpus '/nonexistent/shakespeare\.txt': "
                                                           r"cannot read it \(No such file or directory\)"),
    (["--trigger-length", "40"], r"trigger: sequences of 40 tokens must fit the context n_ctx=16$"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, argv, message):
    from induction_jax.cli import main
    out = tmp_path / "sweep"
    code = main(["sweep", "--task", "trigger", "--d-vocab", "12", "--n-ctx", "16", "--trigger-length", "16",
                 "--out", str(out), "--seeds", "2", "--steps", "5", "--no-progress", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[-1]), err
    assert not out.exists()


def test_a_corpus_with_more_characters_than_the_vocabulary_is_refused(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("abcdefghij")
    with pytest.raises(ConfigError, match=r"^--trigger-corpus .*: 10 distinct characters need d_vocab >= 10; got 8$"):
        RunConfig().replace(task="trigger", trigger_corpus=str(path), d_vocab=8, trigger_count=1, trigger_max=1)
    with pytest.raises(ConfigError, match=r"^--trigger-corpus .*: cannot read it"):
        Trigger(trigger_corpus=str(tmp_path / "missing.txt"))


def test_a_trigger_corpus_changed_under_a_resumed_run_is_refused(capsys, tmp_path):
    """config.json records the --trigger-corpus digest when the run starts (Task.input_files, the
    text task's mechanism): a resume after the file changed is one line, exit 2, nothing touched;
    the synthetic model records no digest."""
    import json

    from conftest import tree_digest
    from induction_jax.cli import main

    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat and the bat ate a rat\n" * 20)
    out = tmp_path / "run"
    flags = ["--task", "trigger", "--trigger-corpus", str(corpus), "--d-vocab", "16", "--n-ctx", "16",
             "--trigger-length", "16", "--trigger-max", "2", "--trigger-count", "1", "--d-model", "16",
             "--n-heads", "2", "--seeds", "2", "--batch-size", "8", "--probe-batch-size", "8", "--eval-every", "10",
             "--chunk-steps", "10", "--no-analysis", "--no-progress"]
    assert main(["train", *flags, "--steps", "10", "--out", str(out)]) == 0
    recorded = json.loads((out / "config.json").read_text())["config"]["task"]["trigger_corpus_digest"]
    assert len(recorded) == 32
    assert main(["train", "--resume", str(out), "--steps", "20"]) == 0          # unchanged: resumes
    capsys.readouterr()
    corpus.write_text(corpus.read_text() + "one more line\n")
    before = tree_digest(out)
    code = main(["train", "--resume", str(out), "--steps", "30"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(
        r"--trigger-corpus '.*c\.txt': changed since the run started .*allowed: the recorded trigger corpus, "
        r"unchanged", err[0]), err
    assert tree_digest(out) == before
    assert RunConfig().replace(task="trigger").to_dict()["task"]["trigger_corpus_digest"] == ""
    import induction_jax as ij
    from induction_jax.rundir import RunDir
    corpus.unlink()                                  # the run is still read (config, tables) without its corpus
    assert RunDir(out).read_config().task.trigger_corpus_digest == recorded
    assert len(ij.open_run(out).metrics()) > 0
    assert main(["analyze", str(out)]) == 0          # the circuit analysis draws reference tokens, not the corpus
    capsys.readouterr()
    code = main(["train", "--resume", str(out), "--steps", "30"])     # what draws the task's tokens refuses
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--trigger-corpus" in err[0] and "cannot read it" in err[0], err
