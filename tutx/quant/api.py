"""``quantize_``: swap a model's ``nn.Linear`` layers for quantized ones, in place; save and load them.

Which layers by default: every ``nn.Linear`` except the output projection — the module returned
by ``model.get_output_embeddings()`` (Hugging Face's ``lm_head``), any Linear named ``lm_head``,
and any Linear whose weight *is* an embedding table (tied weights). The logits layer is the most
sensitive to quantization and, when tied, quantizing it would also change the input embeddings.
Pass ``filter_fn(module, fqn) -> bool`` to choose yourself; it is asked about every ``nn.Linear``
and every already-quantized linear (selecting one of those is an error).

Checkpoints: :func:`save_quantized` writes a safetensors file whose metadata records which
module holds which config; :func:`load_quantized` rebuilds that structure on a freshly loaded,
un-quantized model (no quantization work) and loads the tensors. For plain ``state_dict``
round trips use :func:`quantization_plan` and :func:`apply_plan_`.
"""
from __future__ import annotations

import json
from typing import Callable, Mapping

from safetensors import safe_open
from safetensors.torch import load_model, save_model
from torch import nn

from tutx.quant.configs import check_config, config_from_dict, config_to_dict
from tutx.quant.modules import MODULE_FOR_CONFIG, QUANTIZED_LINEARS

METADATA_KEY = "tutx.quant.plan"


def default_filter(model: nn.Module) -> Callable[[nn.Module, str], bool]:
    """The default ``filter_fn`` for ``model``: every ``nn.Linear`` but the output projection."""
    excluded = {id(m) for m in _output_linears(model)}
    embed_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}

    def keep(module: nn.Module, fqn: str) -> bool:
        return (isinstance(module, nn.Linear) and id(module) not in excluded
                and fqn.split(".")[-1] != "lm_head" and id(module.weight) not in embed_weights)

    return keep


def _output_linears(model: nn.Module) -> list[nn.Module]:
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            out = get()
        except (AttributeError, NotImplementedError):  # models without an LM head
            out = None
        if isinstance(out, nn.Module):
            return [out]
    return []


def quantize_(model: nn.Module, config, filter_fn: Callable[[nn.Module, str], bool] | None = None) -> nn.Module:
    """Replace ``nn.Linear`` modules of ``model`` by quantized ones, in place; returns ``model``.

    ``config`` is one config for every selected layer — ``Int8WeightOnly()``,
    ``Int4WeightOnly(group_size)`` or ``Int8DynamicActivationInt8Weight()``, layers chosen by
    ``filter_fn`` (default: every Linear but the LM head) — or a dict ``{fqn: config}`` naming
    each layer and its own config (``None``: leave that layer as it is); mixed precision builds
    such a dict. Every layer is checked (and quantized) before any is swapped, so a bad layer
    leaves the model untouched.
    """
    if isinstance(config, Mapping):
        if filter_fn is not None:
            raise ValueError("filter_fn: not used with a {fqn: config} dict, which names the layers itself")
        targets = _linears_by_name(model, {fqn: c for fqn, c in config.items() if c is not None})
    else:
        check_config(config)
        targets = [(fqn, module, config) for fqn, module in select_linears(model, filter_fn)]
    swaps = [(fqn, MODULE_FOR_CONFIG[type(cfg)].from_linear(module, cfg, fqn=fqn)) for fqn, module, cfg in targets]
    for fqn, new in swaps:
        set_submodule(model, fqn, new)
    return model


def _linears_by_name(model: nn.Module, configs: Mapping) -> list[tuple[str, nn.Linear, object]]:
    """``(fqn, module, config)`` for a ``{fqn: config}`` dict; each fqn must name an un-quantized ``nn.Linear``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    out = []
    for fqn, cfg in configs.items():
        if not isinstance(fqn, str) or not fqn:
            raise ValueError(f"config: keys must be module names ('model.layers.0.mlp.up_proj'), got {fqn!r}")
        check_config(cfg)
        try:
            module = model.get_submodule(fqn)
        except AttributeError:
            raise ValueError(f"config: model has no module {fqn!r}") from None
        if isinstance(module, QUANTIZED_LINEARS):
            raise ValueError(f"model: {fqn!r} is already quantized ({type(module).__name__})")
        if not isinstance(module, nn.Linear):
            raise ValueError(f"config: {fqn!r} is a {type(module).__name__}, expected an nn.Linear")
        out.append((fqn, module, cfg))
    return out


def select_linears(model: nn.Module, filter_fn=None) -> list[tuple[str, nn.Linear]]:
    """``(fqn, module)`` of the ``nn.Linear`` layers ``filter_fn`` selects (default: :func:`default_filter`).

    Refuses already-quantized layers: with the default filter, any in the model; with a custom
    one, any it selects.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    done = [fqn or "<root>" for fqn, m in model.named_modules() if isinstance(m, QUANTIZED_LINEARS)]
    if filter_fn is None:
        if done:
            raise ValueError(f"model: already quantized ({len(done)} quantized layers, e.g. {done[0]!r}); "
                             "pass filter_fn to quantize the remaining nn.Linear layers")
        filter_fn = default_filter(model)
    elif not callable(filter_fn):
        raise TypeError(f"filter_fn: expected a callable (module, fqn) -> bool, got {type(filter_fn).__name__}")
    selected = []
    for fqn, module in model.named_modules():
        if not isinstance(module, (nn.Linear, *QUANTIZED_LINEARS)) or not filter_fn(module, fqn):
            continue
        if isinstance(module, QUANTIZED_LINEARS):
            raise ValueError(f"model: {fqn or '<root>'!r} is already quantized ({type(module).__name__})")
        if fqn == "":
            raise ValueError("model: is itself an nn.Linear and cannot be replaced in place; wrap it in a module")
        selected.append((fqn, module))
    return selected


def set_submodule(model: nn.Module, fqn: str, new: nn.Module) -> None:
    """Replace the submodule at ``fqn`` (``'a.b.c'``) by ``new``."""
    parent_name, _, child = fqn.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def quantization_plan(model: nn.Module) -> dict[str, dict]:
    """``{fqn: config-as-dict}`` for every quantized linear in ``model``."""
    return {fqn: config_to_dict(m.config) for fqn, m in model.named_modules() if isinstance(m, QUANTIZED_LINEARS)}


def apply_plan_(model: nn.Module, plan: dict[str, dict]) -> nn.Module:
    """Swap the Linears named in ``plan`` for *empty* quantized modules, ready for ``load_state_dict``."""
    swaps = []
    for fqn, cfg in plan.items():
        config = config_from_dict(cfg)
        try:
            linear = model.get_submodule(fqn)
        except AttributeError:
            raise ValueError(f"plan: model has no module {fqn!r}") from None
        if not isinstance(linear, nn.Linear):
            raise ValueError(f"plan: {fqn!r} is a {type(linear).__name__}, expected an un-quantized nn.Linear")
        swaps.append((fqn, MODULE_FOR_CONFIG[type(config)].empty_like(linear, config)))
    for fqn, new in swaps:
        set_submodule(model, fqn, new)
    return model


def save_quantized(model: nn.Module, path) -> None:
    """Write ``model``'s tensors to a safetensors file, with the quantization plan in its metadata."""
    plan = quantization_plan(model)
    if not plan:
        raise ValueError("model: has no quantized layers; call quantize_ first (or save it with save_model)")
    save_model(model, str(path), metadata={METADATA_KEY: json.dumps(plan)})


def load_quantized(model: nn.Module, path) -> nn.Module:
    """Rebuild a model saved by :func:`save_quantized` on ``model`` (same architecture, un-quantized)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"path: {str(path)!r} has no {METADATA_KEY!r} metadata; was it written by save_quantized?")
    apply_plan_(model, json.loads(meta[METADATA_KEY]))
    load_model(model, str(path), strict=True)  # raises on missing or unexpected tensors
    return model
