"""Natural text (Olsson et al. 2022, "In-context Learning and Induction Heads"): windows of a
tokenised corpus, and their measurements. docs/tasks/text.md defines every quantity.

Training batches are `text_length`-token windows of the corpus' training split at uniform
random offsets, drawn on the device from the member's data key. The token stream is held once
on the device, shared by every member (`Task.shared_data`: an argument of the compiled
programs, not a per-member array and not a constant baked into them); `tasks/corpus.py` reads,
digests, tokenises and splits it.

Probes, on a probe batch of `probe_batch_size` held-out windows (the last `heldout_fraction`
of the stream) and as many repeated random sequences (x[t] = x[t mod P], P = T // 2, tokens
uniform over the task's vocabulary):

- `token_loss` (a curve): the mean loss of the token at every position 1..T-1 of the
  held-out windows, written per probe step to curve_metrics.csv;
- `heldout_loss`: its mean over positions;
- `in_context_score`: Olsson's, the loss at a late position minus at an early one, their 500
  and 50 of 512 scaled to T (`context_indices`; 125 and 12 at T = 128). Negative = better later;
- `prefix_matching_score` (per head, [L, H]): on the repeated random sequences, each head's mean
  attention from a query in the second repeat to the positions right after earlier occurrences
  of its token (`analysis.attention.prefix_matching_score`); `prefix_matching` its largest head.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from induction_jax.config import ConfigError, config_field
from induction_jax.tasks import corpus as corpus_lib
from induction_jax.tasks.base import Metric, Task, register

OLSSON_CONTEXT, OLSSON_EARLY, OLSSON_LATE = 512, 50, 500


def context_indices(T: int) -> tuple[int, int]:
    """(early, late) positions of the in-context score for windows of T tokens: Olsson's 50 and
    500 of 512 scaled to T (rounded, kept within the targets 1..T-1)."""
    early = min(max(1, round(OLSSON_EARLY * T / OLSSON_CONTEXT)), T - 2)
    late = max(early + 1, min(T - 1, round(OLSSON_LATE * T / OLSSON_CONTEXT)))
    return early, late


def windows(stream, key, batch_size: int, length: int):
    """`[B, length]` int32: windows of `stream` at offsets uniform over every full window."""
    import jax
    import jax.numpy as jnp

    start_B = jax.random.randint(key, (batch_size,), 0, stream.shape[0] - length + 1)
    return stream[start_B[:, None] + jnp.arange(length)[None, :]].astype(jnp.int32)


def in_context_score(token_loss_T, T: int):
    """Loss at the late position minus at the early one (`token_loss_T[t-1]`: position t)."""
    early, late = context_indices(T)
    return token_loss_T[late - 1] - token_loss_T[early - 1]


def encoded(task: "Text", d_vocab: int) -> corpus_lib.Encoded:
    """The task's corpus as tokens, after checking it is the one the run recorded (if any)."""
    task.verify_inputs()
    return _encoded(task, d_vocab)


@functools.lru_cache(maxsize=8)
def _encoded(task: "Text", d_vocab: int) -> corpus_lib.Encoded:
    return corpus_lib.encode(task.corpus, task.corpus_max_bytes, task.tokenizer, d_vocab)


@register
@dataclass(frozen=True)
class Text(Task):
    """Windows of a tokenised text corpus; Olsson et al.'s per-token loss and in-context score."""

    name = "text"
    corpus: str = config_field("", "a UTF-8 text file, a folder of them (sorted), or a nanoGPT .bin of uint16 "
                               "ids; '' = the Python standard library's *.py source (no download)")
    tokenizer: str = config_field("bpe", "bpe: byte-level BPE trained on the corpus, vocabulary = --d-vocab; "
                                  "bytes: one token per byte (256); ignored for a .bin (its ids)",
                                  choices=corpus_lib.TOKENIZERS)
    corpus_max_bytes: int = config_field(corpus_lib.DEFAULT_MAX_BYTES, "text corpora are cut after this many "
                                         "bytes (0 = whole)", lo=0, hi=2**40)
    text_length: int = config_field(128, "T, tokens per training window (at most --n-ctx)", lo=3, hi=100_000)
    heldout_fraction: float = config_field(0.05, "the last fraction of the token stream, held out for the probes",
                                           lo=0.001, hi=0.5)
    corpus_digest: str = config_field("", "recorded: the corpus' digest when the run started ('' = read it); "
                                      "a run whose corpus changed since is refused")

    step_metrics = (Metric("loss", "mean next-token training loss", -1, 0.5, "nats"),)
    probe_metric_info = (
        Metric("in_context_score", "held-out loss at the late index minus at the early one (Olsson's 500 and "
               "50 of 512, scaled to T); negative = better later", -1, 0.1, "nats"),
        Metric("heldout_loss", "mean held-out loss over every position", -1, 0.2, "nats"),
        Metric("loss_early", "held-out loss at the early index", -1, 0.2, "nats"),
        Metric("loss_late", "held-out loss at the late index", -1, 0.2, "nats"),
        Metric("prefix_matching", "largest head's prefix-matching score on repeated random tokens", 1, 0.2,
               "attention"))
    head_probe_metrics = ("prefix_matching_score",)
    curve_probe_metrics = ("token_loss",)
    timing_curves = ("in_context_score", "prefix_matching", "heldout_loss")
    primary_curve = "in_context_score"
    formation_order = ("prefix_matching", "in_context_score")
    knockout_metric = "in_context_score"
    step_curve = "loss"
    progress_metric = "loss"
    plot_metrics = ("loss",)

    @property
    def seq_len(self) -> int:
        return self.text_length

    @property
    def context_indices(self) -> tuple[int, int]:
        return context_indices(self.text_length)

    # config.json records the corpus' digest when the run starts: a resumed run (or any command
    # that draws tokens) is refused if the corpus changed since (Task.verify_inputs)
    input_files = (("corpus", "corpus_digest"),)

    def input_digest(self, field: str) -> str:
        return corpus_lib.read(getattr(self, field), self.corpus_max_bytes)[0].digest

    def check(self, model) -> None:
        """A new run's corpus is read, tokenised and sized here. A recorded run's (its digest in
        config.json) is not touched: only what uses the tokens reads it, and refuses a changed one
        (`encoded`), so `phase`, `analyze` and the report read a run whose corpus is elsewhere."""
        if self.text_length > model.n_ctx:
            raise ConfigError(f"--text-length {self.text_length}: windows must fit the context; allowed: <= "
                              f"--n-ctx {model.n_ctx}")
        if self.corpus_digest:
            return
        train, held = corpus_lib.split(encoded(self, model.d_vocab).tokens, self.heldout_fraction)
        if len(held) < self.text_length or len(train) < self.text_length:
            raise ConfigError(f"--corpus {self.corpus!r}: {len(train)} training and {len(held)} held-out tokens "
                              f"(--heldout-fraction {self.heldout_fraction:g}); allowed: at least --text-length "
                              f"{self.text_length} in each")

    # -- the shared token stream -------------------------------------------------------------------
    def shared_data(self, model) -> dict:
        train, held = corpus_lib.split(encoded(self, model.d_vocab).tokens, self.heldout_fraction)
        return {"text_train": train, "text_heldout": held}

    def record(self, model) -> dict:
        enc = encoded(self, model.d_vocab)
        early, late = self.context_indices
        return corpus_lib.describe(enc, self.corpus, self.heldout_fraction) | {"in_context_indices": [early, late]}

    def run_files(self, model) -> dict:
        return {"tokenizer.json": corpus_lib.tokenizer_file(encoded(self, model.d_vocab))}

    # -- the data and the measurements -------------------------------------------------------------
    def sample(self, key, params, batch_size: int, d_vocab: int):
        return {"tokens": windows(params["text_train"], key, batch_size, self.text_length)}

    def losses(self, logits_BTV, batch) -> dict:
        from induction_jax.losses import token_losses

        return {"loss": token_losses(logits_BTV, batch["tokens"]).mean()}

    def probe_sequences(self, batch_size: int) -> int:
        return 2 * batch_size           # held-out windows, then as many repeated random sequences

    def probe(self, key, params, batch_size: int, d_vocab: int):
        """`probe_batch_size` held-out windows, then as many repeated random sequences (x[t] =
        x[t mod P], P = T // 2, tokens uniform over the task's vocabulary)."""
        import jax
        import jax.numpy as jnp

        from induction_jax.tasks.repeated import random_halves

        k_text, k_rand = jax.random.split(key)
        T, P = self.text_length, self.text_length // 2
        vocab = min(d_vocab, encoded(self, d_vocab).vocab)
        text = windows(params["text_heldout"], k_text, batch_size, T)
        rand = random_halves(k_rand, batch_size, P, vocab, True)[:, jnp.arange(T) % P]
        return {"tokens": jnp.concatenate([text, rand], 0)}

    def probe_metrics(self, logits_BTV, acts, batch) -> dict:
        import jax.numpy as jnp

        from induction_jax.analysis.attention import prefix_matching_score
        from induction_jax.losses import token_losses

        n, T = logits_BTV.shape[0] // 2, self.text_length
        tokens = batch["tokens"]
        token_loss = token_losses(logits_BTV[:n], tokens[:n]).mean(0)            # [T-1]: positions 1..T-1
        early, late = self.context_indices
        pattern = acts.pattern_BLHTS[n:]
        pm_LH = jnp.stack([prefix_matching_score(pattern[:, layer], tokens[n:], T // 2)
                           for layer in range(pattern.shape[1])])
        return {"token_loss": token_loss, "heldout_loss": token_loss.mean(),
                "in_context_score": in_context_score(token_loss, T),
                "loss_early": token_loss[early - 1], "loss_late": token_loss[late - 1],
                "prefix_matching": pm_LH.max(), "prefix_matching_score": pm_LH}
