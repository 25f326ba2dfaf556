"""Write weights (one member, or the whole ensemble) in a format other tools read.

`npz` and `safetensors` hold the circuit-layout arrays under their own names (`W_E`,
`W_Q [L,H,D,K]`, ...; with a leading ensemble axis when the whole ensemble is written):
`np.load(path)` or `safetensors.numpy.load_file(path)` reads them with no template.
`transformer-lens` writes the directory of `interop.transformer_lens.save_transformer_lens`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from induction_jax.analysis.weights import WeightsError, stacked_params
from induction_jax.interop.transformer_lens import MissingDependency, save_transformer_lens

FORMATS = ("npz", "safetensors", "transformer-lens")


def select_member(params: dict, member: int | None) -> tuple[dict[str, np.ndarray], bool]:
    """(arrays, single): one member without the ensemble axis, or (member None) every member.

    `params` is stacked `[E, ...]` or a single model's (no ensemble axis, member 0).
    """
    single = np.ndim(params.get("W_E")) == 2
    stacked = stacked_params(params, ensemble=not single)
    E = stacked["W_E"].shape[0]
    if member is None:
        return ({k: v[0] for k, v in stacked.items()}, True) if single else (stacked, False)
    if not isinstance(member, (int, np.integer)) or isinstance(member, bool) or not 0 <= member < E:
        raise WeightsError(f"member {member!r}: out of range; allowed: 0..{E - 1} "
                           f"({E} member{'s' if E > 1 else ''})")
    return {k: v[member] for k, v in stacked.items()}, True


def export_params(params: dict, member: int | None, fmt: str, out_path: str | Path,
                  model_cfg=None) -> Path:
    """Write `params` (stacked `[E, ...]` or single) as `fmt`; returns the path written.

    `member=None` writes every member (npz, safetensors); `transformer-lens` holds one model,
    so it needs `member` unless the ensemble has one member.
    """
    if fmt not in FORMATS:
        raise WeightsError(f"format {fmt!r}: unknown; allowed: {', '.join(FORMATS)}")
    arrays, single = select_member(params, member)
    out = Path(out_path)
    if fmt == "transformer-lens":
        if not single:
            E = arrays["W_E"].shape[0]
            if E != 1:
                raise WeightsError(f"format transformer-lens: holds one model; pick a member in 0..{E - 1}")
            arrays = {k: v[0] for k, v in arrays.items()}
        return save_transformer_lens(arrays, model_cfg, out)
    arrays = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in arrays.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "npz":
        # Through a file object: np.savez given a name appends ".npz" when it is missing.
        with open(out, "wb") as f:
            np.savez(f, **arrays)
    else:
        try:
            from safetensors.numpy import save_file
        except ImportError:
            raise MissingDependency("format safetensors: needs the safetensors package "
                                    "(pip install safetensors)") from None
        save_file(arrays, str(out))
    return out
