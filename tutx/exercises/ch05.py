"""Checks for Chapter 5's exercises (hardware acceleration).

Each ``check_…(fn)`` runs your function on cases generated inside the check (not shown in the
notebook) and compares it with a reference solution kept private here. It prints ``✅ …`` when
all cases pass and raises an ``AssertionError`` that names the first failing case otherwise; a
stub that still returns ``None`` (or ``...``) prints "not solved yet".

The Triton exercise runs your kernel on the GPU when there is one, and otherwise through Triton's
interpreter: set ``os.environ["TRITON_INTERPRET"] = "1"`` *before* you define the kernel
(Triton reads it when ``@triton.jit`` runs), as the notebook's set-up cell does on a CPU.
"""
from __future__ import annotations

import functools

import torch

from tutx.exercises._check import check_fn, run_cases, run_tensor_cases

__all__ = ["check_fused_add_relu", "check_column_shard", "check_recombine_collective", "check_graph_bucket"]


# ---- 1. build it: a fused add + ReLU Triton kernel -------------------------------------------

@functools.cache
def _add_relu_kernel():
    """The reference kernel, defined on first use (so the interpreter setting in force then applies)."""
    from tutx.kernels._triton import tl, triton

    @triton.jit
    def add_relu_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # this program's slice
        mask = offs < n  # the last block runs past the end
        x = tl.load(x_ptr + offs, mask=mask)
        y = tl.load(y_ptr + offs, mask=mask)
        tl.store(out_ptr + offs, tl.maximum(x + y, 0.0), mask=mask)  # one read of each, one write

    return add_relu_kernel


def _solution_fused_add_relu(x, y):
    out = torch.empty_like(x)
    n = x.numel()
    _add_relu_kernel()[(-(-n // 128),)](x, y, out, n, BLOCK=128)  # ceil(n / BLOCK) programs
    return out


def _wrong_fused_add_relu(x, y):
    """Forgets the mask's role: processes whole blocks only, so the tail stays uninitialised (zero here)."""
    out = torch.zeros_like(x)
    n = (x.numel() // 128) * 128
    out.view(-1)[:n] = torch.relu(x.reshape(-1)[:n] + y.reshape(-1)[:n])
    return out


def _add_relu_cases():
    gen = torch.Generator().manual_seed(5)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # sizes that are and are not multiples of any block size a learner might pick
    return [(torch.randn(n, generator=gen).to(device), torch.randn(n, generator=gen).to(device))
            for n in (1, 128, 1000, 4097)]


def check_fused_add_relu(fn) -> None:
    """``fn(x, y) -> relu(x + y)`` for contiguous 1-D float32 tensors of any length, computed by your
    Triton kernel (one read of ``x`` and ``y``, one write)."""
    check_fn(fn, "check_fused_add_relu")
    run_tensor_cases("check_fused_add_relu", fn, lambda x, y: torch.relu(x + y), _add_relu_cases(),
                     rtol=1e-6, atol=1e-6)


# ---- 2. shard a linear layer by columns ------------------------------------------------------

def _solution_column_shard(weight, bias, world_size, rank):
    out = weight.shape[0] // world_size  # nn.Linear's weight is [out, in]: output columns are its rows
    return weight[rank * out:(rank + 1) * out], bias[rank * out:(rank + 1) * out]


def _wrong_column_shard(weight, bias, world_size, rank):
    """Splits along the input dimension (that is the row-parallel split) and keeps the whole bias."""
    inp = weight.shape[1] // world_size
    return weight[:, rank * inp:(rank + 1) * inp], bias


def _shard_cases():
    gen = torch.Generator().manual_seed(6)
    cases = []
    for out, inp, ws in ((8, 6, 2), (12, 12, 4), (6, 10, 3), (16, 4, 8)):
        w, b = torch.randn(out, inp, generator=gen), torch.randn(out, generator=gen)
        cases += [(w, b, ws, r) for r in (0, ws - 1)]
    return cases


def check_column_shard(fn) -> None:
    """``fn(weight, bias, world_size, rank) -> (weight_shard, bias_shard)``: rank ``rank``'s part of
    an ``nn.Linear`` (``weight`` ``[out, in]``, ``bias`` ``[out]``) split by output columns, so that
    ``x @ weight_shard.T + bias_shard`` is that rank's slice of the full output."""
    check_fn(fn, "check_column_shard")
    run_tensor_cases("check_column_shard", fn, _solution_column_shard, _shard_cases(), rtol=0, atol=0)


# ---- 3. which collective recombines a split layer --------------------------------------------

_COLLECTIVE = {"column": "all_gather", "row": "all_reduce", "column_then_row": "all_reduce"}


def _solution_recombine_collective(split):
    return _COLLECTIVE[split]


def _wrong_recombine_collective(split):
    """Gathers after every layer, as the seed did: right for a lone column split only."""
    return "all_gather"


def check_recombine_collective(fn) -> None:
    """``fn(split) -> "all_gather" | "all_reduce" | "reduce_scatter" | "broadcast"``: the collective
    that turns the ranks' outputs into the full output, for ``split`` = ``"column"`` (a lone
    column-parallel linear), ``"row"`` (a lone row-parallel linear whose input is already split)
    and ``"column_then_row"`` (Megatron's pair, as in an MLP)."""
    check_fn(fn, "check_recombine_collective")
    run_cases("check_recombine_collective", fn, _solution_recombine_collective,
              [(s,) for s in ("column", "row", "column_then_row")])


# ---- 4. CUDA graphs: which captured batch size serves a batch --------------------------------

def _solution_graph_bucket(batch_size, captured):
    fits = [c for c in sorted(captured) if c >= batch_size]
    return fits[0] if fits else None


def _wrong_graph_bucket(batch_size, captured):
    """Rounds down: the graph's static buffers would then be too small for the batch."""
    fits = [c for c in sorted(captured) if c <= batch_size]
    return fits[-1] if fits else None


def check_graph_bucket(fn) -> None:
    """``fn(batch_size, captured) -> int | None``: the captured batch size a decode step of
    ``batch_size`` sequences replays (the smallest captured size that holds it; the batch is padded
    up to it), or ``None`` when no captured graph is large enough (run eagerly)."""
    check_fn(fn, "check_graph_bucket")
    sizes = [(1, 2, 4, 8, 16, 32), (1, 2, 4, 8), (4, 16), (1,)]
    cases = [(b, s) for s in sizes for b in (1, 3, 8, 9, 17, 33)]
    run_cases("check_graph_bucket", fn, _solution_graph_bucket, cases)


CONTRACT = {
    "check_fused_add_relu": (_solution_fused_add_relu, _wrong_fused_add_relu),
    "check_column_shard": (_solution_column_shard, _wrong_column_shard),
    "check_recombine_collective": (_solution_recombine_collective, _wrong_recombine_collective),
    "check_graph_bucket": (_solution_graph_bucket, _wrong_graph_bucket),
}
