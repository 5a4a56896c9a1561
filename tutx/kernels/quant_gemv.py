"""Batch-1 (GEMV) kernels for weight-only INT8 and INT4 matmuls: one row of ``x``, every weight once.

Decoding one sequence multiplies a single activation row by every weight matrix, so the whole
job is streaming weight bytes at memory bandwidth; the arithmetic just has to keep up. Two
things stop it from keeping up in a naive kernel, and this one avoids both:

* **Launch overheads.** The split-K tiles of ``quant_matmul.py`` need a zeroed fp32 buffer for
  their atomics and a cast afterwards: three launches for a ~10 µs matmul. Here each program
  owns ``BLOCK_N`` output columns and the whole K axis, reading many groups per step so that
  enough bytes are in flight, and writes its outputs once, in the output dtype.
* **Integer-to-float conversions.** ``q.to(tl.float32)`` is a quarter-rate instruction on
  NVIDIA GPUs, and with 4-bit weights there is one per weight: it alone caps an H100 below
  2 TB/s of INT4 weights. Instead the code is written straight into the mantissa of 1.0::

      bits(1.0f) | q << 19   ==   1 + q/16          (4-bit q, top four mantissa bits)
      bits(1.0f) | u << 15   ==   1 + u/256         (8-bit u = q + 128)

  one shift and one and/or per weight, both full-rate integer operations. The offset comes
  back out once per group from the sum of ``x``: ``Σ x q = 16 (Σ x (1 + q/16) − Σ x)``. Every
  value involved is exact in fp32, so this changes no rounding but the order of the sums.

Weights are read as int32 words (8 INT4 codes or 4 INT8 codes each). ``MAGIC=False`` keeps the
plain conversion as a variant the autotuner can pick where it is faster.
"""
from __future__ import annotations

import torch

from tutx.kernels._dispatch import interpreter_enabled
from tutx.kernels._triton import tl, triton

GEMV_MAX_M = 1  # rows that take these kernels; from 2 rows on the split-K tiles were as fast (H200)


@triton.jit
def _int4_code(w, i: tl.constexpr, MAGIC: tl.constexpr):
    """Nibble ``i`` (bits 4i..4i+3) of int32 words as fp32: ``1 + q/16`` when MAGIC, else ``q``."""
    if MAGIC:
        if 4 * i <= 19:
            bits = (w << (19 - 4 * i)) & 0x780000  # q into mantissa bits 19..22
        else:
            bits = (w >> (4 * i - 19)) & 0x780000
        return (bits | 0x3F800000).to(tl.float32, bitcast=True)
    return ((w >> (4 * i)) & 0xF).to(tl.float32)


@triton.jit
def _int8_code(w, i: tl.constexpr, MAGIC: tl.constexpr):
    """Byte ``i`` of int32 words, an int8 code q, as fp32: ``1 + (q + 128)/256`` when MAGIC, else ``q``."""
    if MAGIC:
        if 8 * i <= 15:
            bits = (w << (15 - 8 * i)) & 0x7F8000  # the byte into mantissa bits 15..22
        else:
            bits = (w >> (8 * i - 15)) & 0x7F8000
        return (bits ^ 0x3FC00000).to(tl.float32, bitcast=True)  # exponent of 1.0, and flip the sign bit: q + 128
    return ((w << (24 - 8 * i)) >> 24).to(tl.float32)  # arithmetic shift sign-extends the byte


@triton.jit
def int8_gemv_kernel(x_ptr, w_ptr, s_ptr, out_ptr, N, K_WORDS, stride_wn,
                     BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, MAGIC: tl.constexpr):
    """``out = x @ (w * s[:, None]).T`` for one row x ``[K]``; w as int32 words ``[N, K/4]``; grid ``(cdiv(N, BN),)``."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_w = tl.arange(0, BLOCK_W)  # [BW]
    mask_n = offs_n < N
    part = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)  # Σ x * code, reduced once at the end
    x_sum = tl.zeros((BLOCK_W,), dtype=tl.float32)
    for w0 in range(0, K_WORDS, BLOCK_W):
        word = w0 + offs_w  # [BW]
        mask_w = word < K_WORDS
        w = tl.load(w_ptr + offs_n[:, None] * stride_wn + word[None, :],
                    mask=mask_n[:, None] & mask_w[None, :], other=0)  # [BN, BW] int32, 4 codes each
        for i in tl.static_range(4):
            x = tl.load(x_ptr + 4 * word + i, mask=mask_w, other=0.0).to(tl.float32)  # [BW] column 4·word + i
            part += _int8_code(w, i, MAGIC) * x[None, :]
            x_sum += x
    xq = tl.sum(part, axis=1)  # [BN]
    if MAGIC:  # Σ x (1 + (q + 128)/256) = Σx + (Σ x q)/256 + Σx/2
        xq = 256.0 * (xq - tl.sum(x_sum, axis=0)) - 128.0 * tl.sum(x_sum, axis=0)
    scale = tl.load(s_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)  # [BN]
    tl.store(out_ptr + offs_n, (xq * scale).to(out_ptr.dtype.element_ty), mask=mask_n)


@triton.jit
def int4_gemv_kernel(x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, N, K, stride_wn, stride_sn, stride_zn,
                     GROUP_SIZE: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr, MAGIC: tl.constexpr):
    """INT4 group-wise GEMV for one row x ``[K]``; w as int32 words ``[N, K/8]``; grid ``(cdiv(N, BN),)``."""
    WORDS: tl.constexpr = GROUP_SIZE // 8  # int32 words per row per group
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_g = tl.arange(0, GROUPS)  # [G]
    offs_j = tl.arange(0, WORDS)  # [W]
    mask_n = offs_n < N
    num_groups = K // GROUP_SIZE
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for g0 in range(0, num_groups, GROUPS):
        g = g0 + offs_g  # [G]
        mask_g = g < num_groups
        word = g[:, None] * WORDS + offs_j[None, :]  # [G, W] word index within a row
        w = tl.load(w_ptr + offs_n[:, None, None] * stride_wn + word[None, :, :],
                    mask=mask_n[:, None, None] & mask_g[None, :, None], other=0)  # [BN, G, W] int32
        part = tl.zeros((BLOCK_N, GROUPS, WORDS), dtype=tl.float32)
        x_sum = tl.zeros((GROUPS, WORDS), dtype=tl.float32)
        for i in tl.static_range(8):  # nibble i of word j is column 8j + i
            x = tl.load(x_ptr + 8 * word + i, mask=mask_g[:, None], other=0.0).to(tl.float32)  # [G, W]
            part += _int4_code(w, i, MAGIC) * x[None, :, :]
            x_sum += x
        xq = tl.sum(part, axis=2)  # [BN, G]
        xs = tl.sum(x_sum, axis=1)  # [G]  Σ x per group
        if MAGIC:
            xq = 16.0 * (xq - xs[None, :])  # Σ x (1 + q/16) → Σ x q
        sz_mask = mask_n[:, None] & mask_g[None, :]
        s = tl.load(s_ptr + offs_n[:, None] * stride_sn + g[None, :], mask=sz_mask, other=0.0).to(tl.float32)  # [BN, G]
        z = tl.load(z_ptr + offs_n[:, None] * stride_zn + g[None, :], mask=sz_mask, other=0).to(tl.float32)  # [BN, G]
        acc += tl.sum((xq - z * xs[None, :]) * s, axis=1)  # Σ x (q - z) s
    tl.store(out_ptr + offs_n, acc.to(out_ptr.dtype.element_ty), mask=mask_n)


# Words per program per step: 512-2048 (4-16 per thread), so a few programs per SM keep tens of KB
# of weight loads in flight. MAGIC=False is the plain-conversion variant, for comparison.
if interpreter_enabled():  # one small config each: test-sized shapes still take several steps
    _INT8_CONFIGS = [triton.Config({"BLOCK_N": 16, "BLOCK_W": 8, "MAGIC": True}, num_warps=4)]
    _INT4_CONFIGS = [triton.Config({"BLOCK_N": 16, "GROUPS": 2, "MAGIC": True}, num_warps=4)]
else:
    _INT8_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_W": bw, "MAGIC": magic}, num_warps=w)
                     for bn, bw, w, magic in [(8, 128, 4, True), (8, 256, 4, True), (16, 128, 4, True),
                                              (16, 256, 8, True), (4, 512, 4, True), (32, 128, 8, True),
                                              (8, 256, 4, False)]]
    _INT4_CONFIGS = [triton.Config({"BLOCK_N": bn, "GROUPS": g, "MAGIC": magic}, num_warps=w)
                     for bn, g, w, magic in [(8, 4, 4, True), (8, 8, 4, True), (16, 8, 4, True),
                                             (16, 8, 8, True), (4, 16, 4, True), (32, 4, 8, True),
                                             (8, 8, 4, False)]]
_int8_gemv = triton.autotune(_INT8_CONFIGS, key=["N", "K_WORDS"])(int8_gemv_kernel)
_int4_gemv = triton.autotune(_INT4_CONFIGS, key=["N", "K", "GROUP_SIZE"])(int4_gemv_kernel)


def _as_words(w: torch.Tensor, name: str) -> torch.Tensor:
    """View a row-major byte matrix ``[N, B]`` as int32 words ``[N, B/4]`` (no copy)."""
    if w.shape[1] % 4 or w.stride(1) != 1 or w.stride(0) % 4 or w.storage_offset() % 4:
        raise ValueError(f"{name}: the GEMV kernel reads 4-byte words; expected contiguous rows of a "
                         f"multiple of 4 bytes, got shape {tuple(w.shape)}, strides {w.stride()}")
    return w.view(torch.int32)


def gemv_supported(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the wrappers can route this call here: one row, and weights readable as int32 words."""
    return (x.shape[0] <= GEMV_MAX_M and w.shape[1] % 4 == 0 and w.stride(1) == 1 and w.stride(0) % 4 == 0
            and w.storage_offset() % 4 == 0)


def _one_row(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2 or x.shape[0] != 1:
        raise ValueError(f"x: the GEMV kernels take one row [1, K], got shape {tuple(x.shape)}")
    return x.contiguous()


def int8_gemv(x: torch.Tensor, w_int8: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Launch :func:`int8_gemv_kernel`: x ``[1, K]`` (K % 4 == 0), w ``[N, K]`` int8, scale ``[N]`` → ``[1, N]``."""
    x = _one_row(x)
    words = _as_words(w_int8, "w_int8")  # [N, K/4]
    n = w_int8.shape[0]
    out = torch.empty((1, n), device=x.device, dtype=x.dtype)  # [1, N]
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _int8_gemv[grid](x, words, scale, out, n, words.shape[1], words.stride(0))
    return out


def int4_gemv(x: torch.Tensor, w_packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
              group_size: int) -> torch.Tensor:
    """Launch :func:`int4_gemv_kernel`: x ``[1, K]``, w_packed ``[N, K/2]`` uint8, scales/zeros ``[N, K/g]``."""
    x = _one_row(x)
    words = _as_words(w_packed, "w_packed")  # [N, K/8]
    if scales.stride(1) != 1 or zeros.stride(1) != 1:
        raise ValueError("scales, zeros: the GEMV kernel needs unit stride along the groups")
    n = w_packed.shape[0]
    out = torch.empty((1, n), device=x.device, dtype=x.dtype)  # [1, N]
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    _int4_gemv[grid](x, words, scales, zeros, out, n, x.shape[1], words.stride(0), scales.stride(0),
                     zeros.stride(0), GROUP_SIZE=group_size)
    return out
