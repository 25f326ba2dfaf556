"""Analysis of trained ensembles on plain arrays: no Flax, no optimiser."""
