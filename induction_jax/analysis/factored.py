"""A small immutable factored matrix `A @ B` with leading batch axes (ensemble, layer, head).

`A [..., m, k]`, `B [..., k, n]` with k small (d_head): products, Frobenius norms, singular
values and eigenvalues all come from the small factors, never a dense m x n computation.
Modelled on TransformerLens' FactoredMatrix; it is a JAX pytree, so it passes through
`jit` and `vmap`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_pytree_node_class
class FactoredMatrix:
    def __init__(self, A: jax.Array, B: jax.Array):
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"FactoredMatrix: inner dimensions differ, A {A.shape} vs B {B.shape}")
        self.A, self.B = jnp.asarray(A), jnp.asarray(B)

    def tree_flatten(self):
        return (self.A, self.B), None

    @classmethod
    def tree_unflatten(cls, _, children):
        return cls(*children)

    @property
    def shape(self) -> tuple[int, ...]:
        batch = jnp.broadcast_shapes(self.A.shape[:-2], self.B.shape[:-2])
        return (*batch, self.A.shape[-2], self.B.shape[-1])

    @property
    def AB(self) -> jax.Array:
        """The dense product (only for small matrices, tests and figures)."""
        return self.A @ self.B

    @property
    def BA(self) -> jax.Array:
        """The small `[..., k, k]` product in the other order (same nonzero eigenvalues)."""
        return self.B @ self.A

    @property
    def T(self) -> "FactoredMatrix":
        return FactoredMatrix(jnp.swapaxes(self.B, -1, -2), jnp.swapaxes(self.A, -1, -2))

    def __matmul__(self, other) -> "FactoredMatrix":
        """Product with a dense matrix or another factored one; the result stays factored."""
        if isinstance(other, FactoredMatrix):
            # (A1 B1)(A2 B2): put the smaller middle product on the side of the smaller rank.
            if self.A.shape[-1] <= other.A.shape[-1]:
                return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
            return FactoredMatrix((self.A @ self.B) @ other.A, other.B)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other) -> "FactoredMatrix":
        return FactoredMatrix(other @ self.A, self.B)

    def norm(self) -> jax.Array:
        """Frobenius norm: ||AB||_F^2 = tr((A^T A)(B B^T)), from k x k Gram matrices."""
        gram_A = jnp.swapaxes(self.A, -1, -2) @ self.A
        gram_B = self.B @ jnp.swapaxes(self.B, -1, -2)
        return jnp.sqrt(jnp.maximum(jnp.sum(gram_A * gram_B, axis=(-2, -1)), 0.0))

    def svd(self):
        """Thin SVD `(U [..., m, k], S [..., k], Vh [..., k, n])` via QR of the factors."""
        Q_A, R_A = jnp.linalg.qr(self.A)
        Q_B, R_B = jnp.linalg.qr(jnp.swapaxes(self.B, -1, -2))
        U, S, Vh = jnp.linalg.svd(R_A @ jnp.swapaxes(R_B, -1, -2), full_matrices=False)
        return Q_A @ U, S, Vh @ jnp.swapaxes(Q_B, -1, -2)

    @property
    def S(self) -> jax.Array:
        return self.svd()[1]

    @property
    def eigenvalues(self) -> np.ndarray:
        """The k eigenvalues of BA: the nonzero eigenvalues of the square AB (complex, host).

        Computed with numpy on the host (batched over leading axes): JAX's general eig is
        CPU-only, and these k x k matrices are tiny.
        """
        return np.linalg.eigvals(np.asarray(self.BA, dtype=np.float64))


def copying_score(eigenvalues: np.ndarray) -> np.ndarray:
    """sum(Re lambda) / sum(|lambda|) over the last axis: near 1 = the matrix copies."""
    return eigenvalues.real.sum(-1) / np.maximum(np.abs(eigenvalues).sum(-1), 1e-30)
