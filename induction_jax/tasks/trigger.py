"""Trigger bigrams (Bietti, Cabannes, Bouchacourt, Jegou & Bottou 2023, "Birth of a Transformer:
A Memory Viewpoint"; their data process: albietz/transformer-birth, `ihead_data.py`).
docs/tasks/trigger.md defines every quantity.

Tokens follow a global bigram model pi(b | a). Each sequence has k trigger tokens q_1..q_k
(the k most frequent tokens, or drawn per sequence from the unigram without replacement) and
its own output tokens o_i, uniform over the vocabulary; every occurrence of q_i is followed by
o_i, every other token by a draw from pi. The first token comes from the unigram. After its
first occurrence, o_i can be read from the context (an induction head); the other tokens need
the global bigram, stored in the weights.

pi is synthetic by default: a Zipf unigram u_v ~ (v+1)^-a, and pi(b | a) ~ G_ab w_b with
G_ab ~ Gamma(c) i.i.d. (seeded) and w rescaled until u is exactly pi's stationary
distribution. `trigger_corpus` names a text file instead: characters are tokens, pi and the
unigram are its bigram and character frequencies (the paper uses Shakespeare characters).

Probes: loss and accuracy on outputs at the second and later occurrences of their trigger
(in-context recall) and on the other targets (global bigrams); the paper's attention probes
(previous-token at outputs, induction at repeated triggers); and its memory-recall probes,
read off the weights at each probe step: W_O^2 (with W_V^2, W_E, W_U), W_K^2 (keys W_E W_V^1
W_O^1 W_K^2 against queries W_E W_Q^2) and W_K^1 (positions).
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from induction_jax.config import ConfigError, config_field
from induction_jax.tasks.base import Metric, MemberParam, Task, register
from induction_jax.tasks.sampling import cdf_table, invert_cdf

SCALING_STEPS = 500            # rescalings of w until pi's stationary distribution is the Zipf unigram
SCALING_TOL = 1e-12


class Bigram(NamedTuple):
    """The global bigram model over `d_vocab` tokens, of which the first `n_tokens` occur."""

    pi: np.ndarray             # [V, V] pi(b | a), rows sum to 1
    unigram: np.ndarray        # [V] the first token's distribution (zero beyond n_tokens)
    rank: np.ndarray           # [V] rank of each token by unigram frequency (0 = most frequent)
    n_tokens: int
    chars: str                 # the corpus' characters, token order ("" for the synthetic model)


# ---- the global bigram model ----------------------------------------------------------------------
def stationary(pi: np.ndarray) -> np.ndarray:
    """The stationary distribution s = s pi of a row-stochastic matrix (least squares with sum 1)."""
    V = pi.shape[0]
    A = np.vstack([pi.T - np.eye(V), np.ones((1, V))])
    s = np.linalg.lstsq(A, np.r_[np.zeros(V), 1.0], rcond=None)[0]
    s = np.maximum(s, 0.0)
    return s / s.sum()


def zipf_bigram(V: int, zipf: float, concentration: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`(pi [V, V], u [V])`: u_v = (v+1)^-zipf / Z, pi(b | a) = G_ab w_b / sum_b' G_ab' w_b' with
    G_ab ~ Gamma(concentration) i.i.d. (numpy's default_rng(seed)), and w rescaled
    (w <- w u / s, s the stationary distribution) until s = u to 1e-12."""
    u = (np.arange(V) + 1.0) ** -zipf
    u /= u.sum()
    G = np.maximum(np.random.default_rng(seed).gamma(concentration, size=(V, V)), 1e-30)
    w = u.copy()
    for _ in range(SCALING_STEPS):
        pi = G * w[None]
        pi /= pi.sum(1, keepdims=True)
        s = stationary(pi)
        if np.abs(s - u).max() < SCALING_TOL:
            break
        w *= u / np.maximum(s, 1e-300)
    return pi, u


def read_corpus(path: str) -> str:
    """The text of `path`, or a one-line ConfigError naming the flag. Read again only when the
    file's size, modification time or inode changed (the task checks it wherever it is used)."""
    try:
        st = os.stat(path)
        text = _read_text(path, (st.st_size, st.st_mtime_ns, st.st_ino))
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise ConfigError(f"--trigger-corpus {path!r}: cannot read it ({reason}); give a readable UTF-8 "
                          f"text file, or '' for the synthetic bigram model") from None
    if len(text) < 2:
        raise ConfigError(f"--trigger-corpus {path!r}: needs at least 2 characters to estimate bigrams; "
                          f"has {len(text)}")
    return text


@functools.lru_cache(maxsize=8)
def _read_text(path: str, signature: tuple) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def corpus_bigram(text: str) -> tuple[np.ndarray, np.ndarray, str]:
    """`(pi [n, n], unigram [n], chars)`: characters sorted are the tokens; pi(b | a) = count(ab) /
    count(a.) over every consecutive pair, unigram = character frequencies (the paper's
    estimates). A character never followed by another (only last) gets the unigram as its row."""
    chars = "".join(sorted(set(text)))
    index = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((index[c] for c in text), np.int64, len(text))
    n = len(chars)
    counts = np.zeros((n, n))
    np.add.at(counts, (ids[:-1], ids[1:]), 1.0)
    unigram = np.bincount(ids, minlength=n) / len(ids)
    total = counts.sum(1, keepdims=True)
    pi = np.where(total > 0, counts / np.maximum(total, 1.0), unigram[None])
    return pi, unigram, chars


def bigram_model(task: "Trigger", d_vocab: int) -> Bigram:
    """The task's global bigram model for a vocabulary of `d_vocab`, after checking that a
    `--trigger-corpus` is the one the run recorded (if any)."""
    task.verify_inputs()
    return _bigram_model(task, d_vocab)


@functools.lru_cache(maxsize=32)
def _bigram_model(task: "Trigger", d_vocab: int) -> Bigram:
    """The model itself (cached: a constant of the program)."""
    if task.trigger_corpus:
        pi_n, uni_n, chars = corpus_bigram(read_corpus(task.trigger_corpus))
        n = len(chars)
        if n > d_vocab:
            raise ConfigError(f"--trigger-corpus {task.trigger_corpus!r}: {n} distinct characters need "
                              f"d_vocab >= {n}; got {d_vocab}")
        pi = np.tile(np.r_[uni_n, np.zeros(d_vocab - n)], (d_vocab, 1))   # rows of unused tokens: never read
        pi[:n, :n] = pi_n
        unigram = np.r_[uni_n, np.zeros(d_vocab - n)]
    else:
        pi, unigram = zipf_bigram(d_vocab, task.trigger_zipf, task.trigger_concentration, task.trigger_bigram_seed)
        n, chars = d_vocab, ""
    order = np.argsort(-unigram, kind="stable")        # ties: the smaller token first
    rank = np.empty(d_vocab, np.int64)
    rank[order] = np.arange(d_vocab)
    return Bigram(pi, unigram, rank, n, chars)


# ---- the sequences --------------------------------------------------------------------------------------
def trigger_sequences(key, bigram: Bigram, batch_size: int, length: int, k, fixed, k_max: int):
    """A batch drawn on the device: `tokens [B, T]`, `trigger_count [B, T-1]` (for the target
    t+1: how many times its source x_t has occurred as an active trigger up to t, 0 if x_t is no
    trigger), `triggers`, `outputs [B, k_max]` (only the first `k` active), `k`, `fixed [B]`.
    `k` and `fixed` (0/1) may be traced."""
    import jax
    import jax.numpy as jnp

    V = bigram.pi.shape[0]
    B, rows = batch_size, jnp.arange(batch_size)
    log_pi = jnp.log(jnp.asarray(bigram.pi, jnp.float32))
    log_u = jnp.log(jnp.asarray(bigram.unigram, jnp.float32))
    k_trig, k_out, k_first, k_steps = jax.random.split(key, 4)
    # random triggers: k_max tokens without replacement, each draw proportional to the unigram
    # (Gumbel top-k); fixed triggers: the k_max most frequent tokens
    drawn_BK = jnp.argsort(-(log_u + jax.random.gumbel(k_trig, (B, V))), axis=-1)[:, :k_max]
    top_K = jnp.asarray(np.argsort(bigram.rank)[:k_max], jnp.int32)
    fixed = jnp.asarray(fixed) > 0
    k = jnp.asarray(k)
    q_BK = jnp.where(fixed, top_K[None, :], drawn_BK).astype(jnp.int32)
    o_BK = jax.random.randint(k_out, (B, k_max), 0, bigram.n_tokens, dtype=jnp.int32)
    active_BK = jnp.broadcast_to(jnp.arange(k_max)[None, :] < k, (B, k_max))
    forced_BV = jnp.full((B, V), -1, jnp.int32).at[rows[:, None], q_BK].set(jnp.where(active_BK, o_BK, -1))
    x0 = jax.random.categorical(k_first, log_u, shape=(B,)).astype(jnp.int32)

    cdf_VV, last_V = cdf_table(log_pi)          # each token's next-token CDF, inverted at one uniform

    def step(carry, u_B):
        x, counts_BV = carry
        forced = forced_BV[rows, x]
        is_trigger = forced >= 0
        counts_BV = counts_BV.at[rows, x].add(is_trigger.astype(jnp.int32))
        count = jnp.where(is_trigger, counts_BV[rows, x], 0)
        nxt = jnp.where(is_trigger, forced, invert_cdf(cdf_VV[x], last_V[x], u_B))
        return (nxt, counts_BV), (nxt, count)

    _, (rest_TB, count_TB) = jax.lax.scan(step, (x0, jnp.zeros((B, V), jnp.int32)),
                                          jax.random.uniform(k_steps, (length - 1, B)))
    tokens = jnp.concatenate([x0[:, None], rest_TB.T], 1)
    bigram_logp = log_pi[tokens[:, :-1], tokens[:, 1:]]        # log pi(x_{t+1} | x_t), for the floors
    return {"tokens": tokens, "trigger_count": count_TB.T,
            "triggers": q_BK, "outputs": o_BK, "active": active_BK,
            "k": jnp.broadcast_to(k, (B,)).astype(jnp.int32), "fixed": jnp.broadcast_to(fixed, (B,)).astype(jnp.int32),
            "n_tokens": jnp.full((B,), bigram.n_tokens, jnp.int32), "bigram_logp": bigram_logp}


def masked_mean(x, mask):
    import jax.numpy as jnp

    return (x * mask).sum() / jnp.maximum(mask.sum(), 1)


def split_losses(losses_BT, count_BT) -> dict:
    """Mean loss on the in-context targets (outputs at the 2nd+ occurrence of their trigger) and on
    the global-bigram targets (after a non-trigger)."""
    return {"icl": masked_mean(losses_BT, count_BT >= 2), "bigram": masked_mean(losses_BT, count_BT == 0),
            "first_output": masked_mean(losses_BT, count_BT == 1)}


# ---- the memory-recall probes (the paper's, on our circuit-layout weights) ----------------------------
def wo2_recall(W):
    """W_O^2's memory: the fraction of tokens z whose largest logit in W_E[z] W_V W_O W_U is z (the
    last layer's value-output path, rows over the task's tokens `W_E`); best last-layer head."""
    import jax.numpy as jnp

    n = W["W_E"].shape[0]
    logits_HNV = jnp.einsum("nd,hdk,hke,ev->hnv", W["W_E"], W["W_V"][-1], W["W_O"][-1], W["W_U"][:, :n])
    return (logits_HNV.argmax(-1) == jnp.arange(n)).mean(-1).max()


def wk1_recall(W, length: int):
    """W_K^1's memory: the fraction of positions t = 1..T-1 whose query W_pos[t] W_Q scores highest,
    among the keys W_pos[s] W_K of the positions it can see (s <= t), at s = t-1; best first-layer
    head. (The paper's probe leaves the keys unmasked: its W_Q is the identity and its positional
    embeddings random and frozen, so a future key scores as a random one; ours are learned.)"""
    import jax.numpy as jnp

    P = W["W_pos"][:length]
    queries_HTK = jnp.einsum("td,hdk->htk", P[1:], W["W_Q"][0])
    keys_HSK = jnp.einsum("sd,hdk->hsk", P[:-1], W["W_K"][0])
    scores_HTS = jnp.einsum("htk,hsk->hts", queries_HTK, keys_HSK)
    visible_TS = jnp.arange(length - 1)[None, :] <= jnp.arange(1, length)[:, None]
    scores_HTS = jnp.where(visible_TS, scores_HTS, -jnp.inf)
    return (scores_HTS.argmax(-1) == jnp.arange(length - 1)).mean(-1).max()


def wk2_recall(W, token_mask_N):
    """W_K^2's memory: over the tokens z with `token_mask_N` (the member's fixed triggers, or every
    token), the fraction whose query W_E[z] W_Q^2 scores highest, among the keys W_E[z'] W_V^1 W_O^1
    W_K^2 of those tokens, at z' = z; best (first-layer head, last-layer head) pair."""
    import jax.numpy as jnp

    E = W["W_E"]
    n = E.shape[0]
    remapped_GND = jnp.einsum("nd,gdk,gke->gne", E, W["W_V"][0], W["W_O"][0])         # g: first-layer head
    keys_GHNK = jnp.einsum("gne,hek->ghnk", remapped_GND, W["W_K"][-1])
    queries_HNK = jnp.einsum("nd,hdk->hnk", E, W["W_Q"][-1])
    scores = jnp.einsum("hnk,ghmk->ghnm", queries_HNK, keys_GHNK)
    scores = jnp.where(token_mask_N[None, None, None, :], scores, -jnp.inf)
    hit_GHN = scores.argmax(-1) == jnp.arange(n)
    return masked_mean_last(hit_GHN, token_mask_N).max()


def masked_mean_last(x, mask_N):
    import jax.numpy as jnp

    return (x * mask_N).sum(-1) / jnp.maximum(mask_N.sum(), 1)


# ---- the attention probes (the paper's, on the probe batch) -----------------------------------------
def prev_token_attention(pattern_BHTS, count_BT):
    """Layer-0 previous-token probe: over the output positions t+1 (x_t an active trigger), the
    fraction whose most-attended key is t; best head."""
    import jax.numpy as jnp

    T = pattern_BHTS.shape[-1]
    amax_BHT = pattern_BHTS[:, :, 1:, :].argmax(-1)                     # queries 1..T-1
    hit = amax_BHT == jnp.arange(T - 1)[None, None, :]
    mask = (count_BT >= 1)[:, None, :]
    return ((hit & mask).sum((0, 2)) / jnp.maximum(mask.sum(), 1)).max()


def induction_attention(pattern_BHTS, tokens_BT, count_BT):
    """Last-layer induction probe: over the queries i holding a trigger at its 2nd+ occurrence, the
    fraction whose most-attended key j >= 1 has x_{j-1} = x_i; best head."""
    import jax.numpy as jnp

    T = tokens_BT.shape[1]
    amax_BHT = pattern_BHTS[:, :, : T - 1, :].argmax(-1)                # queries 0..T-2 (with a target)
    prev_BHT = jnp.take_along_axis(tokens_BT[:, None, :], jnp.maximum(amax_BHT - 1, 0), axis=-1)
    hit = (amax_BHT >= 1) & (prev_BHT == tokens_BT[:, None, : T - 1])
    mask = (count_BT >= 2)[:, None, :]
    return ((hit & mask).sum((0, 2)) / jnp.maximum(mask.sum(), 1)).max()


@register
@dataclass(frozen=True)
class Trigger(Task):
    """Global bigrams with k trigger tokens whose next token is fixed per sequence (Bietti et al. 2023)."""

    name = "trigger"
    trigger_length: int = config_field(50, "T, tokens per sequence (the paper: 256)", lo=3, hi=50_000)
    trigger_count: int = config_field(3, "k, trigger tokens per sequence; per member: --task-param k=...",
                                      lo=1, hi=100_000)
    trigger_max: int = config_field(8, "largest k a member may use (the sampler's static size); at most the "
                                    "number of tokens", lo=1, hi=100_000)
    trigger_fixed: bool = config_field(True, "fixed triggers: the k most frequent tokens (the paper's main "
                                       "setting); off = drawn per sequence from the unigram without "
                                       "replacement; per member: --task-param fixed_triggers=0,1")
    trigger_zipf: float = config_field(1.0, "Zipf exponent a of the synthetic unigram u_v ~ (v+1)^-a",
                                       lo=0.0, hi=10.0)
    trigger_concentration: float = config_field(0.3, "Gamma shape c of the synthetic bigram weights "
                                                "(smaller: peakier rows pi(. | a))", lo=0.01, hi=100.0)
    trigger_bigram_seed: int = config_field(0, "seed of the synthetic bigram model (one model for every "
                                            "member)", lo=0, hi=2**31 - 1)
    trigger_corpus: str = config_field("", "a UTF-8 text file: its characters are the tokens, pi and the "
                                       "unigram its bigram and character frequencies ('' = synthetic)")
    trigger_corpus_digest: str = config_field("", "recorded: the trigger corpus' digest when the run started "
                                              "('' = read it; none for the synthetic model); a run whose "
                                              "corpus changed since is refused")
    trigger_loss_only: bool = config_field(False, "train only on outputs at the 2nd+ occurrence of their "
                                           "trigger (the paper's loss_head_only); default: every target")

    step_metrics = (Metric("loss", "mean next-token training loss (the one trained on)", -1, 1.0, "nats"),
                    Metric("train_icl_loss", "training loss on outputs at the 2nd+ occurrence of their "
                           "trigger", -1, 1.0, "nats"),
                    Metric("train_bigram_loss", "training loss on targets after a non-trigger", -1, 0.2, "nats"))
    probe_metric_info = (
        Metric("icl_loss", "probe loss on outputs at the 2nd+ occurrence of their trigger", -1, 1.0, "nats"),
        Metric("icl_accuracy", "probe top-1 accuracy on outputs at the 2nd+ occurrence of their trigger",
               1, 0.3, "fraction"),
        Metric("first_output_loss", "probe loss on outputs at the 1st occurrence of their trigger (floor: "
               "ln n)", -1, 1.0, "nats"),
        Metric("bigram_loss", "probe loss on targets after a non-trigger (floor: pi's own loss)", -1, 0.2, "nats"),
        Metric("bigram_accuracy", "probe top-1 accuracy on targets after a non-trigger", 1, 0.1, "fraction"),
        Metric("prev_token_attention", "best layer-0 head: fraction of output positions attending most to "
               "their trigger (the previous position)", 1, 0.2, "fraction"),
        Metric("induction_attention", "best last-layer head: fraction of repeated-trigger queries attending "
               "most to a key right after an earlier copy of the trigger", 1, 0.2, "fraction"),
        Metric("wo2_recall", "W_O^2 memory recall: fraction of tokens z with argmax W_E[z] W_V W_O W_U = z "
               "(best last-layer head)", 1, 0.2, "fraction"),
        Metric("wk2_recall", "W_K^2 memory recall: fraction of tokens (fixed: the triggers) whose query "
               "W_E W_Q^2 picks its own key W_E W_V^1 W_O^1 W_K^2 (best head pair)", 1, 0.2, "fraction"),
        Metric("wk1_recall", "W_K^1 memory recall: fraction of positions whose query W_pos W_Q^1 picks the "
               "key of the previous position (best first-layer head)", 1, 0.2, "fraction"))
    timing_curves = ("icl_accuracy", "icl_loss", "bigram_loss", "wo2_recall", "wk2_recall", "wk1_recall",
                     "prev_token_attention", "induction_attention")
    primary_curve = "icl_accuracy"
    formation_order = ("bigram_loss", "icl_accuracy")
    step_curve = "train_icl_loss"
    progress_metric = "train_icl_loss"
    plot_metrics = ("train_icl_loss", "train_bigram_loss")

    input_files = (("trigger_corpus", "trigger_corpus_digest"),)

    def input_digest(self, field: str) -> str:
        if not self.trigger_corpus:
            return ""
        return hashlib.blake2b(read_corpus(self.trigger_corpus).encode(), digest_size=16).hexdigest()

    def __post_init__(self):
        super().__post_init__()
        if self.trigger_count > self.trigger_max:
            raise ConfigError(f"trigger_count={self.trigger_count}: must be <= trigger_max={self.trigger_max}")
        if self.trigger_corpus and not self.trigger_corpus_digest:     # a new run: the file must be readable
            read_corpus(self.trigger_corpus)

    @property
    def seq_len(self) -> int:
        return self.trigger_length

    def check(self, model) -> None:
        """A new run's corpus is read and sized here; a recorded run's (its digest in config.json)
        is not touched: only what draws tokens reads it, and refuses a changed one
        (`bigram_model`), so `phase`'s timings, `analyze` and the report read a run whose
        corpus is elsewhere, as the text task's do."""
        super().check(model)
        if self.trigger_corpus_digest:
            return
        n = bigram_model(self, model.d_vocab).n_tokens
        if self.trigger_max > n:
            raise ConfigError(f"trigger_max={self.trigger_max}: k triggers must be distinct tokens; allowed: "
                              f"<= {n} (the task's vocabulary)")

    def member_params(self) -> tuple[MemberParam, ...]:
        return (MemberParam("k", "trigger tokens per sequence", int, self.trigger_count, 1, self.trigger_max),
                MemberParam("fixed_triggers", "1 = the k most frequent tokens; 0 = drawn per sequence", int,
                            int(self.trigger_fixed), 0, 1))

    def induction_period(self, model) -> int:
        return min(self.trigger_length, model.n_ctx) // 2

    def _draw(self, key, params, batch_size: int, d_vocab: int):
        return trigger_sequences(key, bigram_model(self, d_vocab), batch_size, self.trigger_length,
                                 params.get("k", self.trigger_count),
                                 params.get("fixed_triggers", int(self.trigger_fixed)), self.trigger_max)

    def sample(self, key, params, batch_size: int, d_vocab: int):
        return self._draw(key, params, batch_size, d_vocab)

    def probe(self, key, params, batch_size: int, d_vocab: int):
        """A batch of the member's own training distribution (its k and kind of triggers)."""
        return self._draw(key, params, batch_size, d_vocab)

    def losses(self, logits_BTV, batch) -> dict:
        from induction_jax.losses import token_losses

        losses_BT = token_losses(logits_BTV, batch["tokens"])
        split = split_losses(losses_BT, batch["trigger_count"])
        loss = split["icl"] if self.trigger_loss_only else losses_BT.mean()
        return {"loss": loss, "train_icl_loss": split["icl"], "train_bigram_loss": split["bigram"]}

    def probe_metrics(self, logits_BTV, acts, batch) -> dict:
        from induction_jax.losses import token_losses

        tokens, count = batch["tokens"], batch["trigger_count"]
        split = split_losses(token_losses(logits_BTV, tokens), count)
        right = logits_BTV[:, :-1].argmax(-1) == tokens[:, 1:]
        pattern = acts.pattern_BLHTS
        return {"icl_loss": split["icl"], "icl_accuracy": masked_mean(right, count >= 2),
                "first_output_loss": split["first_output"], "bigram_loss": split["bigram"],
                "bigram_accuracy": masked_mean(right, count == 0),
                "prev_token_attention": prev_token_attention(pattern[:, 0], count),
                "induction_attention": induction_attention(pattern[:, -1], tokens, count)}

    def weight_probe_metrics(self, weights, batch) -> dict:
        """The paper's three memory-recall probes, from one member's weights."""
        import jax.numpy as jnp

        V = weights["W_E"].shape[0]
        bigram = bigram_model(self, V)
        n = bigram.n_tokens
        W = dict(weights, W_E=weights["W_E"][:n])
        rank = jnp.asarray(bigram.rank[:n])
        fixed, k = batch["fixed"][0] > 0, batch["k"][0]
        mask_N = jnp.where(fixed, rank < k, True)
        out = {"wo2_recall": wo2_recall(W), "wk1_recall": wk1_recall(W, self.trigger_length)}
        out["wk2_recall"] = wk2_recall(W, mask_N) if weights["W_Q"].shape[0] > 1 else jnp.float32(jnp.nan)
        return out

    def ideal_patterns(self, T: int) -> dict:
        """The previous-token pattern (A[i, i-1] = 1; row 0 attends to itself)."""
        prev = np.eye(T, k=-1)
        prev[0, 0] = 1.0
        return {"prev_token": prev}

    def baselines(self, batch) -> dict:
        """Floors on this batch: the ideal copier's in-context loss (0: the output is determined
        after the trigger's first occurrence), pi's own loss on the bigram targets, and ln n on
        first occurrences (a uniform output)."""
        tokens, count = np.asarray(batch["tokens"]), np.asarray(batch["trigger_count"])
        n = int(np.asarray(batch["n_tokens"])[0])
        return {"icl_floor_loss": 0.0,
                "bigram_floor_loss": float(-np.asarray(batch["bigram_logp"])[count == 0].mean()),
                "first_output_floor_loss": float(np.log(n)) if (count == 1).any() else float("nan"),
                "n_icl_targets": int((count >= 2).sum())}
