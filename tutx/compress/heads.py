"""Attention-head pruning that really shrinks the weights, for Llama (with GQA) and BERT.

A head is a block of ``head_dim`` rows in the query (and key/value) projections and the same
block of columns in the output projection; removing the head removes those rows and columns, so
the model has fewer parameters and does less work. With grouped-query attention
(``n_kv < n_q`` key/value heads, each shared by a group of query heads) a query head can go on its
own, and a key/value head goes with the last query head of its group. Nothing else changes: the
pruned model computes exactly what the unpruned one computes with those heads' outputs set to
zero (:func:`head_mask` does that, and is what the importance score differentiates).

Transformers 5 dropped its ``prune_heads`` methods (BERT had one), so both families go through
the same code here. ``config.num_attention_heads`` stays the original count (Llama and BERT
configs validate it against ``hidden_size``); the per-layer counts are in ``config.pruned_layout``
(see :mod:`tutx.compress.structure`), which :func:`tutx.compress.load_pruned` reads back.
"""
from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn

from tutx._validate import check_int
from tutx.compress import grouped
from tutx.compress.structure import (
    attention_projections,
    family,
    head_counts,
    head_dim,
    keep_cols,
    keep_rows,
    kv_groups,
    layers,
    layout,
    set_grouping,
)

__all__ = ["check_heads", "head_mask", "prune_heads_"]


def check_heads(model, heads) -> dict[int, list[int]]:
    """``heads`` as ``{layer: sorted head indices}``; ``TypeError``/``ValueError`` naming what is wrong."""
    if not isinstance(heads, dict):
        raise TypeError(f"heads: expected a dict {{layer: [head, ...]}}, got {type(heads).__name__}")
    counts = head_counts(model)
    out: dict[int, list[int]] = {}
    for layer, chosen in heads.items():
        check_int("heads: layer", layer, minimum=0)
        if layer >= len(counts):
            raise ValueError(f"heads: layer {layer} does not exist (the model has layers 0..{len(counts) - 1})")
        if isinstance(chosen, (str, bytes)) or not isinstance(chosen, Iterable):
            raise TypeError(f"heads[{layer}]: expected a list of head indices, got {type(chosen).__name__}")
        chosen = list(chosen)
        for h in chosen:
            check_int(f"heads[{layer}]: head", h, minimum=0)
            if h >= counts[layer]:
                raise ValueError(f"heads[{layer}]: head {h} does not exist (layer {layer} has heads "
                                 f"0..{counts[layer] - 1})")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"heads[{layer}]: head indices repeat in {chosen}")
        if len(chosen) == counts[layer]:
            raise ValueError(f"heads[{layer}]: would remove all {counts[layer]} heads of layer {layer}; "
                             "keep at least one (to drop a whole layer, use LayerDrop)")
        if chosen:
            out[layer] = sorted(chosen)
    return out


def _rows(head_list: list[int], dim: int, device) -> torch.Tensor:
    """Row indices of the given heads: ``[h * dim, ..., h * dim + dim - 1]`` for each head."""
    heads = torch.tensor(head_list, dtype=torch.long, device=device)
    return (heads[:, None] * dim + torch.arange(dim, device=device)).flatten()


def _prune_llama_block(block: nn.Module, remove: list[int], dim: int) -> bool:
    q, k, v, o = attention_projections(block)
    groups = kv_groups(block, dim)
    new_groups = [[h for h in g if h not in remove] for g in groups]
    kept_kv = [j for j, g in enumerate(new_groups) if g]
    kept_q = [h for g in new_groups for h in g]  # grouped order: each KV head's query heads together
    device = q.weight.device
    keep_rows(q, _rows(kept_q, dim, device))
    keep_cols(o, _rows(kept_q, dim, device))
    if len(kept_kv) < len(groups):  # a whole group went: its key/value head goes too
        keep_rows(k, _rows(kept_kv, dim, device))
        keep_rows(v, _rows(kept_kv, dim, device))
    return set_grouping(block, [len(new_groups[j]) for j in kept_kv])


def _prune_bert_block(block: nn.Module, remove: list[int], dim: int) -> None:
    q, k, v, o = attention_projections(block)
    n = q.out_features // dim
    kept = torch.tensor([h for h in range(n) if h not in remove], device=q.weight.device)
    rows = _rows(kept.tolist(), dim, q.weight.device)
    for lin in (q, k, v):
        keep_rows(lin, rows)
    keep_cols(o, rows)
    attn = block.attention.self
    attn.num_attention_heads = kept.numel()
    attn.all_head_size = kept.numel() * dim


def use_grouped_attention(model) -> None:
    """Switch ``model`` to the grouped attention (needed once a layer has unequal KV groups)."""
    grouped.register()
    if model.config._attn_implementation != grouped.GROUPED_ATTENTION:
        model.set_attn_implementation(grouped.GROUPED_ATTENTION)


@torch.no_grad()
def prune_heads_(model, heads: dict[int, Iterable[int]]):
    """Remove attention heads from ``model`` in place: ``heads = {layer: [head, ...]}``; returns ``model``.

    Head indices count the layer's current query heads (``0 .. n - 1``, after any earlier pruning).
    Llama with GQA: the removed query heads' rows of ``q_proj`` and columns of ``o_proj`` go; a
    key/value head goes (rows of ``k_proj``/``v_proj``) when all its query heads are gone. BERT: the
    heads' rows of query/key/value and columns of ``attention.output.dense``. Raises ``ValueError``
    for a layer or head that does not exist, repeated heads, or all heads of a layer.
    ``config.pruned_layout`` records the new per-layer shape (for ``save_pretrained``).
    """
    fam = family(model)
    plan = check_heads(model, heads)
    dim = head_dim(model)
    blocks = layers(model)
    for layer, remove in plan.items():
        if fam == "llama":
            _prune_llama_block(blocks[layer], remove, dim)
        else:
            _prune_bert_block(blocks[layer], remove, dim)
    if fam == "llama" and any(getattr(b.self_attn, "kv_head_index", None) is not None for b in blocks):
        use_grouped_attention(model)
    model.config.pruned_layout = layout(model)
    return model


@contextmanager
def head_mask(model, mask):
    """Multiply each head's output by ``mask[layer][head]`` inside the ``with`` block.

    ``mask`` is a ``[layers, heads]`` tensor (or one 1-D tensor per layer, for layers of different
    sizes); it gates the input of the output projection, head by head, so ``mask = 0`` is exactly
    the model without that head, and ``mask`` may require grad (the importance score). Hooks are
    removed on exit.
    """
    counts = head_counts(model)
    dim = head_dim(model)
    if len(mask) != len(counts) or any(len(m) != c for m, c in zip(mask, counts)):
        raise ValueError(f"mask: expected one value per head, {counts} per layer; got "
                         f"{[len(m) for m in mask]}")
    handles = []

    def gate(row):
        def hook(module, args):
            x = args[0]  # [B, S, n * dim]
            shape = x.shape
            gated = x.view(*shape[:-1], -1, dim) * row.to(x.dtype)[:, None]  # [B, S, n, dim]
            return (gated.view(shape), *args[1:])
        return hook

    try:
        for block, row in zip(layers(model), mask):
            handles.append(attention_projections(block)[3].register_forward_pre_hook(gate(row)))
        yield model
    finally:
        for h in handles:
            h.remove()
