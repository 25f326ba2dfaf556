"""The natural-text task: its windows are the corpus' own, the held-out split is disjoint from the
training one, the bytes / BPE / nanoGPT .bin inputs tokenise as they say, Olsson's in-context
score and the prefix-matching score on hand-built cases, an ensemble member is the single run
(the shared token stream passed as an argument gives the numbers of it baked in), and bad input
(a missing corpus, a corpus changed under a resumed run, a vocabulary too small) is one line,
exit 2, nothing written."""

from __future__ import annotations

import json
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import induction_jax as ij
from induction_jax import training
from induction_jax.config import ConfigError, RunConfig
from induction_jax.tasks import corpus as corpus_lib
from induction_jax.tasks.text import Text, context_indices, encoded

from conftest import tree_digest

WORDS = ["def", "return", "self", "import", "for", "in", "if", "else", "print", "x", "y", "value"]


def _corpus(path, n_lines=600, seed=0):
    """ASCII text: lower-case lines, then a tail of upper-case lines (a marker of the held-out part)."""
    rng = np.random.default_rng(seed)
    lines = [" ".join(rng.choice(WORDS, 6)) for _ in range(n_lines)]
    tail = [line.upper() for line in lines[: n_lines // 10]]
    path.write_text("\n".join(lines + tail) + "\n")
    return path


def _cfg(corpus, **kw):
    base = dict(task="text", corpus=str(corpus), tokenizer="bytes", d_vocab=256, n_ctx=16, text_length=16,
                d_model=16, n_heads=2, seeds=2, steps=20, eval_every=10, batch_size=8, probe_batch_size=8,
                heldout_fraction=0.1, chunk_steps=20)
    return RunConfig().replace(**(base | kw))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


def test_windows_are_the_corpus_and_the_split_is_disjoint(text_file):
    cfg = _cfg(text_file)
    shared = training.shared_arrays(cfg)
    text = text_file.read_bytes()
    assert len(shared["text_train"]) + len(shared["text_heldout"]) == len(text)
    train = cfg.task.sample(jax.random.PRNGKey(0), shared, 64, 256)["tokens"]
    probe = cfg.task.probe(jax.random.PRNGKey(1), shared, 64, 256)["tokens"]
    assert len(probe) == cfg.task.probe_sequences(64) == 128     # what memory.py sizes the probe by
    n_train, T = len(shared["text_train"]), 16
    placed = {"train": [], "probe": []}
    for part, rows in (("train", train), ("probe", probe[:64])):
        for row in np.asarray(rows):
            window = bytes(row.astype(np.uint8))
            at = text.find(window)
            assert at >= 0                                   # a window is a piece of the corpus
            if at == text.rfind(window):                     # where it occurs only once, where it is
                placed[part].append(at)
    # the training windows lie wholly in the training split, the probe's in the held-out one
    assert len(placed["train"]) > 48 and max(placed["train"]) + T <= n_train
    assert len(placed["probe"]) > 48 and min(placed["probe"]) >= n_train
    # the second half of the probe batch: repeated random tokens with period T // 2
    rand = np.asarray(probe[64:])
    np.testing.assert_array_equal(rand[:, 8:], rand[:, :8])


def test_bpe_is_trained_on_the_corpus_deterministically_and_decodes_to_it(text_file):
    enc = corpus_lib.encode(str(text_file), 0, "bpe", 300)
    assert enc.tokenizer == "bpe" and enc.tokens.max() < 300 and len(enc.tokens) < len(text_file.read_bytes()) / 2
    from tokenizers import Tokenizer
    tok = Tokenizer.from_str(enc.tokenizer_json)
    assert tok.decode(enc.tokens.tolist()) == text_file.read_text()
    again = corpus_lib.train_bpe(text_file.read_text(), 300).to_str()
    assert again == enc.tokenizer_json                      # the same corpus gives the same tokenizer
    cfg = _cfg(text_file, tokenizer="bpe", d_vocab=300)
    window = np.asarray(cfg.task.sample(jax.random.PRNGKey(3), training.shared_arrays(cfg), 4, 300)["tokens"])
    for row in window:
        assert tok.decode(row.tolist()) in text_file.read_text()


def test_nanogpt_bin_ids_are_used_as_they_are(tmp_path):
    ids = (np.arange(5000) * 7 % 97).astype(np.uint16)
    ids.tofile(tmp_path / "train.bin")
    enc = corpus_lib.encode(str(tmp_path / "train.bin"), 0, "bpe", 128)
    assert enc.tokenizer == "ids" and enc.vocab == 97
    np.testing.assert_array_equal(enc.tokens, ids)
    with pytest.raises(ConfigError, match=r"^--d-vocab 64: the \.bin corpus .* ids up to 96; allowed: >= 97$"):
        corpus_lib.encode(str(tmp_path / "train.bin"), 0, "bpe", 64)


def test_folder_is_read_in_sorted_order_and_the_default_is_the_stdlib(tmp_path):
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first\n")
    (tmp_path / ".hidden").write_text("never\n")
    corpus, text = corpus_lib.read(str(tmp_path), 0)
    assert text == b"first\nsecond\n" and corpus.n_files == 2
    stdlib, text = corpus_lib.read("", 100_000)
    assert len(text) == 100_000 and stdlib.n_files >= 1 and b"def " in text


def test_in_context_score_and_prefix_matching_on_hand_built_cases():
    assert context_indices(512) == (50, 500) and context_indices(128) == (12, 125)
    T, V, P = 128, 10, 64
    task = Text.__new__(Text)                            # no corpus needed for probe_metrics
    object.__setattr__(task, "text_length", T)
    tokens = np.zeros((2, T), np.int32)
    tokens[0] = np.arange(T) % V
    tokens[1] = np.tile(np.arange(P) % V, 2)
    logits = np.zeros((2, T, V), np.float32)             # uniform: loss ln V at every position
    late = context_indices(T)[1]
    logits[0, late - 1, tokens[0, late]] = 50.0          # the token at the late position predicted exactly
    pattern = np.zeros((2, 1, 2, T, T), np.float32)       # [B, L, H, T, S]
    pattern[..., np.arange(T), np.arange(T)] = 1.0        # head 0: attends to itself
    i = np.arange(P, T)
    pattern[:, 0, 1] = 0.0
    pattern[:, 0, 1, np.arange(T), np.arange(T)] = 1.0
    pattern[:, 0, 1, i, :] = 0.0
    pattern[:, 0, 1, i, i - P + 1] = 1.0                  # head 1: the token after the earlier copy
    out = task.probe_metrics(jnp.asarray(logits), types.SimpleNamespace(pattern_BLHTS=jnp.asarray(pattern)),
                             {"tokens": jnp.asarray(tokens)})
    np.testing.assert_allclose(out["in_context_score"], -np.log(V), rtol=1e-5)
    np.testing.assert_allclose(out["token_loss"][late - 1], 0.0, atol=1e-5)
    np.testing.assert_allclose(out["loss_early"], np.log(V), rtol=1e-5)
    # head 1 puts all its mass on the token after the earlier copy; head 0 none of it (distinct tokens per period)
    np.testing.assert_allclose(np.asarray(out["prefix_matching_score"]), [[0.0, 1.0]], atol=1e-6)


def test_an_ensemble_member_is_the_single_run(tmp_path, text_file):
    cfg = _cfg(text_file)
    run = ij.train(cfg, tmp_path / "run", progress=False)
    m = run.metrics()
    _, metrics, probes = jax.jit(lambda: training.train_member(cfg, jnp.uint32(1)))()   # the stream a constant
    member = m[m.member == 1].set_index("step")
    np.testing.assert_allclose(member.loss.dropna().to_numpy(), np.asarray(metrics["loss"]), rtol=2e-5, atol=1e-6)
    got = member.in_context_score.dropna().to_numpy()[1:]         # probes after steps 10, 20 (step 0: init)
    np.testing.assert_allclose(got, np.asarray(probes["in_context_score"]), rtol=2e-5, atol=1e-5)
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["task_inputs"]["corpus_digest"] == meta["config"]["task"]["corpus_digest"] != ""
    assert meta["task_inputs"]["tokenizer"] == "bytes" and meta["task_inputs"]["in_context_indices"] == [2, 16 - 1]
    curves = (tmp_path / "run" / "curve_metrics.csv").read_text().splitlines()
    assert curves[0] == "member,step,metric," + ",".join(map(str, range(1, 16)))
    assert len(curves) == 1 + 2 * 3                               # 2 members x probes at steps 0, 10, 20
    assert (tmp_path / "run" / "tokenizer.json").is_file()
    from induction_jax.metrics import read_curves
    member_, step, positions, values = read_curves(tmp_path / "run" / "curve_metrics.csv")["token_loss"]
    np.testing.assert_array_equal(positions, np.arange(1, 16))
    row = values[(member_ == 1) & (step == 20)][0]                # the curve's mean is the held-out loss
    np.testing.assert_allclose(row.mean(), member.heldout_loss.loc[20], rtol=1e-4)
    assert (tmp_path / "run" / "plots" / "token_loss.png").is_file()    # drawn, and in the report's figures
    # a study script's train_or_resume finds the finished run its own (its config records the digest)
    from induction_jax.runner import train_or_resume
    assert train_or_resume(cfg, tmp_path / "run", progress=False).path == run.path


def test_a_corpus_changed_under_a_resumed_run_is_refused(capsys, tmp_path):
    from induction_jax.cli import main

    corpus = _corpus(tmp_path / "c.txt", seed=1)
    out = tmp_path / "run"
    flags = ["--task", "text", "--corpus", str(corpus), "--tokenizer", "bytes", "--d-vocab", "256", "--n-ctx", "16",
             "--text-length", "16", "--d-model", "16", "--n-heads", "2", "--seeds", "2", "--batch-size", "8",
             "--probe-batch-size", "8", "--eval-every", "10", "--chunk-steps", "20", "--heldout-fraction", "0.1",
             "--no-analysis", "--no-progress"]
    assert main(["train", *flags, "--steps", "20", "--out", str(out)]) == 0
    capsys.readouterr()
    corpus.write_text(corpus.read_text() + "one more line\n")
    before = tree_digest(out)
    code = main(["train", "--resume", str(out), "--steps", "40"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(r"--corpus '.*c\.txt': changed since the run started", err[0]), err
    assert tree_digest(out) == before
    from induction_jax.rundir import RunDir
    corpus.unlink()                                  # the run is still read (config, tables) without its corpus
    assert RunDir(out).read_config().task.corpus_digest and len(ij.open_run(out).metrics()) > 0


@pytest.mark.parametrize("argv, message", [
    (["--corpus", "/nonexistent/x.txt"], r"--corpus '/nonexistent/x\.txt': no such file or folder; allowed: "),
    (["--d-vocab", "100"], r"--d-vocab 100: --tokenizer bpe starts from the 256 byte symbols .*allowed: 256\.\.65536$"),
    (["--text-length", "32"], r"--text-length 32: windows must fit the context; allowed: <= --n-ctx 16$"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(capsys, tmp_path, text_file, argv, message):
    from induction_jax.cli import main

    out = tmp_path / "run"
    base = {"--corpus": str(text_file), "--d-vocab": "300", "--n-ctx": "16", "--text-length": "16"}
    base.update(dict(zip(argv[::2], argv[1::2])))
    code = main(["train", "--task", "text", "--out", str(out), "--steps", "5", "--no-progress",
                 *[x for kv in base.items() for x in kv]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and re.search(message, err[-1]), err
    assert not out.exists()


def test_the_encoding_is_cached_per_task_and_vocabulary(text_file):
    a = encoded(Text(corpus=str(text_file), tokenizer="bytes"), 256)
    assert a is encoded(Text(corpus=str(text_file), tokenizer="bytes"), 256)


def test_the_corpus_is_counted_once_per_device_not_per_member(tmp_path):
    """The memory plan's measured bytes: a corpus 100 times longer costs the same per member, and
    its extra tokens once per device (the shared stream is an argument of the compiled chunk)."""
    from induction_jax import ensemble

    got = {}
    for n in (4_000, 400_000):
        (tmp_path / f"c{n}.bin").write_bytes((np.arange(n) % 97).astype(np.uint16).tobytes())
        got[n] = ensemble.measured_member_bytes(_cfg(tmp_path / f"c{n}.bin", d_vocab=128))
    (member_small, device_small), (member_big, device_big) = got[4_000], got[400_000]
    assert member_small == member_big
    itemsize = training.shared_arrays(_cfg(tmp_path / "c400000.bin", d_vocab=128))["text_train"].dtype.itemsize
    assert device_big - device_small == pytest.approx(396_000 * itemsize, rel=0.01)
