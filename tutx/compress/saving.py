"""Save and reload pruned models with ``save_pretrained`` / ``from_pretrained``.

A pruned model's layers differ in shape (heads, KV groups, FFN width) while a Hugging Face config
describes one shape for all layers, so ``LlamaForCausalLM.from_pretrained`` would build the
unpruned shapes and refuse the smaller weights. ``save_pretrained`` already writes
``config.pruned_layout`` (set by :func:`~tutx.compress.prune_heads_` / :func:`~tutx.compress.prune_ffn_`)
into ``config.json``; the two classes here are the stock ones whose constructor first reshapes
each layer to that layout, so their ``from_pretrained`` loads the pruned weights::

    model.save_pretrained("pruned")             # after prune_heads_ / prune_ffn_
    model = load_pruned("pruned")               # PrunedLlamaForCausalLM or PrunedBertModel
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from transformers import BertModel, LlamaForCausalLM

from tutx.compress import grouped
from tutx.compress.structure import (
    attention_projections,
    ffn_projections,
    head_dim,
    layers,
    set_grouping,
)

__all__ = ["PrunedBertModel", "PrunedLlamaForCausalLM", "apply_layout", "load_pruned"]


def _resize(linear: nn.Linear, out_features: int | None = None, in_features: int | None = None) -> None:
    """Give ``linear`` a new (uninitialised) shape; the checkpoint fills it."""
    out_features = linear.out_features if out_features is None else out_features
    in_features = linear.in_features if in_features is None else in_features
    if (out_features, in_features) == tuple(linear.weight.shape):
        return
    w = linear.weight
    linear.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=w.dtype, device=w.device))
    if linear.bias is not None:
        linear.bias = nn.Parameter(torch.empty(out_features, dtype=w.dtype, device=w.device))
    linear.out_features, linear.in_features = out_features, in_features


def apply_layout(model, layout: dict) -> bool:
    """Reshape ``model``'s layers (weights uninitialised) to ``layout``; returns whether a GQA layer is uneven."""
    blocks, dim = layers(model), head_dim(model)
    if len(layout["attention"]) != len(blocks) or len(layout["intermediate"]) != len(blocks):
        raise ValueError(f"config.pruned_layout: describes {len(layout['attention'])} layers, the model has {len(blocks)}")
    uneven = False
    for block, heads, width in zip(blocks, layout["attention"], layout["intermediate"]):
        q, k, v, o = attention_projections(block)
        n_q = sum(heads) if isinstance(heads, list) else heads
        _resize(q, out_features=n_q * dim)
        _resize(o, in_features=n_q * dim)
        if isinstance(heads, list):  # Llama: query heads per kept KV head
            _resize(k, out_features=len(heads) * dim)
            _resize(v, out_features=len(heads) * dim)
            uneven |= set_grouping(block, heads)
        else:  # BERT
            _resize(k, out_features=n_q * dim)
            _resize(v, out_features=n_q * dim)
            block.attention.self.num_attention_heads = n_q
            block.attention.self.all_head_size = n_q * dim
        ins, out = ffn_projections(block)
        for lin in ins:
            _resize(lin, out_features=width)
        _resize(out, in_features=width)
        if hasattr(block, "mlp"):
            block.mlp.intermediate_size = width
    return uneven


class PrunedLlamaForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` built to ``config.pruned_layout`` (per-layer heads, KV groups, FFN widths)."""

    def __init__(self, config):
        super().__init__(config)
        layout = getattr(config, "pruned_layout", None)
        if layout and apply_layout(self, layout):
            grouped.register()
            config._attn_implementation = grouped.GROUPED_ATTENTION


class PrunedBertModel(BertModel):
    """``BertModel`` built to ``config.pruned_layout`` (per-layer heads and FFN widths)."""

    def __init__(self, config, add_pooling_layer: bool = True):
        super().__init__(config, add_pooling_layer=add_pooling_layer)
        layout = getattr(config, "pruned_layout", None)
        if layout:
            apply_layout(self, layout)


def load_pruned(path, **kwargs):
    """Load a model saved after pruning: ``PrunedLlamaForCausalLM`` or ``PrunedBertModel`` by ``model_type``.

    ``kwargs`` go to ``from_pretrained`` (``dtype=``, ``device_map=``…). The model is in eval mode.
    An unpruned checkpoint loads too (no ``pruned_layout``: the stock shapes).
    """
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"path: no config.json in {path}")
    model_type = json.loads(config_file.read_text()).get("model_type")
    classes = {"llama": PrunedLlamaForCausalLM, "bert": PrunedBertModel}
    if model_type not in classes:
        raise ValueError(f"path: model_type {model_type!r} in {config_file}; expected one of {sorted(classes)}")
    from tutx.models.hf import no_progress_bar

    with no_progress_bar():
        model = classes[model_type].from_pretrained(path, **kwargs)
    return model.eval()
