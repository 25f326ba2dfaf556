"""Weights out of and into other tools: npz / safetensors files and TransformerLens models.

Nothing here imports torch or transformer_lens until a TransformerLens function is called.
"""

from induction_jax.interop.export import FORMATS, export_params, select_member
from induction_jax.interop.transformer_lens import (MissingDependency, from_transformer_lens,
                                                    load_transformer_lens, save_transformer_lens,
                                                    to_transformer_lens)
from induction_jax.interop.transformer_lens4 import load_transformer_lens4

__all__ = ["FORMATS", "MissingDependency", "export_params", "from_transformer_lens",
           "load_transformer_lens", "load_transformer_lens4", "save_transformer_lens", "select_member",
           "to_transformer_lens"]
