"""Load an exported member into TransformerLens 4.x (`TransformerBridge`).

TransformerLens 4.0 removed `HookedTransformer`; its route for a model that is not a
Hugging Face checkpoint is the TL-native architecture: `TransformerBridge.boot_native(cfg)`
builds `transformer_lens.model_bridge.sources.native.model.NativeModel` from a
`TransformerBridgeConfig` (attention-only, no normalisation, learned absolute positions and
causal attention scaled by 1/sqrt(d_head) are all config switches there), and
`transformer_lens.utilities.tl_checkpoint_conversion.convert_tl_checkpoint` maps a
`HookedTransformer` state dict onto it. That is how TransformerLens 4 itself loads the legacy
attention-only models (`sources/tl_legacy.py`). So the export directory written for 3.x
(`config.json`, `state_dict.pt`) is also the 4.x format: nothing else is exported, and
`hooked_state` writes that same file where 4.x is installed (no `HookedTransformer` to ask).

    model = load_transformer_lens4("exports/member0")
    logits, cache = model.run_with_cache(tokens)
    cache["blocks.1.attn.hook_pattern"]          # [batch, head, query, key], as in 3.x

TransformerLens 3.x and 4.x cannot share an environment (docs/transformer-lens.md): this
module needs 4.x, `transformer_lens.py`'s `load_transformer_lens` needs 3.x.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from pathlib import Path

import numpy as np

from induction_jax.analysis.weights import WeightsError
from induction_jax.interop.transformer_lens import (ALLOWED, CONFIG_FILE, STATE_FILE, MissingDependency,
                                                    _tl_version, _unsupported)


TESTED = "4.3.0"      # the TransformerLens 4 release tests/test_interop_tl4.py checks against


def _require_tl4():
    """(torch, TransformerBridgeConfig, TransformerBridge, convert_tl_checkpoint), or a one-line
    error naming what to install."""
    try:
        import torch
        import transformer_lens  # noqa: F401
    except ImportError as e:
        raise MissingDependency(f"load_transformer_lens4 needs torch and transformer-lens 4.x ({e.name} is "
                                f"missing): pip install torch==2.13.0 transformer-lens==4.3.0 in an environment "
                                f"without the tl extra") from None
    found = _tl_version()
    if int(found.split(".")[0]) < 4:
        raise MissingDependency(f"load_transformer_lens4 needs TransformerLens 4.x, found {found}; with 3.x use "
                                f"load_transformer_lens")
    try:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge
        from transformer_lens.model_bridge.sources import native  # noqa: F401  (attaches boot_native)
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint
    except ImportError as e:
        raise MissingDependency(f"load_transformer_lens4: TransformerLens {found} lacks {e.name}, which the "
                                f"4.x route needs (written against {TESTED})") from None
    return torch, TransformerBridgeConfig, TransformerBridge, convert_tl_checkpoint


def bridge_config(config: dict, config_class, device: str | None = None):
    """The `TransformerBridgeConfig` of an export's config kwargs: every key kept (one the
    installed version does not know is an error, not silently dropped), architecture
    TL-native, no random init (the export's weights replace it)."""
    # The fields TransformerBridgeConfig.from_dict keeps: its own and, through **kwargs, its bases'.
    known = set()
    for cls in config_class.__mro__:
        with contextlib.suppress(ValueError, TypeError):
            known |= {n for n, p in inspect.signature(cls).parameters.items() if p.kind != p.VAR_KEYWORD}
    unknown = sorted(set(config) - known)
    if unknown:
        raise WeightsError(f"{CONFIG_FILE}: key {unknown[0]!r} is not a TransformerBridgeConfig field in "
                           f"TransformerLens {_tl_version()}; this export was written for another version")
    extra = {"architecture": "TransformerLensNative", "init_weights": False}
    if device is not None:
        extra["device"] = device
    return config_class(**(config | extra))


def hooked_state(config: dict, weights: dict[str, np.ndarray]) -> dict:
    """The `HookedTransformer` state dict of `weights` (TransformerLens names and layouts, biases
    included) written under 4.x: what 3.x's `to_transformer_lens` writes, its two buffers per
    layer as `HookedTransformer` 3.x registers them (an empty `mask`, `IGNORE` = -inf), so
    the file loads strictly in both. The key set and shapes are checked by loading it the way
    `load_transformer_lens4` does, so a 4.x release that renames anything fails here.
    """
    torch, config_class, bridge_class, convert = _require_tl4()
    state = {key: torch.tensor(value) for key, value in weights.items()}
    for layer in range(config["n_layers"]):
        state[f"blocks.{layer}.attn.mask"] = torch.empty((0, 0), dtype=torch.bool)
        state[f"blocks.{layer}.attn.IGNORE"] = torch.tensor(-torch.inf)
    cfg = bridge_config(config, config_class, "cpu")
    _load(bridge_class.boot_native(cfg, device="cpu"), convert, state, cfg, "TransformerLens state dict")
    return state


def _load(model, convert, state: dict, cfg, label: str) -> None:
    """`state` (HookedTransformer names) into the bridge `model`, strictly; one line if it does not fit."""
    try:
        model.load_state_dict(convert(state, cfg), strict=True)
    except (ValueError, RuntimeError) as e:
        why = " ".join(str(e).split())[:300] or type(e).__name__
        raise WeightsError(f"{label}: does not fit {CONFIG_FILE} in TransformerLens {_tl_version()} "
                           f"({why})") from None


def load_transformer_lens4(out_dir: str | Path, device: str | None = None, compatibility_mode: bool = True):
    """The `TransformerBridge` of an export directory (`save_transformer_lens` / `export
    --format transformer-lens`), computing exactly `functional.apply`.

    `compatibility_mode` turns on TransformerLens' HookedTransformer hook aliases
    (`cache["pattern", layer]`, `model.W_Q`, ...) with `no_processing=True`: the weights are
    used as exported (the default processing would centre the unembedding, shifting every
    logit by a per-position constant). Refuses, with one line, a folder that is not an export
    and a config our forward pass cannot express.
    """
    torch, config_class, bridge_class, convert = _require_tl4()
    out = Path(out_dir)
    for name in (CONFIG_FILE, STATE_FILE):
        if not (out / name).is_file():
            raise WeightsError(f"{out}: no {name} (not a TransformerLens export directory)")
    config = json.loads((out / CONFIG_FILE).read_text())
    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    has = _unsupported(config, state.keys())
    if has:
        raise WeightsError(f"{out / CONFIG_FILE}: has {'; '.join(has)}; allowed: {ALLOWED}")
    cfg = bridge_config(config, config_class, device)
    model = bridge_class.boot_native(cfg, device=device)
    _load(model, convert, state, cfg, str(out / STATE_FILE))
    if compatibility_mode:
        model.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    model.eval()
    return model
