"""Bursty few-shot classification (Chan et al. 2022; Reddy 2023, "The mechanistic basis of data
dependence and abrupt learning in an in-context classification task"). docs/tasks/bursty.md
defines every quantity.

A sequence is N item-label pairs and a query item, `x_1 l_1 ... x_N l_N x_q` (T = 2N + 1); the
model predicts the query's label at the last position (the loss is on that label only, over the
L label tokens). Items are tokens: class k owns E exemplar tokens, and an item of class k is its
exemplar 0, or with probability epsilon (the within-class variation) one of its other E - 1
exemplars, uniformly. Each class has a fixed label (drawn once per member, `member_data`).

With `bursty_items="gaussian"` (Reddy's form) a token is a fixed vector instead: the embedding
`W_E` is not trained but set per member to Gaussian features (`fixed_params`): label l a vector
~ N(0, I/D), and exemplar e of class k the vector (mu_k + epsilon eta_{k,e}) / sqrt(1 + epsilon^2),
mu_k, eta_{k,e} ~ N(0, I/D) (D = d_model); an item is one of its class's E exemplars, uniformly,
and novel classes have E exemplars too. A novel class is then a new point of the same space, so
the model can match it in context by the geometry the attention has learnt.

Per sequence (Reddy's sampler): with probability p_bursty (and B >= 1) the context holds B
copies of each of N/B classes drawn i.i.d. from the class distribution, in random order, and
the query's class is the class of a uniformly chosen context position; otherwise the N context
classes and the query's class are i.i.d. from it. The class distribution is Zipf over the
member's K classes: P(k) ~ (k + 1)^-zipf.

Probes: ICL on novel classes (tokens never seen in training, labels assigned in the context),
ICL on swapped labels (training classes whose labels are shifted by one random s != 0 per
sequence), IWL (a query whose class is absent from the context), and the attention of each
head from the query to the labels of its class's items (the induction head's pattern).
"""

from __future__ import annotations

from dataclasses import dataclass

from induction_jax.config import ConfigError, config_field
from induction_jax.tasks.base import Metric, MemberParam, Task, register
from induction_jax.tasks.sampling import draw_classes

NOVEL, SWAP, IWL = 0, 1, 2          # the three parts of the probe batch ("kind")
CONFIDENT = 30.0                    # logit of a reference predictor's answer (loss ~ L e^-30)


@dataclass(frozen=True)
class DivisorParam(MemberParam):
    """A member parameter that must also divide `n` (0 allowed: no bursty sequences)."""

    n: int = 1

    def check(self, values, flag: str) -> list:
        out = super().check(values, flag)
        for v in out:
            if v and self.n % v:
                raise ConfigError(f"{flag}: {self.name}={v!r} must divide the context pairs N={self.n} "
                                  f"(or be 0); allowed: 0 or a divisor of {self.n} below it")
        return out


# ---- drawing classes, items and sequences ---------------------------------------------------------
def class_logits(zipf, n_classes, max_classes: int):
    """`[max_classes]` log-probabilities (unnormalised) of the Zipf class distribution
    P(k) ~ (k + 1)^-zipf over classes k < n_classes; -inf beyond. Both may be traced."""
    import jax.numpy as jnp

    k = jnp.arange(max_classes)
    return jnp.where(k < n_classes, -zipf * jnp.log1p(k.astype(jnp.float32)), -jnp.inf)


def burst_layout(key, batch_size: int, n_pairs: int, copies):
    """`([B, N] group of each context position, [B] query position)`: a random order of N/copies
    groups of `copies` positions (group = rank // copies), and a uniformly chosen position whose
    group the query repeats. `copies` may be traced (>= 1)."""
    import jax
    import jax.numpy as jnp

    k_order, k_query = jax.random.split(key)
    rank_BN = jnp.argsort(jax.random.uniform(k_order, (batch_size, n_pairs)), axis=-1)
    group_BN = rank_BN // jnp.maximum(copies, 1)
    return group_BN, jax.random.randint(k_query, (batch_size,), 0, n_pairs)


def item_tokens(key, class_X, epsilon, n_labels: int, exemplars: int, uniform: bool = False):
    """Item token of each class in `class_X`: exemplar 0, or with probability `epsilon` one of
    exemplars 1..E-1 uniformly (`uniform`: any of the E, epsilon unused); token = L + class * E +
    exemplar."""
    import jax
    import jax.numpy as jnp

    k_vary, k_which = jax.random.split(key)
    shape = class_X.shape
    if uniform:
        exemplar = jax.random.randint(k_which, shape, 0, exemplars)
    elif exemplars == 1:
        exemplar = jnp.zeros(shape, jnp.int32)
    else:
        vary = jax.random.uniform(k_vary, shape) < epsilon
        exemplar = jnp.where(vary, jax.random.randint(k_which, shape, 1, exemplars), 0)
    return (n_labels + class_X * exemplars + exemplar).astype(jnp.int32)


def interleave(items_BN, labels_BN, query_B):
    """`[B, 2N + 1]`: x_1 l_1 ... x_N l_N x_q."""
    import jax.numpy as jnp

    pairs = jnp.stack([items_BN, labels_BN], axis=-1).reshape(items_BN.shape[0], -1)
    return jnp.concatenate([pairs, query_B[:, None]], axis=1).astype(jnp.int32)


def query_label_mask(class_BX):
    """`[B, 2N + 1]` True at the label positions 2i+1 whose item x_i is of the query's class
    (`class_BX [B, N + 1]`: the class of each item, the query's last; `Bursty.item_classes`): where
    an induction head reading the query attends."""
    import jax.numpy as jnp

    match = class_BX[:, :-1] == class_BX[:, -1:]
    mask = jnp.zeros((class_BX.shape[0], 2 * class_BX.shape[1] - 1), bool)
    return mask.at[:, 1::2].set(match)


def label_accuracy(logits_BTV, answer_B, n_labels: int):
    """Per-sequence 1.0 where the arg-max over the L label logits at the query is the answer."""
    import jax.numpy as jnp

    return (jnp.argmax(logits_BTV[:, -1, :n_labels], axis=-1) == answer_B).astype(jnp.float32)


# ---- reference predictors (known answers for the probes) ------------------------------------------
def in_context_predictor(key, tokens_BT, class_BX, n_labels: int, d_vocab: int):
    """Logits of the ideal in-context learner: one-hot at the label that follows the first context
    item of the query's class (`class_BX`, as in `query_label_mask`); a uniformly random label
    where no context item is."""
    import jax
    import jax.numpy as jnp

    labels = tokens_BT[:, 1::2]
    match = class_BX[:, :-1] == class_BX[:, -1:]
    copied = jnp.take_along_axis(labels, jnp.argmax(match, axis=1)[:, None], axis=1)[:, 0]
    guess = jax.random.randint(key, copied.shape, 0, n_labels)
    pred = jnp.where(match.any(1), copied, guess)
    return CONFIDENT * jax.nn.one_hot(pred, d_vocab)[:, None, :] * jnp.ones((1, tokens_BT.shape[1], 1))


def lookup_predictor(key, tokens_BT, class_label, n_labels: int, exemplars: int, d_vocab: int):
    """Logits of the in-weights lookup table: the query token's class's own label, ignoring the
    context; a uniformly random label for a token of no training class (a novel class)."""
    import jax
    import jax.numpy as jnp

    cls = (tokens_BT[:, -1] - n_labels) // exemplars
    known = (tokens_BT[:, -1] >= n_labels) & (cls < class_label.shape[0])
    guess = jax.random.randint(key, cls.shape, 0, n_labels)
    pred = jnp.where(known, class_label[jnp.clip(cls, 0, class_label.shape[0] - 1)], guess)
    return CONFIDENT * jax.nn.one_hot(pred, d_vocab)[:, None, :] * jnp.ones((1, tokens_BT.shape[1], 1))


@register
@dataclass(frozen=True)
class Bursty(Task):
    """Few-shot classification of exemplar tokens, bursty or not, with Zipf class frequencies."""

    name = "bursty"
    bursty_pairs: int = config_field(8, "N, item-label pairs before the query (sequences are 2N+1 tokens)",
                                     lo=2, hi=10_000)
    bursty_labels: int = config_field(8, "L, labels (tokens 0..L-1)", lo=2, hi=100_000)
    bursty_max_classes: int = config_field(24, "largest number of training classes K a member may use "
                                           "(their tokens are reserved)", lo=2, hi=1_000_000)
    bursty_exemplars: int = config_field(2, "E, exemplar tokens per class (the within-class variation "
                                         "epsilon picks among them)", lo=1, hi=1000)
    bursty_novel: int = config_field(8, "novel classes (one token each, E with gaussian items; never in "
                                     "training) the ICL probe draws from", lo=1, hi=1_000_000)
    bursty_probe_copies: int = config_field(2, "copies of each class in the ICL probes' contexts (the same "
                                            "for every member; must divide N)", lo=1, hi=10_000)
    bursty_copies: int = config_field(2, "B, copies of the query's class in a bursty context (0 = none "
                                      "bursty); per member: --task-param burstiness=...", lo=0, hi=10_000)
    bursty_fraction: float = config_field(1.0, "fraction of training sequences that are bursty; per member: "
                                          "--task-param p_bursty=...", lo=0.0, hi=1.0)
    bursty_epsilon: float = config_field(0.0, "within-class variation: probability that an item is one of "
                                         "its class's other exemplars (gaussian items: the noise scale epsilon, "
                                         "up to 10); per member: --task-param epsilon=...", lo=0.0, hi=10.0)
    bursty_zipf: float = config_field(0.0, "Zipf exponent of the class frequencies, P(k) ~ (k+1)^-a; per "
                                      "member: --task-param zipf=...", lo=0.0, hi=10.0)
    bursty_classes: int = config_field(24, "K, training classes; per member: --task-param n_classes=...",
                                       lo=2, hi=1_000_000)
    bursty_context_loss: bool = config_field(False, "train on every label of the sequence (each context label "
                                             "predicted from its item, and the query's), not only the query's")
    bursty_items: str = config_field("tokens", "what an item is: 'tokens' (exemplar tokens with learnt "
                                     "embeddings) or 'gaussian' (Reddy's form: W_E fixed per member to Gaussian "
                                     "class prototypes plus epsilon-scaled noise, not trained)",
                                     choices=("tokens", "gaussian"))

    step_metrics = (Metric("loss", "cross-entropy of the query's label over the L label logits (with "
                           "bursty_context_loss: mean over every label of the sequence)", -1, 0.5, "nats"),
                    Metric("train_accuracy", "accuracy on the query's label in the training batch", 1, 0.2, "accuracy"))
    probe_metric_info = (
        Metric("icl_accuracy", "accuracy on novel classes whose labels are given only in the context", 1, 0.2,
               "accuracy"),
        Metric("icl_swap_accuracy", "accuracy on training classes with in-context labels shifted from their "
               "own (scored against the in-context label)", 1, 0.2, "accuracy"),
        Metric("swap_iwl_fraction", "on the swapped-label probe, fraction predicting the class's own label",
               1, 0.2, "fraction"),
        Metric("iwl_accuracy", "accuracy when the query's class is absent from the context", 1, 0.2, "accuracy"),
        Metric("icl_loss", "cross-entropy of the label on the novel-class probe", -1, 0.5, "nats"),
        Metric("induction_score", "best last-layer attention from the query to the labels of its class's "
               "context items (novel-class probe)", 1, 0.2, "attention"),
        Metric("prev_token_score", "best layer-0 attention from each label to the item before it", 1, 0.2,
               "attention"))
    head_probe_metrics = ("query_label_attention",)
    timing_curves = ("icl_accuracy", "iwl_accuracy", "induction_score", "prev_token_score")
    primary_curve = "icl_accuracy"
    formation_order = ("prev_token_score", "induction_score")
    step_curve = "loss"
    progress_metric = "loss"
    plot_metrics = ("loss", "train_accuracy")

    def __post_init__(self):
        super().__post_init__()
        N = self.bursty_pairs
        if self.bursty_copies and (self.bursty_copies >= N or N % self.bursty_copies):
            raise ConfigError(f"bursty_copies={self.bursty_copies}: must be 0 or a divisor of bursty_pairs={N} "
                              f"below it")
        if self.bursty_probe_copies >= N or N % self.bursty_probe_copies:
            raise ConfigError(f"bursty_probe_copies={self.bursty_probe_copies}: must be a divisor of "
                              f"bursty_pairs={N} below it")
        groups = N // self.bursty_probe_copies
        if groups > min(self.bursty_labels, self.bursty_novel):
            raise ConfigError(f"bursty_probe_copies={self.bursty_probe_copies}: the ICL probe's N/copies={groups} "
                              f"classes need as many distinct labels and novel classes; allowed: "
                              f"N/copies <= min(bursty_labels={self.bursty_labels}, bursty_novel={self.bursty_novel})")
        if self.bursty_items == "tokens" and self.bursty_epsilon > 1:
            raise ConfigError(f"bursty_epsilon={self.bursty_epsilon}: with token items it is a probability; "
                              f"allowed: 0..1 (up to 10 with --bursty-items gaussian)")
        if self.bursty_classes > self.bursty_max_classes:
            raise ConfigError(f"bursty_classes={self.bursty_classes}: must be <= bursty_max_classes="
                              f"{self.bursty_max_classes}")

    @property
    def seq_len(self) -> int:
        return 2 * self.bursty_pairs + 1

    @property
    def loss_vocab(self) -> int:
        """The loss reads the L label logits only (`losses`), so training computes no others."""
        return self.bursty_labels

    @property
    def gaussian(self) -> bool:
        return self.bursty_items == "gaussian"

    @property
    def novel_exemplars(self) -> int:
        """Tokens per novel class: E with Gaussian items (noisy copies of a new prototype), else 1."""
        return self.bursty_exemplars if self.gaussian else 1

    @property
    def first_novel(self) -> int:
        return self.bursty_labels + self.bursty_max_classes * self.bursty_exemplars

    @property
    def vocab_needed(self) -> int:
        """Tokens used: L labels, K_max * E exemplars, the novel classes' tokens."""
        return self.first_novel + self.bursty_novel * self.novel_exemplars

    def item_classes(self, tokens_BT):
        """`[B, N + 1]` the class of each item (context items, then the query): k for a training
        class, K_max + j for novel class j."""
        items = tokens_BT[:, 0::2]
        trained = (items - self.bursty_labels) // self.bursty_exemplars
        novel = self.bursty_max_classes + (items - self.first_novel) // self.novel_exemplars
        return (items < self.first_novel) * trained + (items >= self.first_novel) * novel

    def check(self, model) -> None:
        if self.seq_len > model.n_ctx:
            raise ConfigError(f"bursty_pairs={self.bursty_pairs}: sequences of 2N+1={self.seq_len} tokens must "
                              f"fit the context n_ctx={model.n_ctx}")
        if self.vocab_needed > model.d_vocab:
            raise ConfigError(f"bursty_labels={self.bursty_labels}, bursty_max_classes={self.bursty_max_classes}, "
                              f"bursty_exemplars={self.bursty_exemplars}, bursty_novel={self.bursty_novel}: labels + "
                              f"classes x exemplars + novel{' x exemplars' if self.gaussian else ''} = "
                              f"{self.vocab_needed} tokens must fit d_vocab={model.d_vocab}")

    def member_params(self) -> tuple[MemberParam, ...]:
        N = self.bursty_pairs
        return (DivisorParam("burstiness", "B, copies of the query's class in a bursty context (0: none bursty)",
                             int, self.bursty_copies, 0, N - 1, n=N),
                MemberParam("p_bursty", "fraction of bursty training sequences", float, self.bursty_fraction, 0.0, 1.0),
                MemberParam("epsilon", "within-class noise scale (Gaussian items)" if self.gaussian else
                            "within-class variation (probability of a non-canonical exemplar)", float,
                            self.bursty_epsilon, 0.0, 10.0 if self.gaussian else 1.0),
                MemberParam("zipf", "Zipf exponent of the class frequencies", float, self.bursty_zipf, 0.0, 10.0),
                MemberParam("n_classes", "K, training classes", int, self.bursty_classes, 2, self.bursty_max_classes))

    def induction_period(self, model) -> int:
        return model.n_ctx // 2

    def _param(self, params, name):
        return params.get(name, self.default_member_params()[name])

    # -- the data ----------------------------------------------------------------------------------
    def member_data(self, key, params) -> dict:
        """`class_label [K_max]`: class k's label is sigma(k mod L), sigma a random permutation of the
        labels drawn once per member (Reddy: k mod L), so every label has K/L classes (+-1)."""
        import jax
        import jax.numpy as jnp

        sigma = jax.random.permutation(key, self.bursty_labels)
        return {"class_label": sigma[jnp.arange(self.bursty_max_classes) % self.bursty_labels].astype(jnp.int32)}

    @property
    def fixed_param_names(self) -> tuple[str, ...]:
        return ("W_E",) if self.gaussian else ()

    def fixed_params(self, key, params, model) -> dict:
        """Gaussian items: `W_E [d_vocab, D]` (D = d_model), rows: the L labels ~ N(0, I/D); exemplar e
        of class k (training classes, then the novel ones) (mu_k + eps eta_{k,e}) / sqrt(1 + eps^2),
        mu_k, eta_{k,e} ~ N(0, I/D), eps the member's epsilon; unused tokens ~ N(0, I/D)."""
        if not self.gaussian:
            return {}
        import jax
        import jax.numpy as jnp

        D, E = model.d_model, self.bursty_exemplars
        n_classes = self.bursty_max_classes + self.bursty_novel
        k_label, k_proto, k_noise, k_rest = jax.random.split(key, 4)
        scale = 1.0 / jnp.sqrt(D)
        eps = jnp.asarray(self._param(params, "epsilon"), jnp.float32)
        proto = scale * jax.random.normal(k_proto, (n_classes, 1, D))
        noise = scale * jax.random.normal(k_noise, (n_classes, E, D))
        items = ((proto + eps * noise) / jnp.sqrt(1 + eps ** 2)).reshape(n_classes * E, D)   # trained, then novel
        labels = scale * jax.random.normal(k_label, (self.bursty_labels, D))
        rest = scale * jax.random.normal(k_rest, (model.d_vocab - self.vocab_needed, D))
        return {"W_E": jnp.concatenate([labels, items, rest])}

    def _class_label(self, params):
        if "class_label" in params:
            return params["class_label"]
        import jax
        return self.member_data(jax.random.PRNGKey(0), params)["class_label"]

    def sample(self, key, params, batch_size: int, d_vocab: int):
        """`{tokens [B, 2N+1], answer [B], bursty [B], query_class [B], context_class [B, N]}`."""
        import jax
        import jax.numpy as jnp

        N, L, E = self.bursty_pairs, self.bursty_labels, self.bursty_exemplars
        B_copies, p_b = self._param(params, "burstiness"), self._param(params, "p_bursty")
        logits = class_logits(self._param(params, "zipf"), self._param(params, "n_classes"), self.bursty_max_classes)
        class_label = self._class_label(params)
        k_groups, k_layout, k_iid, k_query, k_which, k_items, k_qitem = jax.random.split(key, 7)

        group_class = draw_classes(k_groups, logits, (batch_size, N))
        group_BN, qpos_B = burst_layout(k_layout, batch_size, N, B_copies)
        bursty_ctx = jnp.take_along_axis(group_class, group_BN, axis=1)
        bursty_q = jnp.take_along_axis(bursty_ctx, qpos_B[:, None], axis=1)[:, 0]
        iid_ctx = draw_classes(k_iid, logits, (batch_size, N))
        iid_q = draw_classes(k_query, logits, (batch_size,))
        bursty_B = (jax.random.uniform(k_which, (batch_size,)) < p_b) & (B_copies >= 1)
        ctx = jnp.where(bursty_B[:, None], bursty_ctx, iid_ctx)
        q = jnp.where(bursty_B, bursty_q, iid_q)

        eps, u = self._param(params, "epsilon"), self.gaussian
        tokens = interleave(item_tokens(k_items, ctx, eps, L, E, u), class_label[ctx],
                            item_tokens(k_qitem, q, eps, L, E, u))
        return {"tokens": tokens, "answer": class_label[q], "bursty": bursty_B, "query_class": q,
                "context_class": ctx}

    def losses(self, logits_BTV, batch) -> dict:
        """Cross-entropy of the query's label over the L label logits, and its accuracy."""
        import jax
        import jax.numpy as jnp

        L = self.bursty_labels
        logp_BL = jax.nn.log_softmax(logits_BTV[:, -1, :L].astype(jnp.float32), axis=-1)
        nll_B = -jnp.take_along_axis(logp_BL, batch["answer"][:, None], axis=1)[:, 0]
        loss = nll_B.mean()
        if self.bursty_context_loss:            # item i (position 2i) predicts its label (position 2i+1)
            logp_BNL = jax.nn.log_softmax(logits_BTV[:, :-1:2, :L].astype(jnp.float32), axis=-1)
            nll_BN = -jnp.take_along_axis(logp_BNL, batch["tokens"][:, 1::2, None], axis=2)[..., 0]
            loss = (nll_BN.sum(1) + nll_B).mean() / (nll_BN.shape[1] + 1)
        return {"loss": loss, "train_accuracy": label_accuracy(logits_BTV, batch["answer"], L).mean(),
                "nll": nll_B}

    def probe(self, key, params, batch_size: int, d_vocab: int):
        """Three parts, `kind` 0/1/2, about a third of `batch_size` each: novel-class ICL, swapped-label
        ICL (both with N/C classes of C = bursty_probe_copies copies each, distinct in-context labels
        for the novel classes), and IWL (context classes drawn from the member's distribution
        without the query's class)."""
        import jax
        import jax.numpy as jnp

        N, L, E, C = self.bursty_pairs, self.bursty_labels, self.bursty_exemplars, self.bursty_probe_copies
        G = N // C
        n_swap = n_iwl = batch_size // 3
        n_novel = batch_size - n_swap - n_iwl
        logits = class_logits(self._param(params, "zipf"), self._param(params, "n_classes"), self.bursty_max_classes)
        class_label = self._class_label(params)
        eps = self._param(params, "epsilon")
        ks = jax.random.split(key, 10)

        # novel classes: G distinct novel tokens with G distinct labels, C copies each
        group_BN, qpos_B = burst_layout(ks[0], n_novel, N, C)
        novel_BG = jnp.argsort(jax.random.uniform(ks[1], (n_novel, self.bursty_novel)), axis=-1)[:, :G]
        label_BG = jnp.argsort(jax.random.uniform(ks[2], (n_novel, L)), axis=-1)[:, :G]
        novel_BN = jnp.take_along_axis(novel_BG, group_BN, axis=1)
        if self.gaussian:           # each item, and the query, one of its novel class's E noisy exemplars
            items = item_tokens(jax.random.fold_in(ks[1], 1), self.bursty_max_classes + novel_BN, eps, L, E, True)
            q_items = item_tokens(jax.random.fold_in(ks[1], 2), self.bursty_max_classes
                                  + jnp.take_along_axis(novel_BN, qpos_B[:, None], axis=1)[:, 0], eps, L, E, True)
        else:
            items = self.first_novel + novel_BN
            q_items = jnp.take_along_axis(items, qpos_B[:, None], axis=1)[:, 0]
        labels = jnp.take_along_axis(label_BG, group_BN, axis=1)
        novel = {"tokens": interleave(items, labels, q_items),
                 "answer": jnp.take_along_axis(labels, qpos_B[:, None], axis=1)[:, 0]}
        novel["true_label"] = novel["answer"]

        # swapped labels: training classes, every label shifted by one s in 1..L-1 per sequence
        group_BN, qpos_B = burst_layout(ks[3], n_swap, N, C)
        cls = jnp.take_along_axis(draw_classes(ks[4], logits, (n_swap, N)), group_BN, axis=1)
        q_cls = jnp.take_along_axis(cls, qpos_B[:, None], axis=1)[:, 0]
        shift = jax.random.randint(ks[5], (n_swap, 1), 1, L)
        u = self.gaussian
        swap = {"tokens": interleave(item_tokens(ks[6], cls, eps, L, E, u), (class_label[cls] + shift) % L,
                                     item_tokens(ks[7], q_cls, eps, L, E, u)),
                "answer": (class_label[q_cls] + shift[:, 0]) % L, "true_label": class_label[q_cls]}

        # IWL: the query's class from the member's distribution, no item of it in the context
        q_cls = draw_classes(ks[8], logits, (n_iwl,))
        k_ctx, k_items, k_q = jax.random.split(ks[9], 3)
        without_q = jnp.where(jnp.arange(self.bursty_max_classes)[None, :] == q_cls[:, None], -jnp.inf, logits)
        cls = draw_classes(k_ctx, without_q[:, None, :], (n_iwl, N))
        iwl = {"tokens": interleave(item_tokens(k_items, cls, eps, L, E, u), class_label[cls],
                                    item_tokens(k_q, q_cls, eps, L, E, u)),
               "answer": class_label[q_cls], "true_label": class_label[q_cls]}

        parts = (novel, swap, iwl)
        out = {k: jnp.concatenate([p[k] for p in parts]) for k in ("tokens", "answer", "true_label")}
        out["kind"] = jnp.concatenate([jnp.full((len(p["answer"]),), i, jnp.int32) for i, p in enumerate(parts)])
        return out

    def probe_metrics(self, logits_BTV, acts, batch) -> dict:
        """Accuracies of each probe part, the novel-class loss, the query -> own-class-label attention
        of every head (`[L, H]`, novel part) and the best layer-0 label -> previous-item attention."""
        import jax.numpy as jnp

        L = self.bursty_labels
        kind = batch["kind"]
        novel, swap, iwl = (kind == NOVEL), (kind == SWAP), (kind == IWL)

        def mean_over(mask, x):
            return (x * mask).sum() / jnp.maximum(mask.sum(), 1)

        correct = label_accuracy(logits_BTV, batch["answer"], L)
        own = label_accuracy(logits_BTV, batch["true_label"], L)
        nll = self.losses(logits_BTV, batch)["nll"]
        pattern = acts.pattern_BLHTS
        mask_BT = query_label_mask(self.item_classes(batch["tokens"]))
        to_label_BLH = (pattern[:, :, :, -1, :] * mask_BT[:, None, None, :]).sum(-1)
        head_LH = (to_label_BLH * novel[:, None, None]).sum(0) / jnp.maximum(novel.sum(), 1)
        T = batch["tokens"].shape[1]
        label_pos = jnp.arange(1, T - 1, 2)
        prev_H = pattern[:, 0][:, :, label_pos, label_pos - 1].mean(axis=(0, 2))
        return {"icl_accuracy": mean_over(novel, correct), "icl_swap_accuracy": mean_over(swap, correct),
                "swap_iwl_fraction": mean_over(swap, own), "iwl_accuracy": mean_over(iwl, correct),
                "icl_loss": mean_over(novel, nll), "induction_score": head_LH[-1].max(),
                "prev_token_score": prev_H.max(), "query_label_attention": head_LH}

    def ideal_patterns(self, T: int) -> dict:
        """The previous-token pattern (A[i, i-1] = 1, row 0 itself): what a layer-0 head that copies
        each item into its label's position does."""
        import numpy as np

        prev = np.eye(T, k=-1)
        prev[0, 0] = 1.0
        return {"prev_token": prev}

    def baselines(self, batch) -> dict:
        """Chance accuracy 1/L (a predictor that ignores item and context)."""
        return {"chance_accuracy": 1.0 / self.bursty_labels}
