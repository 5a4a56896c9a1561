"""Attention for a Llama layer whose key/value heads serve unequal numbers of query heads.

Grouped-query attention in ``transformers`` assumes every key/value head serves the same number
of query heads (``num_key_value_groups``). Pruning query heads inside KV groups breaks that: a
layer of 8 query heads on 2 KV heads that loses one head has groups of 4 and 3. Such a layer
keeps ``kv_head_index`` (the KV head of each query head); this attention function
expands keys and values by that index, after the KV cache, so the cache still holds only the
kept KV heads, then runs PyTorch's SDPA as ``transformers``' own ``"sdpa"`` does.

It is registered under :data:`GROUPED_ATTENTION` with ``transformers``' attention and mask
interfaces when this module is imported; :func:`tutx.compress.prune_heads_` switches a model to it
only when one of its layers becomes non-uniform.
"""
from __future__ import annotations

import torch

GROUPED_ATTENTION = "tutx_grouped"
"""Name of the attention implementation (``config._attn_implementation``) of non-uniform GQA layers."""

__all__ = ["GROUPED_ATTENTION", "grouped_attention", "register"]


def grouped_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA attention with keys/values ``[B, n_kv, S, D]`` expanded to the query heads by ``module.kv_head_index``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    heads = getattr(module, "kv_head_index", None)  # tuple: the KV head of each query head
    if heads is not None:
        index = module.__dict__.get("kv_index_tensor")
        if index is None or index.device != key.device:
            with torch.inference_mode(False):  # a normal tensor: usable in training after an inference-mode call
                index = module.__dict__["kv_index_tensor"] = torch.tensor(heads, device=key.device)
        key = key.index_select(1, index)  # [B, n_q, S, D]
        value = value.index_select(1, index)  # [B, n_q, S, D]
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Register :func:`grouped_attention` (and SDPA's mask) under :data:`GROUPED_ATTENTION`; idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, sdpa_mask)


register()
