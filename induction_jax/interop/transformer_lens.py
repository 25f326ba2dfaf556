"""One model in and out of TransformerLens 3.x (`HookedTransformer`), weights unchanged.

Circuit layout is TransformerLens' own layout per layer (`blocks.{l}.attn.W_Q [H,D,K]`,
`W_O [H,K,D]`, `embed.W_E [V,D]`, `pos_embed.W_pos [n_ctx,D]`, `unembed.W_U [D,V]`), so
the conversion only splits or stacks the layer axis and adds TransformerLens' zero
biases. The exported config makes TransformerLens compute exactly `functional.apply`:
attention-only, no normalisation, learned absolute positions, causal softmax of
q.k / sqrt(d_head).

An export directory loads into plain TransformerLens in two lines:

    model = HookedTransformer(HookedTransformerConfig(**json.load(open(f"{d}/config.json"))))
    model.load_state_dict(torch.load(f"{d}/state_dict.pt"))

Use `load_state_dict`, not `load_and_process_state_dict`: the latter's default
`center_unembed=True` shifts every logit by a per-position constant (the softmax is
unchanged, the logits are not).

torch and transformer_lens are imported inside the functions, so the package imports
without them; they come with the `tl` extra.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from induction_jax import layout
from induction_jax.analysis.weights import WeightsError, stacked_params

CONFIG_FILE = "config.json"
STATE_FILE = "state_dict.pt"
# What an export holds: the attention-only model without LayerNorm (`layout.LAYOUT`, whose
# `tl` column names each weight in TransformerLens; `{layer}` for a per-layer slice).
EXPORTED = layout.present(())
HEAD_WEIGHTS = tuple(p.name for p in EXPORTED if p.per_head)
ALLOWED = ("attention-only (attn_only=True), normalization_type=None, positional_embedding_type="
           "'standard', causal attention scaled by 1/sqrt(d_head), d_vocab_out == d_vocab")


class MissingDependency(WeightsError, ImportError):
    """torch or transformer_lens is not installed (the `tl` extra)."""


def _require_tl():
    """(torch, transformer_lens), or a one-line error naming the extra that installs them."""
    try:
        import torch
        import transformer_lens
    except ImportError as e:
        raise MissingDependency(f"TransformerLens interop needs torch and transformer-lens "
                                f"({e.name} is missing): pip install -e \".[tl]\"") from None
    return torch, transformer_lens


def _new_model(config: dict, **overrides):
    """A `HookedTransformer` from config kwargs, without its deprecation warning (3.x only)."""
    _, tl = _require_tl()
    if _tl_major() >= 4:
        raise MissingDependency(f"HookedTransformer is gone in TransformerLens {_tl_version()}: load an export "
                                f"with load_transformer_lens4 (a TransformerBridge), or install the tl extra (3.x)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return tl.HookedTransformer(tl.HookedTransformerConfig(**(config | overrides)))


def _single_params(params: dict) -> dict[str, np.ndarray]:
    """One member's weights as float32 numpy, refusing what TransformerLens' export cannot hold."""
    extra = layout.extras(params)
    if extra:
        part, marker = next(iter(extra.items()))
        raise WeightsError(f"params: has {layout.FEATURES[part]} ({marker}); TransformerLens export supports "
                           f"attention-only models without LayerNorm")
    if np.ndim(params.get("W_E")) == 3:
        raise WeightsError(f"params: W_E has shape {np.shape(params['W_E'])}, an ensemble; the "
                           f"TransformerLens export takes one member (params[name][member])")
    p = {k: v[0].astype(np.float32) for k, v in stacked_params(params, ensemble=False).items()}
    sizes = layout.sizes_of(p)
    for name, shape in {q.name: q.shape(sizes) for q in EXPORTED}.items():
        if p[name].shape != shape:
            raise WeightsError(f"params[{name!r}]: shape {p[name].shape}, expected {shape} from "
                               f"W_E {p['W_E'].shape} and W_Q {p['W_Q'].shape}")
    return p


def _config(p: dict[str, np.ndarray], model_cfg=None) -> dict:
    """`HookedTransformerConfig` kwargs (JSON-safe) for one member's params; shapes come from the
    weights, and `model_cfg` (a `ModelConfig`, optional) must agree with them."""
    found = layout.sizes_of(p)
    V, D, L, H, K, n_ctx = (found[n] for n in ("d_vocab", "d_model", "n_layers", "n_heads", "d_head", "n_ctx"))
    if model_cfg is not None:
        parts = layout.features(model_cfg)
        if parts:
            what = {"mlp": "MLPs (d_mlp > 0)", "layer_norm": "LayerNorm (layer_norm=true)"}[parts[0]]
            raise WeightsError(f"model config: has {what}; TransformerLens export supports attention-only "
                               f"models without LayerNorm")
        for name, value in found.items():
            if getattr(model_cfg, name) != value:
                raise WeightsError(f"model config: {name}={getattr(model_cfg, name)} but the weights have "
                                   f"{name}={value}")
    return {
        "model_name": "induction_jax", "n_layers": L, "n_heads": H, "d_model": D, "d_head": K,
        "d_vocab": V, "d_vocab_out": V, "n_ctx": n_ctx,
        "attn_only": True, "normalization_type": None, "positional_embedding_type": "standard",
        "attention_dir": "causal", "use_attn_scale": True, "attn_scale": math.sqrt(K),
        # Unused by an attention-only model but required by the config; jax.nn.gelu's default
        # is the tanh approximation, TransformerLens' "gelu_new".
        "act_fn": "gelu_new",
        # Our sequences have no BOS token: to_tokens on a user's tokenizer must not add one.
        "default_prepend_bos": False,
    }


def to_transformer_lens(params: dict, model_cfg=None) -> tuple[dict, dict]:
    """One member's circuit-layout params (no ensemble axis) as (config kwargs, state dict).

    The state dict has TransformerLens' names and layouts, zero biases, and the buffers
    (`IGNORE`, `mask`) of the installed TransformerLens version, so `load_state_dict`
    accepts it with `strict=True`.
    """
    p = _single_params(params)
    config = _config(p, model_cfg)     # refuses what cannot be exported before torch is needed
    torch, _ = _require_tl()
    L, H, _, K = p["W_Q"].shape
    D, V = p["W_U"].shape
    weights = {}
    for q in EXPORTED:
        weights |= ({q.tl.format(layer=layer): p[q.name][layer] for layer in range(L)} if q.per_layer
                    else {q.tl: p[q.name]})
    # TransformerLens' biases, zero (our forward pass has none)
    weights["unembed.b_U"] = np.zeros(V, np.float32)
    for layer in range(L):
        prefix = f"blocks.{layer}.attn."
        for name in ("b_Q", "b_K", "b_V"):
            weights[prefix + name] = np.zeros((H, K), np.float32)
        weights[prefix + "b_O"] = np.zeros(D, np.float32)
    if _tl_major() >= 4:           # no HookedTransformer: the same file, checked by 4.x's own loader
        from induction_jax.interop.transformer_lens4 import hooked_state
        return config, hooked_state(config, weights)
    # The buffers and the exact key set come from the installed version itself, so a
    # TransformerLens release that renames anything fails here, not at the user's load.
    model = _new_model(config, device="cpu", init_weights=False)
    reference = model.state_dict()
    param_names = set(reference) - {name for name, _ in model.named_buffers()}
    if param_names != set(weights):
        diff = sorted(param_names ^ set(weights))
        raise WeightsError(f"TransformerLens {_tl_version()}: unexpected parameter names "
                           f"({', '.join(diff[:4])}); this export was written for TransformerLens 3.x")
    state = {}
    for key, ref in reference.items():
        if key not in weights:
            state[key] = ref.detach().clone()
            continue
        state[key] = torch.tensor(weights[key])
        if state[key].shape != ref.shape:
            raise WeightsError(f"{key}: shape {tuple(state[key].shape)}, TransformerLens expects "
                               f"{tuple(ref.shape)}")
    return config, state


def _tl_version() -> str:
    from importlib.metadata import version
    return version("transformer-lens")


def _tl_major() -> int:
    return int(_tl_version().split(".")[0])


def save_transformer_lens(params: dict, model_cfg, out_dir: str | Path) -> Path:
    """Write `config.json` (the config kwargs) and `state_dict.pt` (`torch.save`) to `out_dir`."""
    torch, _ = _require_tl()
    config, state = to_transformer_lens(params, model_cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    torch.save(state, out / STATE_FILE)
    return out


def load_transformer_lens(out_dir: str | Path, device: str | None = None):
    """The `HookedTransformer` saved by `save_transformer_lens` (device: TransformerLens' default)."""
    torch, _ = _require_tl()
    out = Path(out_dir)
    for name in (CONFIG_FILE, STATE_FILE):
        if not (out / name).is_file():
            raise WeightsError(f"{out}: no {name} (not a TransformerLens export directory)")
    config = json.loads((out / CONFIG_FILE).read_text())
    model = _new_model(config, **({} if device is None else {"device": device}))
    model.load_state_dict(torch.load(out / STATE_FILE, map_location="cpu", weights_only=True))
    return model


def tl_config_value(cfg, name: str, default=None):
    return cfg.get(name, default) if isinstance(cfg, Mapping) else getattr(cfg, name, default)


def _unsupported(cfg, keys) -> list[str]:
    """What a TransformerLens model has that our forward pass (and circuit layout) cannot express."""
    has = []
    if not tl_config_value(cfg, "attn_only", False) or any(".mlp." in k for k in keys):
        has.append(f"MLPs (attn_only=False, d_mlp={tl_config_value(cfg, 'd_mlp')})")
    norm = tl_config_value(cfg, "normalization_type", "LN")
    if norm is not None or any(".ln1." in k or k.startswith("ln_final.") for k in keys):
        has.append(f"LayerNorm (normalization_type={norm!r})")
    pos = tl_config_value(cfg, "positional_embedding_type", "standard")
    if pos != "standard":
        has.append(f"positional_embedding_type={pos!r}")
    if tl_config_value(cfg, "attention_dir", "causal") != "causal":
        has.append(f"attention_dir={tl_config_value(cfg, 'attention_dir')!r}")
    d_head = tl_config_value(cfg, "d_head")
    scale = tl_config_value(cfg, "attn_scale", -1.0)
    if (not tl_config_value(cfg, "use_attn_scale", True) or tl_config_value(cfg, "scale_attn_by_inverse_layer_idx", False)
            or (scale != -1.0 and not math.isclose(scale, math.sqrt(d_head)))):
        has.append("an attention scale other than 1/sqrt(d_head)")
    if tl_config_value(cfg, "n_key_value_heads") is not None:
        has.append("grouped-query attention (n_key_value_heads)")
    for name in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if (tl_config_value(cfg, name, -1.0) or -1.0) > 0:
            has.append(name)
    if tl_config_value(cfg, "use_attention_sinks", False):
        has.append("attention sinks")
    d_vocab, d_vocab_out = tl_config_value(cfg, "d_vocab"), tl_config_value(cfg, "d_vocab_out", -1)
    if d_vocab_out not in (-1, d_vocab):
        has.append(f"d_vocab_out={d_vocab_out} != d_vocab={d_vocab}")
    return has


def from_transformer_lens(model_or_state_dict, cfg=None) -> dict[str, np.ndarray]:
    """Circuit-layout params (float32 numpy, no ensemble axis) of an attention-only TransformerLens model.

    Takes a `HookedTransformer`, or its state dict with `cfg` (a `HookedTransformerConfig` or
    its kwargs). Biases are dropped, with a warning where one is nonzero: the weight-based
    scores, like TransformerLens' own `QK`/`OV` FactoredMatrix, read only the weights.
    """
    torch, _ = _require_tl()
    if isinstance(model_or_state_dict, Mapping):
        if cfg is None:
            raise WeightsError("from_transformer_lens: a state dict needs its cfg "
                               "(HookedTransformerConfig or its kwargs)")
        state = model_or_state_dict
    elif hasattr(model_or_state_dict, "state_dict") and hasattr(model_or_state_dict, "cfg"):
        state, cfg = model_or_state_dict.state_dict(), cfg or model_or_state_dict.cfg
    else:
        raise WeightsError(f"from_transformer_lens: expected a HookedTransformer or a state dict, "
                           f"got {type(model_or_state_dict).__name__}")
    has = _unsupported(cfg, state.keys())
    if has:
        raise WeightsError(f"TransformerLens model: has {'; '.join(has)}; allowed: {ALLOWED}")

    def get(key: str) -> np.ndarray:
        if key not in state:
            raise WeightsError(f"TransformerLens state dict: missing {key}")
        return state[key].detach().to("cpu", torch.float32).numpy().copy()

    n_layers = tl_config_value(cfg, "n_layers")
    params = {q.name: (np.stack([get(q.tl.format(layer=layer)) for layer in range(n_layers)]) if q.per_layer
                       else get(q.tl)) for q in EXPORTED}
    biases = [k for k in state if k.rsplit(".", 1)[-1].startswith("b_") and bool(state[k].ne(0).any())]
    if biases:
        warnings.warn(f"from_transformer_lens: dropped nonzero biases ({', '.join(biases[:3])}"
                      f"{', ...' if len(biases) > 3 else ''}); our forward pass has none", stacklevel=2)
    return params
