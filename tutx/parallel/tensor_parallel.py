"""Tensor parallelism for Llama-style Hugging Face models, ours and PyTorch's DTensor (Chapter 5).

``tensor_parallel_(model)`` shards every decoder layer of a ``LlamaForCausalLM`` (the tiny LM of
``tutx.models.load_tiny``, Llama, Mistral, Qwen2 ...) over the ranks of a process group the
Megatron way: q/k/v and gate/up column-parallel, o and down row-parallel, so each attention block
and each MLP ends in one all-reduce. Attention is split by heads (KV heads replicated when fewer than
ranks). Embeddings, norms and the LM head stay replicated. HF's own attention forward then runs
unchanged on the local heads: it reshapes with ``-1`` heads, and the config and each attention
module are told the local head counts.

``dtensor_parallel_(model)`` does the same split with PyTorch's ``parallelize_module``
(``ColwiseParallel`` / ``RowwiseParallel`` on a ``DeviceMesh``) -- the reference we compare with.

Run either under ``torchrun`` (gloo on CPU, NCCL on GPUs); :func:`~tutx.parallel.launch.run_torchrun`
launches such a job from Python.
"""
from __future__ import annotations

import torch.distributed as dist
from torch import nn

from tutx._validate import check_int
from tutx.parallel.tp_layers import (
    ColumnParallelLinear,
    RowParallelLinear,
    group_rank_world,
)
from tutx.parallel.tp_plan import TPPlan, plan_tensor_parallel

__all__ = ["tensor_parallel_", "shard_", "allgather_parallel_", "dtensor_parallel_", "decoder_layers"]

_LINEARS = (("self_attn", ("q_proj", "k_proj", "v_proj", "o_proj")), ("mlp", ("gate_proj", "up_proj", "down_proj")))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a Llama-style model (``model.model.layers``), checked to hold plain
    ``nn.Linear`` q/k/v/o and gate/up/down projections; ``TypeError``/``ValueError`` otherwise."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    layers = getattr(getattr(model, "model", model), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "config"):
        raise TypeError(f"model: expected a Llama-style HF model (model.model.layers, model.config), "
                        f"got {type(model).__name__}")
    for i, layer in enumerate(layers):
        for block, names in _LINEARS:
            for name in names:
                linear = getattr(getattr(layer, block, None), name, None)
                if isinstance(linear, (ColumnParallelLinear, RowParallelLinear)) or _is_dtensor(linear):
                    raise ValueError("model: already tensor-parallel")
                if type(linear) is not nn.Linear:
                    raise TypeError(f"model: layers[{i}].{block}.{name} should be a torch.nn.Linear, "
                                    f"got {type(linear).__name__}")
    return layers


def _is_dtensor(linear) -> bool:
    weight = getattr(linear, "weight", None)
    return weight is not None and type(weight).__name__ == "DTensor"


def _use_local_heads_(model: nn.Module, plan: TPPlan) -> None:
    """Tell the config and each attention module how many heads this rank holds."""
    config = model.config
    config.head_dim = plan.head_dim  # before the head counts change: hidden // heads would move
    config.num_attention_heads = plan.local_heads
    config.num_key_value_heads = plan.local_kv_heads
    config.intermediate_size = plan.local_intermediate_size
    for layer in _layers(model):
        attn = layer.self_attn
        attn.num_key_value_groups = plan.local_heads // plan.local_kv_heads
        for name, value in (("num_heads", plan.local_heads), ("num_key_value_heads", plan.local_kv_heads)):
            if hasattr(attn, name):  # older / other HF attention classes keep their own counts
                setattr(attn, name, value)
        if hasattr(layer.mlp, "intermediate_size"):
            layer.mlp.intermediate_size = plan.local_intermediate_size
    model.tutx_tp_plan = plan


def _layers(model: nn.Module) -> nn.ModuleList:  # after decoder_layers() checked it
    return getattr(model, "model", model).layers


def shard_(model: nn.Module, rank: int, world_size: int, group=None) -> nn.Module:
    """Keep rank ``rank``'s shard of every decoder layer of ``model``; the row-parallel layers
    all-reduce over ``group``. :func:`tensor_parallel_` calls this with the group's rank and size;
    called directly (e.g. ``world_size=4`` in a one-process group) it gives one rank's partial sums,
    which is how the tests check the GQA split without four processes."""
    layers = decoder_layers(model)
    plan = plan_tensor_parallel(model.config, world_size)
    check_int("rank", rank, minimum=0, maximum=world_size - 1)
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        attn.q_proj = ColumnParallelLinear.from_linear(attn.q_proj, group, rows=plan.q_rows(rank))
        attn.k_proj = ColumnParallelLinear.from_linear(attn.k_proj, group, rows=plan.kv_rows(rank))
        attn.v_proj = ColumnParallelLinear.from_linear(attn.v_proj, group, rows=plan.kv_rows(rank))
        attn.o_proj = RowParallelLinear.from_linear(attn.o_proj, group, cols=plan.q_rows(rank))
        mlp.gate_proj = ColumnParallelLinear.from_linear(mlp.gate_proj, group, rows=plan.mlp_rows(rank))
        mlp.up_proj = ColumnParallelLinear.from_linear(mlp.up_proj, group, rows=plan.mlp_rows(rank))
        mlp.down_proj = RowParallelLinear.from_linear(mlp.down_proj, group, cols=plan.mlp_rows(rank))
    _use_local_heads_(model, plan)
    return model


def tensor_parallel_(model: nn.Module, group=None) -> nn.Module:
    """Shard ``model`` over the ranks of ``group`` (default: the world), in place; returns ``model``.

    Every rank must call it on the same model (same weights). Afterwards each rank holds 1/N of the
    q/o/gate/up/down weights and of k/v (a copy of its KV head when N exceeds the KV heads), the
    forward pass does one all-reduce per attention block and per MLP, and ``model(ids).logits`` is
    the unsharded model's on every rank (up to float summation order). ``model.tutx_tp_plan`` is the
    :class:`~tutx.parallel.tp_plan.TPPlan`. ``RuntimeError`` without an initialised process group.
    """
    decoder_layers(model)
    rank, world_size = group_rank_world(group)
    device = next(model.parameters()).device
    if dist.get_backend(group) == "nccl" and device.type != "cuda":
        raise ValueError(f"model: on {device}, but the group's backend is NCCL; move it to its GPU first "
                         "(cuda:LOCAL_RANK)")
    return shard_(model, rank, world_size, group)


def allgather_parallel_(model: nn.Module, group=None) -> nn.Module:
    """The seed's design, kept to measure against: every one of the seven linear layers of each
    decoder layer is column-split and all-gathers its output right away, so every rank holds every
    activation (no local head counts needed) and a layer costs seven collectives instead of two.
    Forward only (inference). In place; returns ``model``."""
    layers = decoder_layers(model)
    group_rank_world(group)
    for layer in layers:
        for block, names in _LINEARS:
            module = getattr(layer, block)
            for name in names:
                setattr(module, name, ColumnParallelLinear.from_linear(getattr(module, name), group, gather_output=True))
    return model


def dtensor_parallel_(model: nn.Module, mesh=None) -> nn.Module:
    """The same Megatron split done by PyTorch: ``parallelize_module`` with ``ColwiseParallel`` on
    q/k/v/gate/up and ``RowwiseParallel`` on o/down, over ``mesh`` (default: a 1-D ``DeviceMesh`` of
    the world on the model's device type). In place; returns ``model``.

    ``ColwiseParallel`` splits k/v evenly, so here the world size must divide the KV heads.
    """
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    layers = decoder_layers(model)
    _, world_size = group_rank_world(None)
    if mesh is None:
        device_type = next(model.parameters()).device.type
        mesh = init_device_mesh(device_type, (world_size,))
    elif not isinstance(mesh, DeviceMesh) or mesh.ndim != 1:
        raise TypeError(f"mesh: expected a 1-D torch.distributed.DeviceMesh, got {mesh!r}")
    plan = plan_tensor_parallel(model.config, mesh.size())
    if plan.kv_replicated:
        raise ValueError(f"world_size: DTensor's ColwiseParallel needs it to divide num_key_value_heads "
                         f"({plan.num_kv_heads}), got {mesh.size()}")
    layer_plan = {f"{block}.{name}": (RowwiseParallel() if name in ("o_proj", "down_proj") else ColwiseParallel())
                  for block, names in _LINEARS for name in names}
    for layer in layers:
        parallelize_module(layer, mesh, layer_plan)
    _use_local_heads_(model, plan)
    return model
