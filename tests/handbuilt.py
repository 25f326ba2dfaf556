"""A 2-layer attention-only model whose weights are set by hand to implement the induction
circuit (no training): L0H0 is a previous-token head, L1H0 an induction head that
K-composes with it; L0H1 and L1H1 are tiny random distractors.

Residual stream = [token one-hot (V) | position one-hot (T) | previous token (V) | output (V)].
"""

import numpy as np

V, P = 64, 8
T = 2 * P
D = 3 * V + T
K = max(V, T) + 1    # one spare dimension: the induction head's penalty on key position 0
TOK, POS, PREV, OUT = 0, V, V + T, 2 * V + T
SHARP = 6.0        # QK entries SHARP**2 / sqrt(K) = 4.5 logits apart: a sharp pattern
ALPHA = 12.0       # logit given to the copied token


def build(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    W_E = np.zeros((V, D)); W_E[:, TOK:TOK + V] = np.eye(V)
    W_pos = np.zeros((T, D)); W_pos[:, POS:POS + T] = np.eye(T)
    W_Q, W_K, W_V = (rng.normal(0, 0.01, (2, 2, D, K)) for _ in range(3))
    W_O = rng.normal(0, 0.01, (2, 2, K, D))
    for arr in (W_Q, W_K, W_V, W_O):
        arr[:, 0] = 0.0
    # L0H0, previous-token head: query at position i matches key at position i-1 ...
    sharp = SHARP * K ** 0.25
    for i in range(1, T):
        W_Q[0, 0, POS + i, i] = sharp
        W_K[0, 0, POS + i - 1, i] = sharp
    # ... and writes the key's token into the previous-token subspace.
    for v in range(V):
        W_V[0, 0, TOK + v, v] = 1.0
        W_O[0, 0, v, PREV + v] = 1.0
    # L1H0, induction head: query = current token, key = the previous-token subspace ...
    for v in range(V):
        W_Q[1, 0, TOK + v, v] = sharp
        W_K[1, 0, PREV + v, v] = sharp
    # ... and copies the attended token into the output subspace, which W_U reads out.
        W_V[1, 0, TOK + v, v] = 1.0
        W_O[1, 0, v, OUT + v] = 1.0
    # Position 0 has no previous token (the L0 head attends to itself there): every query
    # (a constant from the one-hot token) scores key position 0 down.
    W_Q[1, 0, TOK:TOK + V, K - 1] = sharp
    W_K[1, 0, POS + 0, K - 1] = -sharp
    W_U = np.zeros((D, V)); W_U[OUT:OUT + V] = ALPHA * np.eye(V)
    return {k: v.astype(np.float32) for k, v in
            dict(W_E=W_E, W_pos=W_pos, W_Q=W_Q, W_K=W_K, W_V=W_V, W_O=W_O, W_U=W_U).items()}
