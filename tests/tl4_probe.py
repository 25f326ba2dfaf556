"""Run by tests/test_interop_tl4.py in a subprocess with TransformerLens 4 first on PYTHONPATH
(3.x and 4.x cannot share one environment): loads export directories with
`load_transformer_lens4` and writes what TransformerLens 4 computes on given tokens.

    python tests/tl4_probe.py RESULT.npz KIND=NAME=SOURCE=TARGET ...

Jobs run in order. `export=NAME=PARAMS.npz=OUT_DIR` writes one member's circuit-layout arrays
with `export_params(..., "transformer-lens", ...)` under TransformerLens 4. `load=NAME=DIR=
TOKENS.npy` stores `NAME/logits` [B,T,V], `NAME/pattern` [B,L,H,T,S] (the
`blocks.{l}.attn.hook_pattern` hooks), `NAME/pattern_alias` (the `cache["pattern", l]`
shorthand) and `NAME/W_Q` ... (the bridge's HookedTransformer-style weight views).
`load3=NAME=DIR=-` calls the 3.x loader, which must refuse here. A refusal is stored as
`NAME/error`, its one-line message. `_meta` is a JSON string: the
TransformerLens version and file imported.
"""

import json
import sys
from importlib.metadata import version

import numpy as np
import torch
import transformer_lens

from induction_jax.analysis.weights import WeightsError
from induction_jax.interop import export_params, load_transformer_lens, load_transformer_lens4

VIEWS = ("W_E", "W_pos", "W_Q", "W_K", "W_V", "W_O", "W_U")


def probe(export_dir: str, tokens_path: str) -> dict[str, np.ndarray]:
    try:
        model = load_transformer_lens4(export_dir, device="cpu")
    except WeightsError as e:
        return {"error": np.array(str(e))}
    tokens = torch.tensor(np.load(tokens_path))
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    layers = range(model.cfg.n_layers)
    found = {"logits": logits.numpy(),
             "pattern": np.stack([cache[f"blocks.{layer}.attn.hook_pattern"].numpy() for layer in layers], 1),
             "pattern_alias": np.stack([cache["pattern", layer].numpy() for layer in layers], 1)}
    return found | {name: getattr(model, name).detach().numpy() for name in VIEWS}


def main(out: str, jobs: list[str]) -> None:
    arrays = {"_meta": np.array(json.dumps({"version": version("transformer-lens"),
                                            "file": transformer_lens.__file__}))}
    for job in jobs:
        kind, name, source, target = job.split("=")
        if kind == "export":
            with np.load(source) as f:
                params = dict(f)
            try:
                export_params(params, None, "transformer-lens", target)
            except WeightsError as e:
                arrays[f"{name}/error"] = np.array(str(e))
        elif kind == "load3":            # the 3.x loader, which must refuse in one line here
            try:
                load_transformer_lens(source)
            except WeightsError as e:
                arrays[f"{name}/error"] = np.array(str(e))
        else:
            arrays |= {f"{name}/{key}": value for key, value in probe(source, target).items()}
    np.savez(out, **arrays)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
