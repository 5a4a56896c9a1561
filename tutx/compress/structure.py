"""Where the heads and FFN neurons of a model live, for the two families tutx prunes.

Structured pruning cuts rows and columns out of named weight matrices, so it must know the
architecture. Two families are supported, found by their module names:

- ``"llama"``: Hugging Face Llama-style decoders (``LlamaForCausalLM``, ``LlamaModel`` and models
  with the same layout): ``self_attn.{q,k,v,o}_proj`` with grouped-query attention, and a SwiGLU
  ``mlp.{gate,up,down}_proj``;
- ``"bert"``: BERT encoders (``BertModel``, all-MiniLM-L6-v2): ``attention.self.{query,key,value}``,
  ``attention.output.dense``, ``intermediate.dense`` and ``output.dense``.

The *layout* of a model is what differs between its layers once pruned:
``{"attention": [...], "intermediate": [...]}`` with, per layer, the number of query heads served
by each key/value head (Llama, e.g. ``[4, 3]``) or the number of heads (BERT), and the FFN width.
It is stored in ``config.pruned_layout`` so that a pruned model can be saved and loaded again.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "attention_projections",
    "family",
    "ffn_projections",
    "head_counts",
    "head_dim",
    "keep_cols",
    "keep_rows",
    "kv_groups",
    "layers",
    "layout",
    "set_grouping",
]


def _base(model: nn.Module) -> nn.Module:
    """The bare transformer inside a task model (``model.model`` of a causal LM, ``.bert``, …)."""
    for name in ("model", "bert"):
        inner = getattr(model, name, None)
        if isinstance(inner, nn.Module) and (hasattr(inner, "layers") or hasattr(inner, "encoder")):
            return inner
    return model


def family(model) -> str:
    """``"llama"`` or ``"bert"``; ``TypeError`` for any other model."""
    if isinstance(model, nn.Module):
        base = _base(model)
        blocks = getattr(base, "layers", None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) and hasattr(blocks[0], "self_attn") \
                and hasattr(blocks[0].self_attn, "q_proj"):
            return "llama"
        encoder = getattr(base, "encoder", None)
        blocks = getattr(encoder, "layer", None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) and hasattr(blocks[0], "attention") \
                and hasattr(blocks[0].attention, "self"):
            return "bert"
    raise TypeError(f"model: expected a Llama-style decoder or a BERT encoder (Hugging Face), "
                    f"got {type(model).__name__}")


def layers(model) -> nn.ModuleList:
    """The transformer blocks, in order."""
    base = _base(model)
    return base.layers if family(model) == "llama" else base.encoder.layer


def head_dim(model) -> int:
    """Size of one attention head (unchanged by pruning)."""
    block = layers(model)[0]
    if family(model) == "llama":
        return block.self_attn.head_dim
    return block.attention.self.attention_head_size


def attention_projections(block: nn.Module) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
    """``(q, k, v, o)`` linear layers of one block: heads are row blocks of q/k/v, column blocks of o."""
    if hasattr(block, "self_attn"):
        a = block.self_attn
        return a.q_proj, a.k_proj, a.v_proj, a.o_proj
    s = block.attention.self
    return s.query, s.key, s.value, block.attention.output.dense


def ffn_projections(block: nn.Module) -> tuple[list[nn.Linear], nn.Linear]:
    """``(inputs, output)`` of one block's FFN: neurons are rows of each input, columns of the output."""
    if hasattr(block, "mlp"):
        return [block.mlp.gate_proj, block.mlp.up_proj], block.mlp.down_proj
    return [block.intermediate.dense], block.output.dense


def kv_groups(block: nn.Module, dim: int) -> list[list[int]]:
    """Query-head indices served by each key/value head of a Llama block, e.g. ``[[0, 1, 2], [3]]``."""
    attn = block.self_attn
    n_q = attn.q_proj.out_features // dim
    n_kv = attn.k_proj.out_features // dim
    index = getattr(attn, "kv_head_index", None)
    if index is None:  # the standard layout: n_q // n_kv consecutive query heads per key/value head
        index = [j for j in range(n_kv) for _ in range(n_q // n_kv)]
    groups: list[list[int]] = [[] for _ in range(n_kv)]
    for q, kv in enumerate(index):
        groups[kv].append(q)
    return groups


def head_counts(model) -> list[int]:
    """Number of (query) heads in each layer."""
    dim = head_dim(model)
    return [attention_projections(b)[0].out_features // dim for b in layers(model)]


def layout(model) -> dict:
    """The per-layer shape of ``model`` (see the module docstring)."""
    dim, fam = head_dim(model), family(model)
    attention = [[len(g) for g in kv_groups(b, dim)] if fam == "llama"
                 else attention_projections(b)[0].out_features // dim for b in layers(model)]
    intermediate = [ffn_projections(b)[1].in_features for b in layers(model)]
    return {"attention": attention, "intermediate": intermediate}


def set_grouping(block: nn.Module, counts: list[int]) -> bool:
    """Tell a Llama attention module how its query heads share key/value heads after pruning.

    ``counts[j]`` query heads (consecutive) use key/value head ``j``. Equal counts are the standard
    GQA layout (``num_key_value_groups``); unequal ones need the grouped attention function, which
    reads ``kv_head_index`` (the KV head of each query head, a tuple of ints). Returns whether the
    layer is non-uniform.
    """
    attn = block.self_attn
    attn.__dict__.pop("kv_index_tensor", None)
    if len(set(counts)) == 1:
        attn.__dict__.pop("kv_head_index", None)
        attn.num_key_value_groups = counts[0]
        return False
    attn.num_key_value_groups = 1
    attn.kv_head_index = tuple(j for j, c in enumerate(counts) for _ in range(c))  # plain ints: no meta tensor
    return True


def keep_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    """Keep only output features ``rows`` of ``linear`` (in place)."""
    linear.weight = nn.Parameter(linear.weight.data.index_select(0, rows).clone(),
                                 requires_grad=linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, rows).clone(),
                                   requires_grad=linear.bias.requires_grad)
    linear.out_features = rows.numel()


def keep_cols(linear: nn.Linear, cols: torch.Tensor) -> None:
    """Keep only input features ``cols`` of ``linear`` (in place)."""
    linear.weight = nn.Parameter(linear.weight.data.index_select(1, cols).clone(),
                                 requires_grad=linear.weight.requires_grad)
    linear.in_features = cols.numel()
