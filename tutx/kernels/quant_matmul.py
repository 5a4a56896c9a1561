"""Quantized matmuls in Triton: INT8 weight-only and W8A8 (int8 x int8 -> int32 with fused rescale).

Why these help: decoding a token multiplies a handful of activation rows by every weight, so
the time is spent *reading weights*. Storing them in int8 halves the bytes of bf16; converting to
the activation dtype inside the kernel, in registers, keeps that saving. W8A8 also quantizes the
activations (per token) so the tensor cores run int8 x int8 with int32 accumulation — twice the
throughput of bf16 for large, compute-bound batches.

Two launch shapes per weight-only op (the INT4 op lives in ``quant_matmul_int4.py``):

* **small M (1-16, decode)**: one 16-row tile covers all rows; the K loop is split across
  ``SPLIT_K`` programs (autotuned) that ``atomic_add`` fp32 partial sums, so even a single row
  launches enough programs to keep every SM streaming weights;
* **large M (prefill)**: classic output tiles, grouped so neighbouring programs share weights in L2.

Triton's interpreter (used by the tests on CPU) computes bf16 ``tl.dot``s and int->bf16 casts
wrongly as of Triton 3.9, and GPUs before sm_80 have no bf16 tensor cores; in both cases bf16
operands are upcast to fp32 for the dot (``DOT_F32``). fp32 inputs always use an IEEE fp32 dot.

Every config fits a T4's 64 KB of shared memory in fp16 (checked by compiling for sm_75). fp32
operands need twice the space: there the largest configs exceed it, and the autotuner skips
them (it drops configs that raise ``OutOfResources``); the smallest always fit.
"""
from __future__ import annotations

import torch

from tutx._validate import check_choice
from tutx.kernels._dispatch import interpreter_enabled, use_triton
from tutx.kernels._triton import tl, triton
from tutx.kernels.checks import FLOAT_DTYPES, check_matrix, check_same_device, check_vector
from tutx.kernels.quant_gemv import gemv_supported, int8_gemv

SMALL_M = 16  # rows up to which the split-K path is used (from GEMV_MAX_M + 1; see quant_gemv.py below that)
_GROUP_M = 8  # output-tile rows per L2-sharing group on the tiled path


# ----------------------------------------------------------------------------- shared helpers
def dot_in_fp32(x: torch.Tensor) -> bool:
    """Whether the kernel should upcast the dot operands to fp32 (see the module docstring)."""
    if x.dtype == torch.float32:
        return True
    if x.dtype != torch.bfloat16:
        return False
    return x.device.type != "cuda" or torch.cuda.get_device_capability(x.device)[0] < 8


def int8_dot_supported(device: torch.device) -> bool:
    """Triton lowers int8 x int8 -> int32 ``tl.dot`` from sm_80 on (it fails to compile for a T4's sm_75)."""
    return device.type != "cuda" or torch.cuda.get_device_capability(device)[0] >= 8


def m_bucket(m: int) -> int:
    """Autotuning key for M: re-tune per power of two (all decode sizes share one), not per M."""
    return max(SMALL_M, triton.next_power_of_2(m))


def config(block_m, block_n, block_k, split_k, warps, stages, **extra) -> triton.Config:
    meta = dict(BLOCK_M=block_m, BLOCK_N=block_n, **extra)
    if split_k is not None:
        meta["SPLIT_K"] = split_k
    if block_k is not None:
        meta["BLOCK_K"] = block_k
    return triton.Config(meta, num_warps=warps, num_stages=stages)


@triton.jit
def tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """Program id -> (row tile, column tile), grouped GROUP_M row tiles at a time for L2 reuse."""
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * grid_n
    first_m = (pid // width) * GROUP_M
    group_rows = min(grid_m - first_m, GROUP_M)
    return first_m + (pid % width) % group_rows, (pid % width) // group_rows


# ----------------------------------------------------------------------------- INT8 weight-only
@triton.jit
def store_tile(out_ptr, acc, offs_m, offs_n, mask_m, mask_n, stride_om, stride_on, ATOMIC: tl.constexpr):
    """Write an fp32 ``[BM, BN]`` tile: atomically added for split-K (fp32 output), else cast and stored."""
    out_ptrs = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on
    mask = mask_m[:, None] & mask_n[None, :]
    if ATOMIC:
        tl.atomic_add(out_ptrs, acc, mask=mask)
    else:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def int8_weight_only_matmul_kernel(
        x_ptr, w_ptr, s_ptr, out_ptr, M, N, K, M_BUCKET,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
        DOT_F32: tl.constexpr, ATOMIC: tl.constexpr, GROUP_M: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_k = tl.arange(0, BLOCK_K)  # [BK]
    mask_m, mask_n = offs_m < M, offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kt in range(tl.program_id(1), tl.cdiv(K, BLOCK_K), SPLIT_K):  # this program's share of K
        k = kt * BLOCK_K + offs_k
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :] * stride_xk,
                    mask=mask_m[:, None] & (k[None, :] < K), other=0.0)  # [BM, BK]
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + k[:, None] * stride_wk,
                    mask=mask_n[None, :] & (k[:, None] < K), other=0).to(tl.float32)  # [BK, BN], exact
        if DOT_F32:
            acc = tl.dot(x.to(tl.float32), w, acc, input_precision="ieee")
        else:
            acc = tl.dot(x, w.to(x.dtype), acc)
    scale = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)  # [BN]
    acc = acc * scale[None, :]
    store_tile(out_ptr, acc, offs_m, offs_n, mask_m, mask_n, stride_om, stride_on, ATOMIC)


if interpreter_enabled():  # one config each: the interpreter would "benchmark" every config
    _I8_SMALL = [config(16, 32, 32, 2, 4, 1)]
    _I8_LARGE = [config(32, 32, 32, 1, 4, 1)]
else:
    # Few configs on purpose: each costs a compile and a benchmark per shape. All fit a T4's 64 KB.
    _I8_SMALL = [config(16, bn, bk, sk, w, s) for bn, bk, sk, w, s in [
        (32, 128, 1, 4, 4), (64, 128, 1, 4, 4), (64, 256, 2, 4, 3), (64, 128, 4, 4, 4), (128, 128, 2, 4, 3)]]
    _I8_LARGE = [config(bm, bn, bk, 1, w, s) for bm, bn, bk, w, s in [
        (64, 64, 64, 4, 4), (64, 128, 64, 4, 3), (128, 128, 64, 8, 3)]]
_KEY = ["M_BUCKET", "N", "K"]
_int8_small = triton.autotune(_I8_SMALL, key=_KEY, reset_to_zero=["out_ptr"])(int8_weight_only_matmul_kernel)
_int8_large = triton.autotune(_I8_LARGE, key=_KEY)(int8_weight_only_matmul_kernel)


def launch_weight_only(small, large, x: torch.Tensor, n: int, args: tuple, strides: tuple, **const):
    """Run the split-K launcher for M <= 16 (fp32 atomics, then cast) or the tiled one otherwise."""
    m = x.shape[0]
    atomic = m <= SMALL_M
    out = torch.zeros((m, n), device=x.device, dtype=torch.float32) if atomic else \
        torch.empty((m, n), device=x.device, dtype=x.dtype)  # [M, N]

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])

    (small if atomic else large)[grid](
        *args, out, m, n, x.shape[1], m_bucket(m), *strides, out.stride(0), out.stride(1),
        DOT_F32=dot_in_fp32(x), ATOMIC=atomic, GROUP_M=_GROUP_M, **const)
    return out.to(x.dtype)


def int8_weight_only_matmul(x: torch.Tensor, w_int8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``x @ (w_int8 * scale[:, None]).T``: x ``[M, K]`` fp16/bf16/fp32, w ``[N, K]`` int8, scale ``[N]``.

    Returns ``[M, N]`` in ``x.dtype``. Runs the Triton kernel on CUDA (or under the interpreter),
    the reference otherwise.
    """
    check_matrix(x, "x", FLOAT_DTYPES)
    check_matrix(w_int8, "w_int8", (torch.int8,), cols=x.shape[1], contiguous=True)
    check_vector(scale, "scale", FLOAT_DTYPES, w_int8.shape[0])
    check_same_device(x=x, w_int8=w_int8, scale=scale)
    if not use_triton(x, w_int8, scale) or min(x.shape[0], w_int8.shape[0], x.shape[1]) == 0:
        return int8_weight_only_matmul_ref(x, w_int8, scale)
    if gemv_supported(x, w_int8):  # batch-1 decode: stream the weights once, one launch
        return int8_gemv(x, w_int8, scale)
    return launch_weight_only(_int8_small, _int8_large, x, w_int8.shape[0], (x, w_int8, scale),
                              (x.stride(0), x.stride(1), w_int8.stride(0), w_int8.stride(1)))


def int8_weight_only_matmul_ref(x: torch.Tensor, w_int8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reference: dequantize the weight in fp32, matmul in fp32, cast to ``x.dtype``."""
    w = w_int8.float() * scale.float()[:, None]  # [N, K]
    return (x.float() @ w.T).to(x.dtype)  # [M, N]


# ----------------------------------------------------------------------------- W8A8
@triton.jit
def int8_matmul_rescale_kernel(
        x_ptr, w_ptr, xs_ptr, ws_ptr, out_ptr, M, N, K, M_BUCKET,
        stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
        INT8_DOT: tl.constexpr, GROUP_M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr):
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_k = tl.arange(0, BLOCK_K)  # [BK]
    mask_m, mask_n = offs_m < M, offs_n < N
    if INT8_DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)  # exact: |sum| < K * 127 * 127
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # exact while |sum| < 2**24
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        x = tl.load(x_ptr + offs_m[:, None] * stride_xm + k[None, :] * stride_xk,
                    mask=mask_m[:, None] & (k[None, :] < K), other=0)  # [BM, BK] int8
        w = tl.load(w_ptr + offs_n[None, :] * stride_wn + k[:, None] * stride_wk,
                    mask=mask_n[None, :] & (k[:, None] < K), other=0)  # [BK, BN] int8
        if INT8_DOT:
            acc = tl.dot(x, w, acc, out_dtype=tl.int32)  # Triton 3.6 needs the int32 named
        else:  # int8 is exact in fp16; fp16 tensor cores multiply exactly and accumulate in fp32
            acc = tl.dot(x.to(tl.float16), w.to(tl.float16), acc)
    xs = tl.load(xs_ptr + offs_m, mask=mask_m, other=0.0).to(tl.float32)  # [BM] per-token scales
    ws = tl.load(ws_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)  # [BN] per-channel scales
    out = acc.to(tl.float32) * xs[:, None] * ws[None, :]  # the fused rescale
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :] * stride_on,
             out.to(out_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


if interpreter_enabled():
    _W8A8 = [config(16, 32, 32, None, 4, 1)]
else:
    _W8A8 = [config(bm, bn, bk, None, w, s) for bm, bn, bk, w, s in [
        (16, 64, 128, 4, 4), (64, 64, 128, 4, 3), (64, 128, 128, 4, 3), (128, 128, 64, 8, 3)]]
_w8a8 = triton.autotune(_W8A8, key=_KEY)(int8_matmul_rescale_kernel)


def int8_matmul_rescale(x_int8: torch.Tensor, w_int8: torch.Tensor, x_scale: torch.Tensor,
                        w_scale: torch.Tensor, out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """``(x_int8 @ w_int8.T) * x_scale[:, None] * w_scale[None, :]`` in ``out_dtype``.

    x ``[M, K]`` int8 (per-token scales ``[M]``), w ``[N, K]`` int8 (per-channel scales ``[N]``);
    the product is accumulated exactly in int32 and rescaled in fp32 before the one store. On
    GPUs before sm_80 the codes go through fp16 tensor cores instead (exact products, fp32 sums).
    """
    check_matrix(x_int8, "x_int8", (torch.int8,))
    check_matrix(w_int8, "w_int8", (torch.int8,), cols=x_int8.shape[1], contiguous=True)
    check_vector(x_scale, "x_scale", FLOAT_DTYPES, x_int8.shape[0])
    check_vector(w_scale, "w_scale", FLOAT_DTYPES, w_int8.shape[0])
    check_choice("out_dtype", out_dtype, FLOAT_DTYPES)
    check_same_device(x_int8=x_int8, w_int8=w_int8, x_scale=x_scale, w_scale=w_scale)
    m, n = x_int8.shape[0], w_int8.shape[0]
    if not use_triton(x_int8, w_int8, x_scale, w_scale) or min(m, n, x_int8.shape[1]) == 0:
        return int8_matmul_rescale_ref(x_int8, w_int8, x_scale, w_scale, out_dtype)
    out = torch.empty((m, n), device=x_int8.device, dtype=out_dtype)  # [M, N]

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    _w8a8[grid](x_int8, w_int8, x_scale, w_scale, out, m, n, x_int8.shape[1], m_bucket(m),
                x_int8.stride(0), x_int8.stride(1), w_int8.stride(0), w_int8.stride(1),
                out.stride(0), out.stride(1), INT8_DOT=int8_dot_supported(x_int8.device), GROUP_M=_GROUP_M)
    return out


def int8_matmul_rescale_ref(x_int8, w_int8, x_scale, w_scale, out_dtype=torch.bfloat16) -> torch.Tensor:
    """Reference: the integer product in float64 (exact, like int32), then the same fp32 rescale."""
    acc = (x_int8.double() @ w_int8.double().T).float()  # [M, N], integer-valued
    return (acc * x_scale.float()[:, None] * w_scale.float()[None, :]).to(out_dtype)
