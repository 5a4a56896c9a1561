"""INT4 group-wise weight-only matmul in Triton, with the unpack and dequantize inside the kernel.

The weight ``[N, K]`` is stored as uint8 ``[N, K // 2]``: byte ``j`` of a row holds column ``2j`` in
its low nibble and column ``2j + 1`` in its high nibble (``tutx.quant.pack_int4``). Each group of
``group_size`` consecutive columns of a row has its own fp scale and integer zero point:
``w[n, k] = (q[n, k] - zeros[n, g]) * scales[n, g]`` with ``g = k // group_size``. A quarter of the
bytes of bf16 means up to 4x less time at decode, where reading weights is all the work.

Inside the kernel one K-step is one group, so scale and zero point are constant across the
step and can be applied *after* the dot:

    sum_k x[k] (q[k] - z) s  =  s * (sum_k x[k] q[k]  -  z * sum_k x[k])

The codes ``q`` (0..15) are exact in fp16/bf16, so the tensor cores run on them directly; the
zero point costs one multiply per output instead of one subtract per weight. Rather than
interleave the two nibbles back into columns, the kernel splits ``x`` into its even and odd
columns and does two dots: ``x_even @ q_low + x_odd @ q_high``.

Same two launch shapes as the INT8 kernel (see ``quant_matmul.py``): split-K with fp32 atomics
for M <= 16, output tiles for larger M.
"""
from __future__ import annotations

import torch

from tutx._validate import check_choice, check_int
from tutx.kernels._dispatch import interpreter_enabled, use_triton
from tutx.kernels._triton import tl, triton
from tutx.kernels.checks import FLOAT_DTYPES, check_matrix, check_same_device
from tutx.kernels.quant_gemv import gemv_supported, int4_gemv
from tutx.kernels.quant_matmul import (
    config,
    launch_weight_only,
    store_tile,
    tile_ids,
)

GROUP_SIZES = (32, 64, 128)


@triton.jit
def int4_weight_only_matmul_kernel(
        x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, M, N, K, M_BUCKET,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_sn, stride_sg, stride_zn, stride_zg,
        stride_om, stride_on,
        GROUP_SIZE: tl.constexpr, DOT_F32: tl.constexpr, ATOMIC: tl.constexpr, GROUP_M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr):
    HALF: tl.constexpr = GROUP_SIZE // 2  # packed bytes per row per group
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_j = tl.arange(0, HALF)  # [HALF] byte index within a group
    mask_m, mask_n = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(tl.program_id(1), K // GROUP_SIZE, SPLIT_K):  # this program's share of the groups
        x_even_ptrs = x_ptr + offs_m[:, None] * stride_xm + (g * GROUP_SIZE + 2 * offs_j)[None, :] * stride_xk
        x_lo = tl.load(x_even_ptrs, mask=mask_m[:, None], other=0.0)  # [BM, HALF] columns 2j
        x_hi = tl.load(x_even_ptrs + stride_xk, mask=mask_m[:, None], other=0.0)  # [BM, HALF] columns 2j+1
        packed = tl.load(w_ptr + offs_n[None, :] * stride_wn + (g * HALF + offs_j)[:, None] * stride_wk,
                         mask=mask_n[None, :], other=0)  # [HALF, BN] uint8
        q_lo = (packed & 0xF).to(tl.float32)  # [HALF, BN] codes 0..15, exact in any float type
        q_hi = (packed >> 4).to(tl.float32)  # [HALF, BN]
        if DOT_F32:
            x_lo = x_lo.to(tl.float32)
            x_hi = x_hi.to(tl.float32)
            part = tl.dot(x_lo, q_lo, input_precision="ieee")
            part = tl.dot(x_hi, q_hi, part, input_precision="ieee")  # [BM, BN]
        else:
            part = tl.dot(x_lo, q_lo.to(x_lo.dtype))
            part = tl.dot(x_hi, q_hi.to(x_hi.dtype), part)  # [BM, BN]
        x_sum = tl.sum(x_lo.to(tl.float32), axis=1) + tl.sum(x_hi.to(tl.float32), axis=1)  # [BM]
        s = tl.load(s_ptr + offs_n * stride_sn + g * stride_sg, mask=mask_n, other=0.0).to(tl.float32)  # [BN]
        z = tl.load(z_ptr + offs_n * stride_zn + g * stride_zg, mask=mask_n, other=0).to(tl.float32)  # [BN]
        acc += (part - x_sum[:, None] * z[None, :]) * s[None, :]
    store_tile(out_ptr, acc, offs_m, offs_n, mask_m, mask_n, stride_om, stride_on, ATOMIC)


if interpreter_enabled():  # one config each: the interpreter would "benchmark" every config
    _SMALL = [config(16, 32, None, 2, 4, 1)]
    _LARGE = [config(32, 32, None, 1, 4, 1)]
else:
    # T4-safe: the largest tile stages (16 + 128) x 64 bytes plus a 64 x 128 fp16 operand per step.
    _SMALL = [config(16, bn, None, sk, w, s) for bn, sk, w, s in [
        (32, 1, 4, 4), (64, 1, 4, 4), (64, 2, 4, 4), (64, 4, 4, 4), (128, 4, 8, 3)]]
    _LARGE = [config(bm, bn, None, 1, w, s) for bm, bn, w, s in [
        (64, 64, 4, 4), (64, 128, 4, 3), (128, 128, 8, 3)]]
_KEY = ["M_BUCKET", "N", "K"]
_int4_small = triton.autotune(_SMALL, key=_KEY, reset_to_zero=["out_ptr"])(int4_weight_only_matmul_kernel)
_int4_large = triton.autotune(_LARGE, key=_KEY)(int4_weight_only_matmul_kernel)


def _check(x, w_packed, scales, zeros, group_size) -> None:
    check_int("group_size", group_size)
    check_choice("group_size", group_size, GROUP_SIZES)
    check_matrix(x, "x", FLOAT_DTYPES)
    k = x.shape[1]
    if k % group_size:
        raise ValueError(f"x: in-features K={k} must be a multiple of group_size={group_size}")
    check_matrix(w_packed, "w_packed", (torch.uint8,), cols=k // 2, contiguous=True)
    n = w_packed.shape[0]
    check_matrix(scales, "scales", FLOAT_DTYPES, rows=n, cols=k // group_size)
    check_matrix(zeros, "zeros", (torch.uint8,), rows=n, cols=k // group_size)
    check_same_device(x=x, w_packed=w_packed, scales=scales, zeros=zeros)


def int4_weight_only_matmul(x: torch.Tensor, w_packed: torch.Tensor, scales: torch.Tensor,
                            zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """``x @ W.T`` with ``W[n, k] = (q[n, k] - zeros[n, k // g]) * scales[n, k // g]``.

    x ``[M, K]`` fp16/bf16/fp32; w_packed ``[N, K // 2]`` uint8 (low nibble = even column);
    scales ``[N, K // g]`` float; zeros ``[N, K // g]`` uint8 in 0..15; g in 32/64/128.
    Returns ``[M, N]`` in ``x.dtype``: the kernel on CUDA (or under the interpreter), else the reference.
    """
    _check(x, w_packed, scales, zeros, group_size)
    if not use_triton(x, w_packed, scales, zeros) or min(x.shape[0], w_packed.shape[0], x.shape[1]) == 0:
        return int4_weight_only_matmul_ref(x, w_packed, scales, zeros, group_size)
    if gemv_supported(x, w_packed) and scales.stride(1) == 1 and zeros.stride(1) == 1:  # batch-1 decode
        return int4_gemv(x, w_packed, scales, zeros, group_size)
    return launch_weight_only(
        _int4_small, _int4_large, x, w_packed.shape[0], (x, w_packed, scales, zeros),
        (x.stride(0), x.stride(1), w_packed.stride(0), w_packed.stride(1), scales.stride(0),
         scales.stride(1), zeros.stride(0), zeros.stride(1)),
        GROUP_SIZE=group_size)


def int4_weight_only_matmul_ref(x: torch.Tensor, w_packed: torch.Tensor, scales: torch.Tensor,
                                zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """Reference: unpack (low nibble first), dequantize in fp32, matmul in fp32, cast to ``x.dtype``."""
    n = w_packed.shape[0]
    p = w_packed.to(torch.int16)
    q = torch.stack([p & 0xF, p >> 4], dim=-1).reshape(n, -1).float()  # [N, K]
    z = zeros.float().repeat_interleave(group_size, dim=1)  # [N, K]
    s = scales.float().repeat_interleave(group_size, dim=1)  # [N, K]
    return (x.float() @ ((q - z) * s).T).to(x.dtype)  # [M, N]
