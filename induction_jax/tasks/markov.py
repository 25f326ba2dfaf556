"""In-context Markov chains (Edelman et al. 2024, "The Evolution of Statistical Induction Heads";
finite task diversity from Park et al. 2025, "Competition Dynamics Shape Algorithmic Phases of
In-Context Learning"). docs/tasks/markov.md defines every quantity.

Each sequence has its own k-state chain of order m: a transition matrix `P [k^m, k]` whose row
`c` (the last m states, most recent least significant) is the next state's distribution. The
prior (per member): rows ~ Dirichlet(alpha 1_k), or that draw projected by Sinkhorn onto the
matrices whose uniform context distribution is stationary (for m = 1: doubly stochastic), so
in-context unigram statistics carry no information. The first m states come from the chain's
stationary distribution over contexts (Edelman et al.; `markov_stationary_start` off: uniform,
which makes the in-context n-gram predictor the exact posterior mean). With `n_chains` > 0 the
member draws `n_chains` matrices once (from its data seed) and every sequence picks one
uniformly (Park et al.'s finite diversity); 0 draws a fresh matrix per sequence.

Probes compare the model's next-state distribution with the in-context strategies: KL(strategy ||
model) per position, as Edelman et al. plot it, to the uniform, in-context unigram (posterior
mean of i.i.d. tokens), in-context bigram and n-gram (posterior means of the Dirichlet chain),
and, for finite diversity, the two retrieval predictors (posterior over the member's known set).
The probe batch ends with as many chains of fresh matrices from the member's prior (out of
distribution when n_chains > 0: Park et al.'s OOD probe), where a model that infers the chain
in context keeps its KL to the bigram predictor and one that retrieves a known chain does not.
"""

from __future__ import annotations

from dataclasses import dataclass

from induction_jax.config import ConfigError, config_field
from induction_jax.tasks.base import Metric, MemberParam, Task, register

SINKHORN_STEPS = 64        # row/column normalisations of the doubly stochastic projection
STATIONARY_STEPS = 256     # power-iteration steps of the lazy context chain
MIXTURE_EM_STEPS = 100     # EM steps fitting the mixture weights of the four strategies
DENSE_CONTEXTS = 64        # up to this many contexts the stationary distribution squares the dense chain
MAX_CONTEXTS = 4096        # k^m, the rows of one transition matrix
OOD_PROBE = 1              # fold_in of the probe key that draws the probe's fresh-matrix chains
STRATEGIES = ("unigram_inference", "bigram_inference", "unigram_retrieval", "bigram_retrieval")


# ---- the prior and the chain --------------------------------------------------------------------
def dirichlet_rows(key, alpha, shape, k: int):
    """`[*shape, k]` rows ~ Dirichlet(alpha 1_k); `alpha` may be traced. Drawn as normalised
    Gamma(alpha) variables, floored so that a row never holds an exact zero."""
    import jax
    import jax.numpy as jnp

    g = jax.random.gamma(key, jnp.full((*shape, k), alpha, jnp.float32))
    g = jnp.maximum(g, 1e-30)
    return g / g.sum(-1, keepdims=True)


def sinkhorn(P_CK, k: int, steps: int = SINKHORN_STEPS):
    """Project `[..., k^m, k]` onto the matrices whose uniform context distribution is stationary:
    alternately make every group {(a, s) -> j : a} sum to 1 (for m = 1: every column) and every
    row sum to 1. For m = 1 the result is doubly stochastic."""
    import jax
    import jax.numpy as jnp

    C = P_CK.shape[-2]
    shape = P_CK.shape

    def step(_, P):
        Q = P.reshape(*shape[:-2], k, C // k, k)
        Q = Q / Q.sum(-3, keepdims=True)
        P = Q.reshape(shape)
        return P / P.sum(-1, keepdims=True)

    return jax.lax.fori_loop(0, steps, step, P_CK)


def context_stationary(P_CK, k: int, steps: int = STATIONARY_STEPS):
    """`[..., k^m]` stationary distribution of the chain over contexts: power iteration of the
    lazy chain (pi <- (pi + pi K) / 2, same fixed point, never periodic) from uniform.
    Context c = (a, s) moves to (s, j) with probability P[c, j]."""
    import jax
    import jax.numpy as jnp

    C = P_CK.shape[-2]
    if C <= DENSE_CONTEXTS:      # square the dense lazy context chain: 2^steps.bit_length() steps in few products
        K = jnp.zeros(P_CK.shape[:-2] + (C, C // k, k), P_CK.dtype)
        K = K.at[..., jnp.arange(C), jnp.arange(C) % (C // k), :].set(P_CK)
        K = 0.5 * (jnp.eye(C) + K.reshape(P_CK.shape[:-2] + (C, C)))
        K = jax.lax.fori_loop(0, steps.bit_length() + 4, lambda _, K: K @ K, K)
        return K.mean(-2) / K.mean(-2).sum(-1, keepdims=True)

    def step(_, pi):
        flow = pi[..., :, None] * P_CK                                  # [..., (a, s), j]
        nxt = flow.reshape(*P_CK.shape[:-2], k, C // k, k).sum(-3)     # [..., s, j]
        return 0.5 * (pi + nxt.reshape(pi.shape))

    return jax.lax.fori_loop(0, steps, step, jnp.full(P_CK.shape[:-1], 1.0 / C, jnp.float32))


def token_marginal(pi_C, k: int):
    """`[..., k]` the one-state marginal of a context distribution (its most recent state)."""
    return pi_C.reshape(*pi_C.shape[:-1], -1, k).sum(-2)


def run_chains(key, P_BCK, pi_BC, length: int, k: int, order: int):
    """`[B, length]` int32 states: the first `order` states from `pi_BC` (a context), then
    x_t ~ P[c_{t-1}] with c the last `order` states."""
    import jax
    import jax.numpy as jnp

    B, C, _ = P_BCK.shape
    k_start, k_steps = jax.random.split(key)
    c0 = jax.random.categorical(k_start, jnp.log(pi_BC))
    digits = [(c0 // k ** (order - 1 - r)) % k for r in range(order)]
    logP = jnp.log(P_BCK)
    gumbel_TBK = jax.random.gumbel(k_steps, (length - order, B, k))

    def step(c, g_BK):
        x = jnp.argmax(jnp.take_along_axis(logP, c[:, None, None], axis=1)[:, 0] + g_BK, -1)
        return (c * k) % C + x, x

    _, rest = jax.lax.scan(step, c0, gumbel_TBK)
    return jnp.concatenate([jnp.stack(digits, 1), rest.T], 1).astype(jnp.int32)


def contexts(tokens_BT, k: int, order: int):
    """`[B, T]` index of the last `order` states at each position (valid from order-1 on)."""
    import jax.numpy as jnp

    c = jnp.zeros_like(tokens_BT)
    for r in range(order):
        c = c + jnp.roll(tokens_BT, r, axis=1) * k ** r
    return c


# ---- the in-context predictors --------------------------------------------------------------------
def unigram_predictor(tokens_BT, k: int, alpha):
    """`[B, T, k]` (n_j + alpha) / (t + 1 + k alpha) with n_j the count of j in x_0..x_t: the
    posterior mean of an i.i.d. distribution ~ Dirichlet(alpha 1_k) after t+1 tokens."""
    import jax
    import jax.numpy as jnp

    n_BTK = jnp.cumsum(jax.nn.one_hot(tokens_BT, k), axis=1)
    t = jnp.arange(1, tokens_BT.shape[1] + 1)[None, :, None]
    return (n_BTK + alpha) / (t + k * alpha)


def ngram_counts(tokens_BT, k: int, order: int):
    """`[B, T, k]` n(c_t, j): how often state j followed the context c_t (the last `order` states
    at t) among the transitions s = order..t, i.e. sum_s [c_{s-1} = c_t][x_s = j]."""
    import jax
    import jax.numpy as jnp

    T = tokens_BT.shape[1]
    c = contexts(tokens_BT, k, order)
    t_idx = jnp.arange(T)
    # match[b, t, s] = 1 for a transition s -> whose previous context equals the current one
    prev = jnp.concatenate([jnp.full_like(c[:, :1], -1), c[:, :-1]], 1)
    valid_s = (t_idx >= order)[None, None, :] & (t_idx[None, :] <= t_idx[:, None])[None]
    match = (prev[:, None, :] == c[:, :, None]) & valid_s
    return jnp.einsum("bts,bsk->btk", match.astype(jnp.float32), jax.nn.one_hot(tokens_BT, k))


def ngram_predictor(tokens_BT, k: int, order: int, alpha):
    """`[B, T, k]` (n(c_t, j) + alpha) / (n(c_t) + k alpha): the posterior mean of row c_t of a
    matrix with Dirichlet(alpha 1_k) rows (order 1: the in-context bigram predictor)."""
    n = ngram_counts(tokens_BT, k, order)
    return (n + alpha) / (n.sum(-1, keepdims=True) + k * alpha)


def retrieval_predictors(tokens_BT, P_NCK, n_active, k: int, order: int):
    """`([B, T, k] unigram retrieval, [B, T, k] bigram retrieval)`: posterior means over the
    known set {P_1..P_n} (uniform prior on its first `n_active`), from positions order-1 on.
    Bigram: likelihood pi_i(c_{m-1}) prod_{s=m..t} P_i[c_{s-1}, x_s], prediction sum_i w_i P_i[c_t].
    Unigram: likelihood prod_{s<=t} pi1_i(x_s) (the stationary one-state marginal), prediction
    sum_i w_i pi1_i."""
    import jax
    import jax.numpy as jnp

    N, C, _ = P_NCK.shape
    T = tokens_BT.shape[1]
    pi_NC = context_stationary(P_NCK, k)
    pi1_NK = token_marginal(pi_NC, k)
    active_N = jnp.arange(N) < n_active
    c_BT = contexts(tokens_BT, k, order)
    logP_NCK = jnp.log(jnp.maximum(P_NCK, 1e-30))
    # bigram (order-m) log-likelihoods: the start context, then each transition
    step_BNT = logP_NCK[:, jnp.roll(c_BT, 1, axis=1), tokens_BT].transpose(1, 0, 2)
    step_BNT = jnp.where((jnp.arange(T) >= order)[None, None], step_BNT, 0.0)
    start_BN = jnp.log(jnp.maximum(pi_NC, 1e-30))[:, c_BT[:, order - 1]].T
    loglik_b = start_BN[:, :, None] + jnp.cumsum(step_BNT, -1)
    loglik_u = jnp.cumsum(jnp.log(jnp.maximum(pi1_NK, 1e-30))[:, tokens_BT].transpose(1, 0, 2), -1)

    def posterior(loglik_BNT):
        return jax.nn.softmax(jnp.where(active_N[None, :, None], loglik_BNT, -jnp.inf), axis=1)

    w_u, w_b = posterior(loglik_u), posterior(loglik_b)
    uni = jnp.einsum("bnt,nk->btk", w_u, pi1_NK)
    rows_BTNK = P_NCK[:, c_BT].transpose(1, 2, 0, 3)                  # P_i[c_t] for each i
    bi = jnp.einsum("bnt,btnk->btk", w_b, rows_BTNK)
    return uni, bi


def kl_to_model(p_BTK, logq_BTV, mask_T):
    """Mean over the batch and the positions in `mask_T` of KL(p || q) = sum_j p_j (log p_j - log q_j),
    q the model's softmax over its whole vocabulary (mass beyond the k states counts against it)."""
    import jax.numpy as jnp

    k = p_BTK.shape[-1]
    kl_BT = (p_BTK * (jnp.log(jnp.maximum(p_BTK, 1e-30)) - logq_BTV[..., :k])).sum(-1)
    return (kl_BT * mask_T[None]).sum() / (mask_T.sum() * kl_BT.shape[0])


def mixture_weights(q_BTK, p_ABTK, w0_A, mask_T, steps: int = MIXTURE_EM_STEPS):
    """`[A]` weights on the simplex minimising the mean KL(q || sum_a w_a p_a) over the batch and
    masked positions (the model q as a mixture of the strategies p_a): EM from `w0_A` (a zero
    weight stays zero), which increases the objective at every step."""
    import jax
    import jax.numpy as jnp

    A, k = p_ABTK.shape[0], p_ABTK.shape[-1]
    # positions outside the mask and states of probability ~0 weigh nothing: flatten to [A, N]
    qm_N = (q_BTK * mask_T[None, :, None]).reshape(-1)
    p_AN = p_ABTK.reshape(A, -1)
    norm = mask_T.sum() * q_BTK.shape[0]

    def step(_, w):
        # w_a sum_n p_an q_n / (sum_a' w_a' p_a'n), as two matrix-vector products: XLA:CPU ran the
        # same sums as [A, N] reductions at a fraction of the speed (benchmarks/step_profile.py)
        mix_N = jnp.dot(w, p_AN, precision=jax.lax.Precision.HIGHEST)
        return w * jnp.dot(p_AN, qm_N / jnp.maximum(mix_N, 1e-30), precision=jax.lax.Precision.HIGHEST) / norm

    return jax.lax.fori_loop(0, steps, step, w0_A)


def statistical_induction_score(pattern_BLHTS, tokens_BT):
    """`[L, H]` attention mass from query t on the keys s <= t with x_{s-1} = x_t (the tokens that
    followed an earlier copy of x_t), averaged over the queries with at least one such key."""
    import jax.numpy as jnp

    T = tokens_BT.shape[1]
    s, t = jnp.arange(T)[None, :], jnp.arange(T)[:, None]
    prev = jnp.concatenate([jnp.full_like(tokens_BT[:, :1], -1), tokens_BT[:, :-1]], 1)
    D_BTS = (prev[:, None, :] == tokens_BT[:, :, None]) & (s >= 1) & (s <= t)
    has_B1T = D_BTS.any(-1)[:, None, None, :]
    mass_BLHT = (pattern_BLHTS * D_BTS[:, None, None]).sum(-1)
    return (mass_BLHT * has_B1T).sum((0, 3)) / jnp.maximum(has_B1T.sum((0, 3)), 1)


def prev_token_attention(pattern_BLHTS):
    """`[L, H]` mean over queries t >= 1 of the attention on t - 1."""
    import jax.numpy as jnp

    return jnp.diagonal(pattern_BLHTS, offset=-1, axis1=-2, axis2=-1).mean((0, 3))


# ---- the task ---------------------------------------------------------------------------------------
@register
@dataclass(frozen=True)
class Markov(Task):
    """In-context Markov chains: every sequence a chain with its own transition matrix."""

    name = "markov"
    n_states: int = config_field(3, "k, the chain's states (tokens 0..k-1; needs d_vocab >= k)", lo=2, hi=256)
    chain_length: int = config_field(50, "T, states per sequence (Edelman et al.: 100; the default fits the default n_ctx)", lo=3, hi=50_000)
    markov_order: int = config_field(1, "m, the chain's order: the next state depends on the last m "
                                     "(1 = bigram statistics)", lo=1, hi=8)
    markov_alpha: float = config_field(1.0, "Dirichlet concentration alpha of every row (per member: "
                                       "--task-param alpha=...)", lo=0.0, lo_open=True, hi=100.0)
    markov_doubly_stochastic: bool = config_field(False, "project each draw by Sinkhorn onto the matrices "
                                                  "with a uniform stationary distribution (unigrams "
                                                  "uninformative; per member: --task-param doubly_stochastic=0,1)")
    markov_chains: int = config_field(0, "task diversity: matrices drawn once per member from its data "
                                      "seed, one picked per sequence; 0 = a fresh matrix every sequence "
                                      "(per member: --task-param n_chains=...)", lo=0, hi=65_536)
    max_chains: int = config_field(64, "matrices stored per member (the largest n_chains allowed)",
                                   lo=1, hi=65_536)
    markov_stationary_start: bool = config_field(True, "first m states from the stationary distribution "
                                                 "(Edelman et al.); off = uniform, which makes the n-gram "
                                                 "predictor the exact posterior mean")

    step_metrics = (Metric("loss", "mean next-state training loss", -1, 0.1, "nats"),)
    probe_metric_info = (
        Metric("probe_loss", "next-state loss on the probe batch", -1, 0.05, "nats"),
        Metric("kl_uniform", "mean KL(uniform || model) over positions", 1, 0.02, "nats"),
        Metric("kl_unigram", "mean KL(in-context unigram || model)", -1, 0.02, "nats"),
        Metric("kl_bigram", "mean KL(in-context bigram || model)", -1, 0.05, "nats"),
        Metric("kl_ngram", "mean KL(in-context order-m n-gram || model) (= kl_bigram for m = 1)", -1, 0.05,
               "nats"),
        Metric("unigram_lead", "kl_uniform - kl_unigram: rises as the model leaves uniform for unigram "
               "statistics", 1, 0.02, "nats"),
        Metric("bigram_lead", "kl_unigram - kl_bigram: rises as the model moves to bigram statistics",
               1, 0.05, "nats"),
        Metric("kl_bigram_ood", "mean KL(in-context bigram || model) on chains of fresh matrices from "
               "the member's prior (unseen when n_chains > 0)", -1, 0.05, "nats"),
        Metric("probe_loss_ood", "next-state loss on those fresh chains", -1, 0.05, "nats"),
        Metric("kl_unigram_retrieval", "mean KL(unigram retrieval || model); NaN when n_chains = 0",
               -1, 0.02, "nats"),
        Metric("kl_bigram_retrieval", "mean KL(bigram retrieval || model); NaN when n_chains = 0",
               -1, 0.05, "nats"),
        *(Metric(f"w_{s}", f"fitted mixture weight of {s.replace('_', ' ')} in the model's predictions",
                 1, 0.2, "weight") for s in STRATEGIES),
        Metric("prev_token_score", "best layer-0 previous-token attention", 1, 0.2, "attention"),
        Metric("stat_induction_score", "best last-layer statistical induction attention (mass on keys s "
               "with x_{s-1} = x_t)", 1, 0.2, "attention"),
    )
    head_probe_metrics = ("statistical_induction_score", "prev_token_attention")
    timing_curves = ("unigram_lead", "bigram_lead", "stat_induction_score", "prev_token_score")
    primary_curve = "bigram_lead"
    formation_order = ("unigram_lead", "bigram_lead")
    step_curve = "loss"
    progress_metric = "loss"
    plot_metrics = ("loss",)

    def __post_init__(self):
        super().__post_init__()
        if self.markov_order >= self.chain_length:
            raise ConfigError(f"markov_order={self.markov_order}: must be < chain_length={self.chain_length} "
                              f"(the context must hold a transition)")
        if self.n_states ** self.markov_order > MAX_CONTEXTS:
            raise ConfigError(f"markov_order={self.markov_order}: n_states**markov_order = "
                              f"{self.n_states ** self.markov_order} contexts; allowed: <= {MAX_CONTEXTS}")
        if self.markov_chains > self.max_chains:
            raise ConfigError(f"markov_chains={self.markov_chains}: must be <= max_chains={self.max_chains}")

    @property
    def seq_len(self) -> int:
        return self.chain_length

    @property
    def n_contexts(self) -> int:
        return self.n_states ** self.markov_order

    def check(self, model) -> None:
        super().check(model)
        if self.n_states > model.d_vocab:
            raise ConfigError(f"n_states={self.n_states}: the states are tokens; must be <= d_vocab={model.d_vocab}")

    def member_params(self) -> tuple[MemberParam, ...]:
        return (MemberParam("alpha", "Dirichlet concentration of every row", float, self.markov_alpha, 1e-3, 100.0),
                MemberParam("doubly_stochastic", "1 = Sinkhorn-projected prior (uniform stationary "
                            "distribution), 0 = Dirichlet rows", int, int(self.markov_doubly_stochastic), 0, 1),
                MemberParam("n_chains", "task diversity: size of the member's fixed set of matrices; 0 = a "
                            "fresh matrix every sequence", int, self.markov_chains, 0, self.max_chains))

    def induction_period(self, model) -> int:
        return model.n_ctx // 2

    # -- the data --------------------------------------------------------------------------------------
    def _params(self, params):
        return (params.get("alpha", self.markov_alpha), params.get("doubly_stochastic", int(self.markov_doubly_stochastic)),
                params.get("n_chains", self.markov_chains))

    def draw_matrices(self, key, alpha, doubly_stochastic, n: int):
        """`[n, k^m, k]` matrices from the prior (Sinkhorn-projected where `doubly_stochastic`)."""
        import jax.numpy as jnp

        P = dirichlet_rows(key, alpha, (n, self.n_contexts), self.n_states)
        return jnp.where(jnp.asarray(doubly_stochastic) > 0, sinkhorn(P, self.n_states), P)

    def member_data(self, key, params) -> dict:
        """The member's known set: `max_chains` matrices, of which the first `n_chains` are used."""
        alpha, ds, _ = self._params(params)
        return {"known_P": self.draw_matrices(key, alpha, ds, self.max_chains)}

    def _sequences(self, key, params, batch_size: int):
        import jax
        import jax.numpy as jnp

        alpha, ds, n_chains = self._params(params)
        k_fresh, k_pick, k_run = jax.random.split(key, 3)
        fresh = self.draw_matrices(k_fresh, alpha, ds, batch_size)
        if "known_P" in params:
            pick = jax.random.randint(k_pick, (batch_size,), 0, jnp.maximum(n_chains, 1))
            P = jnp.where(jnp.asarray(n_chains) > 0, params["known_P"][pick], fresh)
        else:
            P = fresh
        if self.markov_stationary_start:
            pi = context_stationary(P, self.n_states)
        else:
            pi = jnp.full(P.shape[:2], 1.0 / self.n_contexts)
        return run_chains(k_run, P, pi, self.chain_length, self.n_states, self.markov_order)

    def sample(self, key, params, batch_size: int, d_vocab: int):
        """`{tokens [B, T]}`: each sequence a chain with its own matrix (fresh or from the known set)."""
        return {"tokens": self._sequences(key, params, batch_size)}

    def losses(self, logits_BTV, batch) -> dict:
        from induction_jax.losses import token_losses

        return {"loss": token_losses(logits_BTV, batch["tokens"]).mean()}

    def probe_sequences(self, batch_size: int) -> int:
        return 2 * batch_size           # its own chains, then as many of fresh matrices

    def probe(self, key, params, batch_size: int, d_vocab: int):
        """`batch_size` sequences of the member's own training distribution, then as many chains of
        fresh matrices from its prior (out of distribution when n_chains > 0; the first part is
        the same with or without them), with what the strategies need: its alpha, its known set
        and how many of it are used."""
        import jax
        import jax.numpy as jnp

        alpha, _, n_chains = self._params(params)
        known = params.get("known_P")
        if known is None:
            known = jnp.full((1, self.n_contexts, self.n_states), 1.0 / self.n_states)
        fresh = self._sequences(jax.random.fold_in(key, OOD_PROBE), dict(params, n_chains=0), batch_size)
        return {"tokens": jnp.concatenate([self._sequences(key, params, batch_size), fresh]),
                "alpha": jnp.asarray(alpha, jnp.float32), "n_chains": jnp.asarray(n_chains, jnp.int32),
                "known_P": known}

    @staticmethod
    def in_distribution(batch, *arrays):
        """The probe batch's first half (the member's own distribution): `batch` with its tokens cut
        there, then each of `arrays` (batch-major) cut the same way."""
        n = batch["tokens"].shape[0] // 2
        return (dict(batch, tokens=batch["tokens"][:n]), *(a[:n] for a in arrays))

    # -- what is measured --------------------------------------------------------------------------------
    def strategies(self, batch) -> dict:
        """`{name: [B, T, k]}` every strategy's next-state distribution on `batch` (probe layout)."""
        import jax.numpy as jnp

        x, k, m = batch["tokens"], self.n_states, self.markov_order
        alpha = batch.get("alpha", self.markov_alpha)
        uni_r, bi_r = retrieval_predictors(x, batch["known_P"], batch["n_chains"], k, m) if "known_P" in batch \
            else (None, None)
        out = {"uniform": jnp.full(x.shape + (k,), 1.0 / k), "unigram_inference": unigram_predictor(x, k, alpha),
               "bigram_inference": ngram_predictor(x, k, 1, alpha), "ngram_inference": ngram_predictor(x, k, m, alpha)}
        if uni_r is not None:     # no known set (n_chains = 0): uniform placeholders, never weighed
            finite = jnp.asarray(batch["n_chains"]) > 0
            out |= {"unigram_retrieval": jnp.where(finite, uni_r, 1.0 / k),
                    "bigram_retrieval": jnp.where(finite, bi_r, 1.0 / k)}
        return out

    def position_mask(self):
        """The positions every strategy is defined at: t >= m - 1 (all of them for m = 1)."""
        import jax.numpy as jnp

        return (jnp.arange(self.chain_length) >= self.markov_order - 1).astype(jnp.float32)

    def probe_metrics(self, logits_BTV, acts, batch) -> dict:
        import jax
        import jax.numpy as jnp

        from induction_jax.losses import token_losses

        mask = self.position_mask()
        logq_all = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), -1)
        own, logq, logits_own, pattern = self.in_distribution(batch, logq_all, logits_BTV, acts.pattern_BLHTS)
        n = own["tokens"].shape[0]              # after them: chains of fresh matrices
        fresh = batch["tokens"][n:]
        kl_ood = kl_to_model(ngram_predictor(fresh, self.n_states, 1, batch.get("alpha", self.markov_alpha)),
                             logq_all[n:], mask)
        loss_ood = token_losses(logits_BTV[n:], fresh).mean()
        x = own["tokens"]
        p = self.strategies(own)
        finite = own["n_chains"] > 0
        kl = {name: kl_to_model(p[name], logq, mask) for name in p}
        nan = jnp.float32(jnp.nan)
        q = jax.nn.softmax(logq[..., :self.n_states], -1)
        w0 = jnp.where(finite, jnp.full(4, 0.25), jnp.array([0.5, 0.5, 0.0, 0.0]))
        w = mixture_weights(q, jnp.stack([p[s] for s in STRATEGIES]), w0, mask)
        heads = {"statistical_induction_score": statistical_induction_score(pattern, x),
                 "prev_token_attention": prev_token_attention(pattern)}
        return {
            "probe_loss": token_losses(logits_own, x).mean(),
            "kl_uniform": kl["uniform"], "kl_unigram": kl["unigram_inference"],
            "kl_bigram": kl["bigram_inference"], "kl_ngram": kl["ngram_inference"],
            "unigram_lead": kl["uniform"] - kl["unigram_inference"],
            "bigram_lead": kl["unigram_inference"] - kl["bigram_inference"],
            "kl_bigram_ood": kl_ood, "probe_loss_ood": loss_ood,
            "kl_unigram_retrieval": jnp.where(finite, kl["unigram_retrieval"], nan),
            "kl_bigram_retrieval": jnp.where(finite, kl["bigram_retrieval"], nan),
            **{f"w_{s}": w[i] for i, s in enumerate(STRATEGIES)},
            "prev_token_score": heads["prev_token_attention"][0].max(),
            "stat_induction_score": heads["statistical_induction_score"][-1].max(),
            **heads,
        }

    def ideal_patterns(self, T: int) -> dict:
        """The previous-token pattern (A[i, i-1] = 1, row 0 on itself); the statistical induction
        pattern depends on the tokens (uniform over s <= t with x_{s-1} = x_t)."""
        import numpy as np

        prev = np.eye(T, k=-1)
        prev[0, 0] = 1.0
        return {"prev_token": prev}

    def baselines(self, batch) -> dict:
        """Next-state loss of each strategy on a probe batch's own-distribution sequences (nats,
        positions t >= m - 1)."""
        import jax.numpy as jnp
        import numpy as np

        b, = self.in_distribution(dict(batch, tokens=jnp.asarray(batch["tokens"])))
        x = b["tokens"]
        b.setdefault("n_chains", jnp.int32(0))
        p = self.strategies(b)
        if int(b["n_chains"]) == 0:         # no known set: the retrieval entries are placeholders
            p = {k: v for k, v in p.items() if not k.endswith("retrieval")}
        mask = np.asarray(self.position_mask())[:-1] > 0
        out = {}
        for name, p_BTK in p.items():
            nll = -np.log(np.take_along_axis(np.asarray(p_BTK)[:, :-1], np.asarray(x)[:, 1:, None], -1)[..., 0])
            out[f"{name}_loss"] = float(nll[:, mask].mean())
        return out

