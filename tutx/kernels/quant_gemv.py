"""Decode-shaped (GEMV) kernels for weight-only INT8 and INT4 matmuls: a few rows of ``x``, every weight.

At batch 1-4 a matmul is a matrix-vector product: each weight is used once or a few times, so
the only thing that matters is streaming the weight bytes at full memory bandwidth. Tensor cores
do not help (a 16-row tile would be mostly padding), and the split-K trick of the tiled kernels
costs two extra launches (zeroing an fp32 buffer for the atomics and casting it back), which is
a large share of a 10 µs matmul. These kernels instead:

* give each program ``BLOCK_N`` output columns and the **whole** K axis, so every output is
  written once, in the output dtype, by one program: one launch, no atomics;
* read **many groups per step** (``GROUPS`` x ``group_size`` columns, or ``BLOCK_K`` int8
  columns), so each program has kilobytes of loads in flight: at ~1 µs memory latency a GPU
  needs megabytes in flight to reach its bandwidth, and a 4096-column matrix only has 4096 rows
  to spread them over;
* multiply on the CUDA cores in fp32 and reduce along K inside the program. INT4 keeps the
  scale and zero point out of the inner product: ``Σ x (q − z) s = s (Σ x q − z Σ x)`` per group.

Rows of ``x`` (at most ``BLOCK_M``, a power of two up to 8) are a compile-time loop, so each
weight tile is unpacked once and reused for every row.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tutx.kernels._dispatch import interpreter_enabled

GEMV_MAX_M = 4  # rows up to which the weight-only wrappers use these kernels (measured crossover)


@triton.jit
def _accumulate_row(acc, contrib, offs_m, m: tl.constexpr):
    """``acc[m, :] += contrib`` for a compile-time row ``m`` of the ``[BM, BN]`` accumulator."""
    return tl.where(offs_m[:, None] == m, acc + contrib[None, :], acc)


@triton.jit
def int8_gemv_kernel(x_ptr, w_ptr, s_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """``out[:M] = x[:M] @ (w * s[:, None]).T``; grid ``(cdiv(N, BLOCK_N),)``; x and w have unit K stride."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_k = tl.arange(0, BLOCK_K)  # [BK]
    offs_m = tl.arange(0, BLOCK_M)  # [BM]
    mask_n = offs_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + offs_k
        mask_k = k < K
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + k[None, :],
                    mask=mask_n[:, None] & mask_k[None, :], other=0).to(tl.float32)  # [BN, BK]
        for m in tl.static_range(BLOCK_M):
            x = tl.load(x_ptr + m * stride_xm + k, mask=mask_k & (offs_k * 0 + m < M), other=0.0).to(tl.float32)  # [BK]
            acc = _accumulate_row(acc, tl.sum(w * x[None, :], axis=1), offs_m, m)
    scale = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)  # [BN]
    acc = acc * scale[None, :]
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & mask_n[None, :])


@triton.jit
def int4_gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_sn, stride_zn,
                     stride_om, GROUP_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     GROUPS: tl.constexpr):
    """INT4 group-wise GEMV; grid ``(cdiv(N, BLOCK_N),)``; each step reads ``GROUPS`` groups of every row."""
    HALF: tl.constexpr = GROUP_SIZE // 2  # packed bytes per row per group
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_g = tl.arange(0, GROUPS)  # [G]
    offs_j = tl.arange(0, HALF)  # [H] byte within a group
    offs_m = tl.arange(0, BLOCK_M)  # [BM]
    mask_n = offs_n < N
    num_groups = K // GROUP_SIZE
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g0 in range(0, num_groups, GROUPS):
        g = g0 + offs_g  # [G]
        mask_g = g < num_groups
        byte = g[:, None] * HALF + offs_j[None, :]  # [G, H] byte index within a row
        packed = tl.load(w_ptr + offs_n[:, None, None] * stride_wn + byte[None, :, :],
                         mask=mask_n[:, None, None] & mask_g[None, :, None], other=0)  # [BN, G, H] uint8
        q_lo = (packed & 0xF).to(tl.float32)  # [BN, G, H] codes of columns 2j
        q_hi = (packed >> 4).to(tl.float32)  # [BN, G, H] codes of columns 2j + 1
        sz_mask = mask_n[:, None] & mask_g[None, :]
        s = tl.load(s_ptr + offs_n[:, None] * stride_sn + g[None, :], mask=sz_mask, other=0.0).to(tl.float32)  # [BN, G]
        z = tl.load(z_ptr + offs_n[:, None] * stride_zn + g[None, :], mask=sz_mask, other=0).to(tl.float32)  # [BN, G]
        for m in tl.static_range(BLOCK_M):
            x_mask = mask_g[:, None] & (byte * 0 + m < M)  # [G, H]
            x_lo = tl.load(x_ptr + m * stride_xm + 2 * byte, mask=x_mask, other=0.0).to(tl.float32)  # [G, H]
            x_hi = tl.load(x_ptr + m * stride_xm + 2 * byte + 1, mask=x_mask, other=0.0).to(tl.float32)  # [G, H]
            xq = tl.sum(q_lo * x_lo[None, :, :] + q_hi * x_hi[None, :, :], axis=2)  # [BN, G]  Σ x q
            x_sum = tl.sum(x_lo + x_hi, axis=1)  # [G]  Σ x
            contrib = tl.sum((xq - z * x_sum[None, :]) * s, axis=1)  # [BN]
            acc = _accumulate_row(acc, contrib, offs_m, m)
    tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=(offs_m[:, None] < M) & mask_n[None, :])


if interpreter_enabled():  # one small config each: test-sized shapes still take several steps
    _INT8_CONFIGS = [triton.Config({"BLOCK_N": 16, "BLOCK_K": 64}, num_warps=4)]
    _INT4_CONFIGS = [triton.Config({"BLOCK_N": 16, "GROUPS": 2}, num_warps=4)]
else:
    _INT8_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w)
                     for bn, bk, w in [(4, 1024, 4), (8, 512, 4), (8, 1024, 4), (16, 512, 4), (16, 256, 4), (32, 256, 8)]]
    _INT4_CONFIGS = [triton.Config({"BLOCK_N": bn, "GROUPS": g}, num_warps=w)
                     for bn, g, w in [(4, 8, 4), (8, 4, 4), (8, 8, 4), (16, 4, 4), (16, 2, 4), (32, 2, 8)]]
_int8_gemv = triton.autotune(_INT8_CONFIGS, key=["BLOCK_M", "N", "K"])(int8_gemv_kernel)
_int4_gemv = triton.autotune(_INT4_CONFIGS, key=["BLOCK_M", "N", "K", "GROUP_SIZE"])(int4_gemv_kernel)


def _rows(m: int) -> int:
    if not 1 <= m <= 8:
        raise ValueError(f"x: the GEMV kernels take 1 to 8 rows, got {m}")
    return triton.next_power_of_2(m)


def int8_gemv(x: torch.Tensor, w_int8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Launch :func:`int8_gemv_kernel` (inputs already checked by the caller): ``[M, K] → [M, N]``."""
    x = x.contiguous()
    m, (n, k) = x.shape[0], w_int8.shape
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)  # [M, N]
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _int8_gemv[grid](x, w_int8, scale, out, m, n, k, x.stride(0), w_int8.stride(0), out.stride(0),
                     BLOCK_M=_rows(m))
    return out


def int4_gemv(x: torch.Tensor, w_packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              group_size: int) -> torch.Tensor:
    """Launch :func:`int4_gemv_kernel` (inputs already checked by the caller): ``[M, K] → [M, N]``."""
    x = x.contiguous()
    m, k, n = x.shape[0], x.shape[1], w_packed.shape[0]
    if w_packed.stride(1) != 1 or scales.stride(1) != 1 or zeros.stride(1) != 1:
        raise ValueError("w_packed, scales, zeros: the GEMV kernel needs unit stride along K")
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)  # [M, N]
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _int4_gemv[grid](x, w_packed, scales, zeros, out, m, n, k, x.stride(0), w_packed.stride(0),
                     scales.stride(0), zeros.stride(0), out.stride(0), GROUP_SIZE=group_size, BLOCK_M=_rows(m))
    return out
