"""Fused SwiGLU, ``silu(gate) * up``, in Triton: forward and backward, as an autograd function.

The MLP of a Llama-style block computes ``down(silu(gate(x)) * up(x))``. In eager PyTorch the
activation alone is two kernels — ``silu`` writes a temporary, the multiply reads it back — so
the ``[tokens, hidden]`` intermediate crosses memory five times (read gate, write t, read t,
read up, write out). Fused, it crosses three times (read gate, read up, write out): ~5 FLOPs per
element against 3 elements moved is far below any GPU's ridge point, so bytes are the whole cost.

Backward (``s = sigmoid(g)``, ``silu(g) = g·s``, ``silu'(g) = s·(1 + g·(1 - s))``)::

    d_gate = dy · up · s · (1 + g · (1 - s))        d_up = dy · g · s

one more fused elementwise kernel: reads g, up, dy, writes both gradients. Math is in fp32.
"""
from __future__ import annotations

import torch

from tutx.kernels._dispatch import use_triton
from tutx.kernels._triton import tl, triton
from tutx.kernels.checks import check_float_dtypes, check_same_device

BLOCK = 1024  # elements per program: enough bytes in flight per SM, a few registers per thread


@triton.jit
def swiglu_fwd_kernel(g_ptr, u_ptr, y_ptr, n, BLOCK: tl.constexpr):
    """``y = silu(g) * u`` elementwise over flat contiguous tensors; grid ``(cdiv(n, BLOCK),)``."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = g * tl.sigmoid(g) * u
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def swiglu_bwd_kernel(g_ptr, u_ptr, dy_ptr, dg_ptr, du_ptr, n, BLOCK: tl.constexpr):
    """``dg = dy·u·silu'(g)``, ``du = dy·silu(g)``; grid ``(cdiv(n, BLOCK),)``."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK]
    mask = offs < n
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    s = tl.sigmoid(g)
    tl.store(dg_ptr + offs, (dy * u * s * (1.0 + g * (1.0 - s))).to(dg_ptr.dtype.element_ty), mask=mask)
    tl.store(du_ptr + offs, (dy * g * s).to(du_ptr.dtype.element_ty), mask=mask)


def _grid(n: int):
    return (triton.cdiv(n, BLOCK),)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up):
        y = torch.empty_like(gate)
        swiglu_fwd_kernel[_grid(gate.numel())](gate, up, y, gate.numel(), BLOCK=BLOCK)
        ctx.save_for_backward(gate, up)
        return y

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        dy = dy.contiguous()
        dg, du = torch.empty_like(gate), torch.empty_like(up)
        swiglu_bwd_kernel[_grid(gate.numel())](gate, up, dy, dg, du, gate.numel(), BLOCK=BLOCK)
        return dg, du


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` with one fused kernel (and one for the backward); same shape, contiguous inputs.

    Runs :func:`swiglu_ref` where Triton cannot run (CPU without ``TRITON_INTERPRET=1``, no Triton).
    """
    for name, t in (("gate", gate), ("up", up)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    check_float_dtypes(gate=gate, up=up)
    check_same_device(gate=gate, up=up)
    if gate.shape != up.shape:
        raise ValueError(f"up: expected the shape of gate {tuple(gate.shape)}, got {tuple(up.shape)}")
    if gate.numel() == 0:
        raise ValueError(f"gate: expected at least one element, got shape {tuple(gate.shape)}")
    for name, t in (("gate", gate), ("up", up)):
        if not t.is_contiguous():
            raise ValueError(f"{name}: the kernel reads a flat contiguous tensor; got strides {t.stride()} "
                             f"(call .contiguous())")
    if not use_triton(gate, up):
        return swiglu_ref(gate, up)
    return _SwiGLU.apply(gate, up)


def swiglu_ref(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``F.silu(gate) * up`` in fp32, cast back to the input dtype."""
    return (torch.nn.functional.silu(gate.float()) * up.float()).to(gate.dtype)


__all__ = ["swiglu", "swiglu_ref", "swiglu_fwd_kernel", "swiglu_bwd_kernel"]
