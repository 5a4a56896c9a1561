"""Megatron-style tensor-parallel linear layers on ``torch.distributed`` (Chapter 5).

A linear layer ``y = x W^T + b`` (``W`` is ``[out, in]``) can be split over N ranks two ways:

- **by output features** (:class:`ColumnParallelLinear`): rank r holds rows ``W[r*out/N:(r+1)*out/N]``
  and computes its slice of ``y`` from the full ``x`` -- no communication, the output stays split;
- **by input features** (:class:`RowParallelLinear`): rank r holds columns ``W[:, r*in/N:(r+1)*in/N]``,
  takes its slice of ``x`` and computes a *partial sum* of the full ``y``; one all-reduce (sum) over
  the ranks completes it.

Megatron-LM pairs them: column-parallel first (q/k/v, gate/up), row-parallel second (o, down), so
the split output of the first is exactly the split input of the second and a whole attention block
or MLP costs one all-reduce in the forward pass. The two autograd functions below are Megatron's
``f`` and ``g``: identity forward / all-reduce backward at the entry of a column layer, all-reduce
forward / identity backward at the exit of a row layer, so training through the shards is correct too.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["ColumnParallelLinear", "RowParallelLinear", "group_rank_world"]


class _CopyToGroup(torch.autograd.Function):
    """Megatron's ``f``: the input is replicated; its gradient is the sum of every rank's part."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromGroup(torch.autograd.Function):
    """Megatron's ``g``: sum the partial outputs of every rank; the gradient passes through."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.contiguous().clone()  # a new tensor: autograd's saved input stays untouched
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _shard_bounds(size: int, rank: int, world_size: int, what: str) -> tuple[int, int]:
    if size % world_size:
        raise ValueError(f"world_size: {world_size} does not divide {what} ({size})")
    part = size // world_size
    return rank * part, (rank + 1) * part


def group_rank_world(group) -> tuple[int, int]:
    """``(rank, world_size)`` of this process in ``group`` (``None``: the world); ``RuntimeError``
    when no process group is initialised."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("group: torch.distributed is not initialised; call "
                           "torch.distributed.init_process_group() first (torchrun sets up the environment)")
    if group is not None and not isinstance(group, dist.ProcessGroup):
        raise TypeError(f"group: expected None (the world) or a torch.distributed.ProcessGroup, got {group!r}")
    return dist.get_rank(group), dist.get_world_size(group)


class ColumnParallelLinear(nn.Module):
    """The rows ``rows`` of a linear layer's weight (a slice of its output features) on this rank.

    ``forward(x)`` takes the full input ``[..., in]`` and returns this rank's output slice
    ``[..., len(rows)]``; with ``gather_output=True`` it all-gathers the slices into the full output
    (the seed's design: one collective after *every* layer, which the row-parallel pairing avoids;
    forward only, for inference, counted in ``allgather_calls`` / ``allgather_bytes``).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group=None, *, gather_output: bool = False,
                 out_features: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)  # [out/N, in]
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self.group = group
        self.gather_output = gather_output
        self.out_features = out_features if out_features is not None else weight.shape[0]  # of the full layer
        self.allgather_calls = 0
        self.allgather_bytes = 0

    @classmethod
    def from_linear(cls, linear: nn.Linear, group=None, *, rows: tuple[int, int] | torch.Tensor | None = None,
                    gather_output: bool = False) -> ColumnParallelLinear:
        """Shard ``linear`` by output features for this rank of ``group`` (default: the world).

        ``rows``: which output rows this rank keeps -- ``(start, stop)`` or an index tensor; default
        the rank's contiguous 1/N block (``world_size`` must divide ``out_features``). Attention with
        fewer KV heads than ranks passes the rows of the KV head its query heads need (replicated).
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        if rows is None:
            rank, world = group_rank_world(group)
            rows = _shard_bounds(linear.out_features, rank, world, "out_features")
        index = torch.arange(*rows) if isinstance(rows, tuple) else rows
        index = index.to(linear.weight.device)
        bias = None if linear.bias is None else linear.bias[index]
        layer = cls(linear.weight[index], bias, group, gather_output=gather_output, out_features=linear.out_features)
        return layer.requires_grad_(linear.weight.requires_grad)  # slicing under no_grad would drop the flag

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            x = _CopyToGroup.apply(x, self.group)
        y = nn.functional.linear(x, self.weight, self.bias)  # [..., out/N]
        if not self.gather_output:
            return y
        parts = [torch.empty_like(y) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(parts, y.contiguous(), group=self.group)
        out = torch.cat(parts, dim=-1)  # [..., out]
        self.allgather_calls += 1
        self.allgather_bytes += out.numel() * out.element_size()
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.weight.shape[1]}, local_out_features={self.weight.shape[0]}, "
                f"out_features={self.out_features}, bias={self.bias is not None}, gather_output={self.gather_output}")


class RowParallelLinear(nn.Module):
    """A slice of a linear layer's input features on this rank; an all-reduce sums the partial outputs.

    ``forward(x)`` takes this rank's input slice ``[..., in/N]`` (the output of a
    :class:`ColumnParallelLinear`) and returns the full output ``[..., out]``, identical on every rank.
    The bias is added once, after the sum. ``allreduce_calls`` / ``allreduce_bytes`` count the
    communication (reset them to measure one pass).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, group=None, *, in_features: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone(), requires_grad=weight.requires_grad)  # [out, in/N]
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=bias.requires_grad)
        self.group = group
        self.in_features = in_features if in_features is not None else weight.shape[1]  # of the full layer
        self.allreduce_calls = 0
        self.allreduce_bytes = 0

    @classmethod
    def from_linear(cls, linear: nn.Linear, group=None, *, cols: tuple[int, int] | None = None) -> RowParallelLinear:
        """Shard ``linear`` by input features for this rank of ``group``: ``cols = (start, stop)``,
        default the rank's contiguous 1/N block (``world_size`` must divide ``in_features``)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        if cols is None:
            rank, world = group_rank_world(group)
            cols = _shard_bounds(linear.in_features, rank, world, "in_features")
        start, stop = cols
        layer = cls(linear.weight[:, start:stop], linear.bias, group, in_features=linear.in_features)
        return layer.requires_grad_(linear.weight.requires_grad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.linear(x, self.weight)  # [..., out], a partial sum
        self.allreduce_calls += 1
        self.allreduce_bytes += y.numel() * y.element_size()
        if torch.is_grad_enabled() and y.requires_grad:
            y = _ReduceFromGroup.apply(y, self.group)  # the one collective of the block
        else:
            dist.all_reduce(y, group=self.group)  # inference: in place
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (f"local_in_features={self.weight.shape[1]}, in_features={self.in_features}, "
                f"out_features={self.weight.shape[0]}, bias={self.bias is not None}")
