"""induction-jax: train ensembles of small transformers and read the induction circuit out of them."""

__version__ = "0.1.0"
