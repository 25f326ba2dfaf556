"""Repeated random sequences: P random tokens, then the same P again (T = 2P); the task of the
seed experiment and of Olsson et al.'s induction-head scores (docs/task.md).

Training sequences may vary the period per sequence (`min_half_length < half_length`):
sequence b repeats its own `P_b ~ U{min_period..P}` random tokens from position 0
(x[t] = x[t mod P_b]), so it holds 2P / P_b copies. With a fixed period the earlier copy is
always exactly P-1 positions back, and a single attention head can find it from the
positional embeddings alone (measured: a 1-layer model then reaches 0.06 nats on the
second half and 2-layer models form no previous-token head). Varying the period removes
that shortcut; only content-based induction finds the copy. `P_b = P` is the reference
sequence exactly. The shortest period may differ per member (`min_period`, a member
parameter); the probes always use the reference sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

from induction_jax.config import ConfigError, config_field
from induction_jax.tasks.base import Metric, MemberParam, Task, register

# Fields of the task as the data section of config.json held them before tasks were a
# parameter (version 0.2); config.py moves them into the task section when it reads one.
LEGACY_DATA_FIELDS = ("half_length", "min_half_length", "replace")


def random_halves(key, batch_size: int, half_length: int, d_vocab: int, replace: bool):
    """`[B, P]` random tokens; without `replace`, no token repeats inside a row."""
    import jax
    import jax.numpy as jnp

    if replace:
        return jax.random.randint(key, (batch_size, half_length), 0, d_vocab, dtype=jnp.int32)
    # argsort of uniforms is a random permutation per row: no token repeats inside a half.
    u_BV = jax.random.uniform(key, (batch_size, d_vocab))
    return jnp.argsort(u_BV, axis=-1)[:, :half_length].astype(jnp.int32)


def repeated_sequences(key, batch_size: int, half_length: int, d_vocab: int,
                       replace: bool = True, repeats: int = 2):
    """`[B, repeats*P]` int32: P random tokens, then the same P again (`repeats` times in all)."""
    import jax.numpy as jnp

    return jnp.tile(random_halves(key, batch_size, half_length, d_vocab, replace), (1, repeats))


def variable_period_sequences(key, batch_size: int, half_length: int, min_period, d_vocab: int,
                              replace: bool = True):
    """`([B, 2P] tokens, [B] periods)`: sequence b repeats its own P_b ~ U{min_period..P} random
    tokens from position 0 (x[t] = x[t mod P_b]); P_b = P is the reference sequence exactly.
    `min_period` may be a traced value (a member parameter)."""
    import jax
    import jax.numpy as jnp

    k_period, k_half = jax.random.split(key)
    T = 2 * half_length
    period_B = jax.random.randint(k_period, (batch_size,), min_period, half_length + 1)
    half_BP = random_halves(k_half, batch_size, half_length, d_vocab, replace)
    index_BT = jnp.arange(T)[None, :] % period_B[:, None]
    return jnp.take_along_axis(half_BP, index_BT, axis=1), period_B


def split_losses(losses_BT, period: int, period_B=None) -> dict:
    """Mean loss overall, on the unpredictable targets and on the repeated ones.

    `losses_BT[:, t-1]` is the loss of target t. For reference sequences (period P for all):
    first half = targets 1..P-1, second half = targets P+1..T-1; the target at P (the first
    repeated token) cannot be predicted and belongs to neither. For variable-period
    sequences (`period_B`, x[t] = x[t mod P_b]): first half = targets 1..P_b-1, second
    half = targets P_b+1..T-1 (every repeat), token-weighted over the batch.
    """
    import jax.numpy as jnp

    if period_B is None:
        P = period
        return {"loss": losses_BT.mean(), "loss_first_half": losses_BT[:, : P - 1].mean(),
                "loss_second_half": losses_BT[:, P:].mean()}
    T = losses_BT.shape[1] + 1
    target_T = jnp.arange(1, T)[None, :]
    repeat_B1 = period_B[:, None]
    first = target_T < repeat_B1
    second = target_T > repeat_B1
    return {"loss": losses_BT.mean(),
            "loss_first_half": (losses_BT * first).sum() / first.sum(),
            "loss_second_half": (losses_BT * second).sum() / second.sum()}


def in_context_score(logits_BTV, tokens_BT, period: int):
    """Loss on the unpredictable first half minus loss on the repeated second half (nats)."""
    from induction_jax.losses import token_losses

    losses = split_losses(token_losses(logits_BTV, tokens_BT), period)
    return losses["loss_first_half"] - losses["loss_second_half"]


def induction_floor(tokens_BT, period: int) -> float:
    """loss_second_half of an ideal one-token induction head on these reference sequences.

    It attends equally to every earlier position j+1 whose previous token x[j] equals the
    current token x[i], and copies x[j+1]. Tokens repeated inside a half make such matches
    ambiguous, so even a perfect induction head has this much loss (about 0.30 nats on the
    reference sequences, V = 64, P = 25, drawn with replacement); only positional
    information or longer prefixes can do better.
    """
    import numpy as np

    x = np.asarray(tokens_BT)
    T = x.shape[1]
    i = np.arange(period, T - 1)                        # queries predicting targets P+1..T-1
    j = np.arange(T - 1)
    match = (x[:, None, :-1] == x[:, i, None]) & (j[None, None, :] < i[None, :, None])
    right = match & (x[:, None, 1:] == x[:, i + 1, None])
    return float(np.mean(-np.log(right.sum(-1) / match.sum(-1))))


@register
@dataclass(frozen=True)
class Repeated(Task):
    """Repeated random sequences: P random tokens, then the same P again (length 2P)."""

    name = "repeated"
    half_length: int = config_field(25, "P, length of the random half; sequences are 2P long", lo=2, hi=50_000)
    min_half_length: int = config_field(0, "shortest period of a training sequence: each repeats its own "
                                        "P_b in [min_half_length, P] random tokens from position 0 "
                                        "(x[t] = x[t mod P_b]), which removes the positional shortcut; "
                                        "= half_length gives the fixed-P reference task (probes always use "
                                        "it); 0 = ceil(2P/5); per member: --task-param min_period=...",
                                        lo=0, hi=50_000)
    replace: bool = config_field(True, "draw the half with replacement (reference); off = no token repeats "
                                 "inside a half (needs P <= V)")

    step_metrics = (Metric("loss", "mean next-token training loss", -1, 1.0, "nats"),
                    Metric("loss_first_half", "training loss on the unpredictable targets", -1, 1.0, "nats"),
                    Metric("loss_second_half", "training loss on the repeated targets", -1, 1.0, "nats"))
    probe_metric_info = (
        Metric("in_context_score", "loss on the first half minus loss on the second half of the probe "
               "batch (nats)", 1, 1.0, "nats"),
        Metric("probe_loss_second_half", "second-half loss on the probe batch", -1, 1.0, "nats"),
        Metric("prev_token_score", "best layer-0 previous-token attention score", 1, 0.2, "attention"),
        Metric("induction_score", "best last-layer induction attention score", 1, 0.2, "attention"))
    timing_curves = ("in_context_score", "induction_score", "prev_token_score")
    primary_curve = "in_context_score"
    formation_order = ("prev_token_score", "induction_score")
    step_curve = "loss_second_half"
    progress_metric = "loss_second_half"
    plot_metrics = ("loss_first_half", "loss_second_half")

    def __post_init__(self):
        super().__post_init__()
        if self.min_half_length == 1 or self.min_half_length > self.half_length:
            raise ConfigError(f"min_half_length={self.min_half_length}: must be 0 (auto) or in "
                              f"[2, half_length={self.half_length}]")

    @property
    def seq_len(self) -> int:
        return 2 * self.half_length

    @property
    def min_period(self) -> int:
        """The shortest training period P_b (the resolved `min_half_length`)."""
        return self.min_half_length or max(2, -(-2 * self.half_length // 5))

    def check(self, model) -> None:
        if self.seq_len > model.n_ctx:
            raise ConfigError(f"half_length={self.half_length}: sequences of 2*half_length={self.seq_len} "
                              f"tokens must fit the context n_ctx={model.n_ctx}")
        if not self.replace and self.half_length > model.d_vocab:
            raise ConfigError(f"half_length={self.half_length}: sampling without replacement: must be "
                              f"<= d_vocab={model.d_vocab}")

    def member_params(self) -> tuple[MemberParam, ...]:
        return (MemberParam("min_period", "shortest period P_b of this member's training sequences "
                            "(= half_length: the fixed-period reference task)", int, self.min_period, 2,
                            self.half_length),)

    def induction_period(self, model) -> int:
        return self.half_length

    def sample(self, key, params, batch_size: int, d_vocab: int):
        """`{tokens [B, 2P], period [B]}`. A member whose shortest period is P trains on the
        reference sequences (drawn as `probe` draws them); the branch is on its value."""
        import jax
        import jax.numpy as jnp

        P = self.half_length
        min_period = params.get("min_period", self.min_period)

        def fixed(key):
            return repeated_sequences(key, batch_size, P, d_vocab, self.replace), jnp.full((batch_size,), P, jnp.int32)

        def variable(key):
            return variable_period_sequences(key, batch_size, P, min_period, d_vocab, self.replace)

        if isinstance(min_period, int):
            tokens, period = (fixed if min_period == P else variable)(key)
        else:
            tokens, period = jax.lax.cond(min_period == P, fixed, variable, key)
        return {"tokens": tokens, "period": period}

    def losses(self, logits_BTV, batch) -> dict:
        from induction_jax.losses import token_losses

        return split_losses(token_losses(logits_BTV, batch["tokens"]), self.half_length, batch.get("period"))

    def probe(self, key, params, batch_size: int, d_vocab: int):
        """The fixed-period reference sequences on which every score is defined."""
        return {"tokens": repeated_sequences(key, batch_size, self.half_length, d_vocab, self.replace)}

    def probe_metrics(self, logits_BTV, acts, batch) -> dict:
        """In-context score (early minus late loss, nats), second-half loss, best layer-0
        previous-token score and best last-layer induction score (attention-based)."""
        from induction_jax.analysis.attention import induction_score, previous_token_score

        losses = self.losses(logits_BTV, batch)
        pattern = acts.pattern_BLHTS       # each score on its diagonal per sequence, then the mean over
        return {                           # them: the same number as the mean pattern's, without its pass
            "in_context_score": losses["loss_first_half"] - losses["loss_second_half"],
            "probe_loss_second_half": losses["loss_second_half"],
            "prev_token_score": previous_token_score(pattern[:, 0]).mean(0).max(),
            "induction_score": induction_score(pattern[:, -1], self.half_length).mean(0).max(),
        }

    def ideal_patterns(self, T: int) -> dict:
        """The previous-token pattern (A[i, i-1] = 1) and the induction pattern (second-half query
        i attends to i-P+1, the token after its earlier copy; first-half queries to themselves)."""
        import numpy as np

        P = self.half_length
        prev = np.eye(T, k=-1)
        prev[0, 0] = 1.0
        induction = np.eye(T)
        for i in range(P, T):
            induction[i] = 0.0
            induction[i, i - P + 1] = 1.0
        return {"prev_token": prev, "induction": induction}

    def baselines(self, batch) -> dict:
        """loss_second_half of an ideal one-token induction head on these sequences."""
        return {"induction_floor_loss_second_half": induction_floor(batch["tokens"], self.half_length)}
