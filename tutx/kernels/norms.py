"""Fused RMSNorm and LayerNorm in Triton, forward and backward, as autograd functions.

Both normalise each row of ``x [M, N]`` over its N features, which PyTorch eager does in several
kernels (mean, variance, subtract, scale, shift), each reading the row again. Here one program
owns whole rows and does everything in registers: the forward reads ``x`` once and writes ``y``
once (plus one fp32 ``mean`` and ``rstd`` per row, saved for the backward)::

    LayerNorm: y = (x - mean) * rstd * w + b      rstd = 1 / sqrt(var(x) + eps)
    RMSNorm:   y = x * rstd * w                   rstd = 1 / sqrt(mean(x²) + eps)

**Backward.** With ``x̂ = (x - mean) · rstd`` and ``g = dy · w``, per row::

    LayerNorm: dx = rstd · (g - (x̂ · mean(x̂ g) + mean(g)))
    RMSNorm:   dx = rstd · (g - x̂ · mean(x̂ g))

``dx`` is per row, but ``dw = Σ_rows dy · x̂`` (and ``db = Σ_rows dy``) sums over *all* rows. If
every row-program added into one ``[N]`` buffer, thousands of programs would fight over the same
addresses (atomics serialise). Instead the backward runs in **two steps**: each of P programs
(a few per SM) walks its own contiguous slice of rows and accumulates its own partial ``dw`` in
registers, written once to row p of an fp32 ``[P, N]`` buffer; a second, tiny kernel sums that
buffer over P, column block by column block. No atomics, deterministic, and the partial buffer is
small (P ≪ M). (Triton's layer-norm tutorial instead uses locks over groups of partial buffers.)

Rows must fit one block: up to 64 KB of the input dtype per row (N ≤ 16384 in fp32, 32768 in
fp16/bf16) — every transformer width. Math is in fp32.
"""
from __future__ import annotations

import torch

from tutx._validate import check_positive
from tutx.kernels._dispatch import use_triton
from tutx.kernels._triton import tl, triton
from tutx.kernels.checks import check_float_dtypes, check_same_device

MAX_ROW_BYTES = 65536  # one row in one block (the Triton layer-norm tutorial's limit)


@triton.jit
def norm_fwd_kernel(x_ptr, y_ptr, w_ptr, b_ptr, mean_ptr, rstd_ptr, stride_x, stride_y, N, eps,
                    RMS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """One row per program; grid ``(M,)``. ``RMS``: RMSNorm (no mean), else LayerNorm."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)  # [BLOCK]
    mask = cols < N
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)  # [BLOCK]
    if RMS:  # no mean: the wrapper's zero-filled mean buffer stays 0 for the backward
        xc = x
    else:
        mean = tl.sum(x, axis=0) / N
        xc = tl.where(mask, x - mean, 0.0)  # the masked tail must not add (0 - mean)² to the variance
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / N + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = xc * rstd * w
    if HAS_BIAS:
        y += tl.load(b_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * stride_y + cols, y.to(y_ptr.dtype.element_ty), mask=mask)
    if not RMS:
        tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def norm_bwd_kernel(x_ptr, dy_ptr, dx_ptr, w_ptr, mean_ptr, rstd_ptr, dw_part_ptr, db_part_ptr,
                    stride_x, stride_dy, stride_dx, M, N, ROWS_PER_PROGRAM,
                    RMS: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """Step 1: ``dx`` for rows ``[p·R, (p+1)·R)`` and this program's partial ``dw``/``db`` → row p of ``[P, N]``."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)  # [BLOCK]
    mask = cols < N
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], tl.float32)
    db = tl.zeros([BLOCK], tl.float32)
    first = pid * ROWS_PER_PROGRAM
    for i in range(0, ROWS_PER_PROGRAM):
        row = first + i
        if row < M:
            row64 = row.to(tl.int64)
            x = tl.load(x_ptr + row64 * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + row64 * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(mean_ptr + row)
            rstd = tl.load(rstd_ptr + row)
            xhat = tl.where(mask, (x - mean) * rstd, 0.0)
            g = dy * w
            c1 = tl.sum(xhat * g, axis=0) / N
            if RMS:
                dx = (g - xhat * c1) * rstd
            else:
                c2 = tl.sum(g, axis=0) / N
                dx = (g - (xhat * c1 + c2)) * rstd
            tl.store(dx_ptr + row64 * stride_dx + cols, dx.to(dx_ptr.dtype.element_ty), mask=mask)
            dw += dy * xhat
            if HAS_BIAS:
                db += dy
    tl.store(dw_part_ptr + pid * N + cols, dw, mask=mask)
    if HAS_BIAS:
        tl.store(db_part_ptr + pid * N + cols, db, mask=mask)


@triton.jit
def column_sum_kernel(part_ptr, out_ptr, P, N, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Step 2: ``out[n] = Σ_p part[p, n]`` for a block of columns; grid ``(cdiv(N, BLOCK_N),)``."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    acc = tl.zeros([BLOCK_P, BLOCK_N], tl.float32)
    for p0 in range(0, P, BLOCK_P):
        rows = p0 + tl.arange(0, BLOCK_P)  # [BP]
        mask = (rows[:, None] < P) & (cols[None, :] < N)
        acc += tl.load(part_ptr + rows[:, None] * N + cols[None, :], mask=mask, other=0.0)
    tl.store(out_ptr + cols, tl.sum(acc, axis=0).to(out_ptr.dtype.element_ty), mask=cols < N)


def _block(x: torch.Tensor) -> tuple[int, int]:
    """Block size and warps for rows of ``x`` (checked to fit one block)."""
    n = x.shape[-1]
    block = triton.next_power_of_2(n)
    return block, min(max(block * x.element_size() // 256, 1), 8)  # the Triton tutorial's heuristic


def _num_programs(m: int, device: torch.device) -> int:
    """Programs of the backward's step 1: a few per SM on a GPU (each streams M/P rows), few elsewhere."""
    if device.type == "cuda":
        return min(m, 4 * torch.cuda.get_device_properties(device).multi_processor_count)
    return min(m, 4)


def _forward(x2, weight, bias, eps, rms):
    m, n = x2.shape
    block, warps = _block(x2)
    y = torch.empty_like(x2, memory_format=torch.contiguous_format)  # [M, N]
    mean = (torch.zeros if rms else torch.empty)(m, device=x2.device, dtype=torch.float32)  # [M]
    rstd = torch.empty(m, device=x2.device, dtype=torch.float32)  # [M]
    norm_fwd_kernel[(m,)](x2, y, weight, bias if bias is not None else weight, mean, rstd, x2.stride(0),
                          y.stride(0), n, eps, RMS=rms, HAS_BIAS=bias is not None, BLOCK=block, num_warps=warps)
    return y, mean, rstd


def _column_sum(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    p, n = part.shape
    out = torch.empty(n, device=part.device, dtype=dtype)
    block_n = min(triton.next_power_of_2(n), 128)
    column_sum_kernel[(triton.cdiv(n, block_n),)](part, out, p, n, BLOCK_P=32, BLOCK_N=block_n)
    return out


def _backward(dy2, x2, weight, has_bias, mean, rstd, rms):
    m, n = x2.shape
    block, warps = _block(x2)
    dy2 = dy2 if dy2.stride(-1) == 1 else dy2.contiguous()
    dx = torch.empty_like(x2, memory_format=torch.contiguous_format)  # [M, N]
    p = _num_programs(m, x2.device)
    dw_part = torch.empty((p, n), device=x2.device, dtype=torch.float32)  # [P, N]: one partial sum per program
    db_part = torch.empty((p, n), device=x2.device, dtype=torch.float32) if has_bias else dw_part
    norm_bwd_kernel[(p,)](x2, dy2, dx, weight, mean, rstd, dw_part, db_part, x2.stride(0), dy2.stride(0),
                          dx.stride(0), m, n, triton.cdiv(m, p), RMS=rms, HAS_BIAS=has_bias, BLOCK=block,
                          num_warps=warps)
    dw = _column_sum(dw_part, weight.dtype)
    db = _column_sum(db_part, weight.dtype) if has_bias else None
    return dx, dw, db


class _Norm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2, weight, bias, eps, rms):
        y, mean, rstd = _forward(x2, weight, bias, eps, rms)
        ctx.save_for_backward(x2, weight, mean, rstd)
        ctx.rms, ctx.has_bias = rms, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x2, weight, mean, rstd = ctx.saved_tensors
        dx, dw, db = _backward(dy, x2, weight, ctx.has_bias, mean, rstd, ctx.rms)
        return dx, dw, db, None, None


def _check(x, weight, bias, eps):
    for name, t in (("x", x), ("weight", weight)) + ((("bias", bias),) if bias is not None else ()):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if x.ndim == 0 or x.numel() == 0:
        raise ValueError(f"x: expected at least one dimension and one element, got shape {tuple(x.shape)}")
    tensors = {"x": x, "weight": weight, **({"bias": bias} if bias is not None else {})}
    check_float_dtypes(**tensors)
    check_same_device(**tensors)
    n = x.shape[-1]
    for name, t in list(tensors.items())[1:]:
        if tuple(t.shape) != (n,):
            raise ValueError(f"{name}: expected shape ({n},) (the last dim of x), got {tuple(t.shape)}")
        if t.stride(0) != 1:
            raise ValueError(f"{name}: expected a contiguous vector, got stride {t.stride()}")
    if x.stride(-1) != 1 and n > 1:
        raise ValueError(f"x: the kernels read rows with unit stride; got strides {x.stride()} (call .contiguous())")
    if n * x.element_size() > MAX_ROW_BYTES:
        raise ValueError(f"x: rows of {n} {x.dtype} features ({n * x.element_size()} bytes) exceed the "
                         f"{MAX_ROW_BYTES}-byte row these kernels hold in one block")
    check_positive("eps", eps)


def _run(x, weight, bias, eps, rms):
    x2 = x if x.ndim == 2 else x.reshape(-1, x.shape[-1])  # [M, N]
    return _Norm.apply(x2, weight, bias, float(eps), rms).reshape(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm over the last dim, ``x * rsqrt(mean(x²) + eps) * weight``; differentiable in x and weight.

    x ``[..., N]`` (unit stride along N), weight ``[N]``, same float dtype. Runs :func:`rms_norm_ref`
    where Triton cannot run.
    """
    _check(x, weight, None, eps)
    if not use_triton(x, weight):
        return rms_norm_ref(x, weight, eps)
    return _run(x, weight, None, eps, True)


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMSNorm in plain PyTorch, in fp32, cast back to ``x.dtype``."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               eps: float = 1e-5) -> torch.Tensor:
    """LayerNorm over the last dim, ``(x - mean) * rstd * weight + bias``; differentiable in x, weight, bias.

    x ``[..., N]`` (unit stride along N), weight and bias ``[N]`` (bias optional), same float dtype.
    Runs :func:`layer_norm_ref` where Triton cannot run.
    """
    _check(x, weight, bias, eps)
    if not use_triton(*(t for t in (x, weight, bias) if t is not None)):
        return layer_norm_ref(x, weight, bias, eps)
    return _run(x, weight, bias, eps, False)


def layer_norm_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   eps: float = 1e-5) -> torch.Tensor:
    """``torch.nn.functional.layer_norm`` in fp32, cast back to ``x.dtype``."""
    b = None if bias is None else bias.float()
    return torch.nn.functional.layer_norm(x.float(), (x.shape[-1],), weight.float(), b, eps).to(x.dtype)


__all__ = ["rms_norm", "rms_norm_ref", "layer_norm", "layer_norm_ref", "norm_fwd_kernel", "norm_bwd_kernel",
           "column_sum_kernel", "MAX_ROW_BYTES"]
