"""Decode attention (flash-decoding): one new query token per sequence against its KV cache.

During generation each sequence adds one query, so a FlashAttention grid over query blocks would
launch only ``B x Hq`` programs — a few dozen for a small batch, on a GPU with over a hundred
SMs — each walking thousands of cached keys alone. Flash-decoding also splits the *key* axis:
``num_splits`` programs per (sequence, head) each reduce one chunk of the cache to a partial
output and its log-sum-exp, and a second tiny kernel merges the partials exactly
(``o = Σ_s exp2(lse_s − lse) · o_s``).

Cache layout (a deliberate, documented choice): ``k_cache`` and ``v_cache`` are dense
``[B, Hkv, S_max, D]`` tensors, one slot per sequence; sequence ``b`` holds ``lengths[b]`` valid
positions ``0 .. lengths[b]-1`` and the rest of its slot is ignored. Only ``Hkv`` heads are stored
(GQA/MQA: query head ``h`` reads KV head ``h // (Hq // Hkv)``). Chapter 6's paged cache replaces
the ``S_max`` axis with a block table; the split/merge structure stays the same.
"""
from __future__ import annotations

import torch

from tutx._validate import check_bool, check_optional_int
from tutx.kernels._attention_common import (
    LOG2E,
    check_kernel_dtype,
    cuda_capability,
    last_dim_contiguous,
    resolve_scale,
)
from tutx.kernels._dispatch import interpreter_enabled, use_triton
from tutx.kernels._triton import tl, triton
from tutx.kernels.checks import check_float_dtypes, check_same_device, check_tensor

MAX_SPLITS = 128
MAX_HEAD_DIM = 256
# Keys per loop step. Small under the interpreter so that test-sized caches span several blocks.
_BLOCK_N = 16 if interpreter_enabled() else 64


@triton.jit
def decode_attention_kernel(Q, K, V, LENGTHS, O_PART, LSE_PART, qk_scale,
                            stride_qb, stride_qh, stride_kb, stride_kh, stride_kn,
                            stride_vb, stride_vh, stride_vn,
                            Hkv, GROUP, NUM_SPLITS, D,
                            BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                            DOT_F32: tl.constexpr):
    """Partial attention of one (sequence, KV head) over one key chunk; grid ``(B*Hkv, splits)``.

    All ``GROUP`` query heads that share the KV head run in the same program, as the rows of a
    ``[BLOCK_G, D]`` tile (padded to 16 for the tensor cores): each cached key and value is read
    from memory once, not once per query head. Chunks are cut per sequence from its own length
    (a multiple of BLOCK_N each), so short sequences spread over all splits too; a split past
    the end writes lse = -inf, o = 0.
    """
    pid_bkv = tl.program_id(0)
    split = tl.program_id(1)
    b = pid_bkv // Hkv
    kvh = (pid_bkv % Hkv).to(tl.int64)
    length = tl.load(LENGTHS + b).to(tl.int32)
    chunk = tl.cdiv(tl.cdiv(length, NUM_SPLITS), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, length)

    offs_g = tl.arange(0, BLOCK_G)
    offs_d = tl.arange(0, BLOCK_D)
    in_g = offs_g < GROUP
    in_d = offs_d < D
    heads = kvh * GROUP + offs_g  # [G] query heads of this KV head
    q = tl.load(Q + b.to(tl.int64) * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=in_g[:, None] & in_d[None, :], other=0.0)  # [G, BD]
    if DOT_F32:
        q = q.to(tl.float32)
    K += b.to(tl.int64) * stride_kb + kvh * stride_kh
    V += b.to(tl.int64) * stride_vb + kvh * stride_vh

    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for start in range(lo, hi, BLOCK_N):  # every step holds at least one valid key
        offs_n = start + tl.arange(0, BLOCK_N)  # [BN]
        in_n = offs_n < hi
        mask = in_n[:, None] & in_d[None, :]
        k = tl.load(K + offs_n[:, None] * stride_kn + offs_d[None, :], mask=mask, other=0.0)  # [BN, BD]
        v = tl.load(V + offs_n[:, None] * stride_vn + offs_d[None, :], mask=mask, other=0.0)  # [BN, BD]
        if DOT_F32:
            k = k.to(tl.float32)
            v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale  # [G, BN], base-2 logits
        else:
            s = tl.dot(q, tl.trans(k)) * qk_scale  # [G, BN], base-2 logits
        s = tl.where(in_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # [G]
        p = tl.exp2(s - m_new[:, None])  # [G, BN]
        alpha = tl.exp2(m_i - m_new)  # [G]
        l_i = l_i * alpha + tl.sum(p, 1)
        if DOT_F32:
            acc = tl.dot(p, v, acc * alpha[:, None], input_precision="ieee")  # [G, BD]
        else:
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])  # [G, BD]
        m_i = m_new

    nonempty = l_i > 0
    acc = acc / tl.where(nonempty, l_i, 1.0)[:, None]
    lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))  # [G]
    part = ((b * Hkv).to(tl.int64) * GROUP + heads) * NUM_SPLITS + split  # [G] rows of [B, Hq, splits]
    tl.store(O_PART + part[:, None] * D + offs_d[None, :], acc, mask=in_g[:, None] & in_d[None, :])
    tl.store(LSE_PART + part, lse, mask=in_g)


@triton.jit
def decode_merge_kernel(O_PART, LSE_PART, O, NUM_SPLITS, D,
                         SPLITS_P2: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merge the partials of one (sequence, head): weights exp2(lse_s - max lse); grid ``(B*Hq,)``."""
    pid_bh = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, SPLITS_P2)
    offs_d = tl.arange(0, BLOCK_D)
    in_s = offs_s < NUM_SPLITS
    lse = tl.load(LSE_PART + pid_bh * NUM_SPLITS + offs_s, mask=in_s, other=float("-inf"))  # [S]
    w = tl.exp2(lse - tl.max(lse, 0))  # [S], 0 for empty splits
    o = tl.load(O_PART + (pid_bh * NUM_SPLITS + offs_s[:, None]) * D + offs_d[None, :],
                mask=in_s[:, None] & (offs_d[None, :] < D), other=0.0)  # [S, BD]
    out = tl.sum(w[:, None] * o, 0) / tl.sum(w, 0)  # [BD]
    tl.store(O + pid_bh * D + offs_d, out.to(O.dtype.element_ty), mask=offs_d < D)


def default_num_splits(batch_heads: int, max_length: int, num_sms: int) -> int:
    """Enough splits for about two waves of programs (``batch_heads`` = B x Hkv of them per split),
    but chunks of at least 256 keys."""
    want = triton.cdiv(2 * num_sms, batch_heads)
    return max(1, min(want, triton.cdiv(max_length, 256), MAX_SPLITS))


def _check(q, k_cache, v_cache, lengths, num_splits, validate_lengths: bool = True):
    check_tensor("q", q, 3, "[B, Hq, D]")
    check_tensor("k_cache", k_cache, 4, "[B, Hkv, S_max, D]")
    check_tensor("v_cache", v_cache, 4, "[B, Hkv, S_max, D]")
    check_tensor("lengths", lengths, 1, "[B]")
    check_float_dtypes(q=q, k_cache=k_cache, v_cache=v_cache)
    check_same_device(q=q, k_cache=k_cache, v_cache=v_cache, lengths=lengths)
    if v_cache.shape != k_cache.shape:
        raise ValueError(f"v_cache: expected the shape of k_cache {tuple(k_cache.shape)}, "
                         f"got {tuple(v_cache.shape)}")
    (b, hq, d), (bk, hkv, s_max, dk) = q.shape, k_cache.shape
    if bk != b or lengths.shape[0] != b:
        bad, got = ("k_cache", bk) if bk != b else ("lengths", lengths.shape[0])
        raise ValueError(f"{bad}: expected batch {b} (from q), got {got}")
    if dk != d:
        raise ValueError(f"k_cache: expected head_dim {d} (from q), got {dk}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim: expected at most {MAX_HEAD_DIM}, got {d}")
    if hq % hkv:
        raise ValueError(f"k_cache: expected a number of heads dividing q's {hq} (GQA/MQA), got {hkv}")
    if lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"lengths: expected dtype int32 or int64, got {lengths.dtype}")
    if check_bool("validate_lengths", validate_lengths):
        lo, hi = (int(x) for x in torch.aminmax(lengths))  # one host sync: out-of-range would read garbage
        if lo < 1 or hi > s_max:
            raise ValueError(f"lengths: expected values in [1, S_max={s_max}], got min {lo}, max {hi}")
    check_optional_int("num_splits", num_splits, minimum=1, maximum=MAX_SPLITS)


def decode_attention(q, k_cache, v_cache, lengths, sm_scale: float | None = None,
                     num_splits: int | None = None, validate_lengths: bool = True) -> torch.Tensor:
    """Attention of ``q [B, Hq, D]`` over the first ``lengths[b]`` cached keys/values: ``[B, Hq, D]``.

    ``num_splits`` chunks of the key axis run in parallel (None: enough to fill the GPU).
    ``validate_lengths`` checks that every length lies in ``[1, S_max]``, which costs a
    device-to-host synchronisation per call; a caller that keeps its own lengths (a KV cache
    object, an engine) can pass False.
    Launches the kernels on CUDA tensors (fp16/bf16) or under the interpreter, else runs
    :func:`decode_attention_ref`. Inference only (no autograd).
    """
    _check(q, k_cache, v_cache, lengths, num_splits, validate_lengths)
    sm_scale = resolve_scale(sm_scale, q.shape[-1])
    if not use_triton(q, k_cache, v_cache, lengths):
        return decode_attention_ref(q, k_cache, v_cache, lengths, sm_scale)
    check_kernel_dtype(q.dtype, q.device.type, cuda_capability(q))
    (batch, hq, d), (hkv, s_max) = q.shape, k_cache.shape[1:3]
    if num_splits is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
        num_splits = default_num_splits(batch * hkv, s_max, sms)
    q, k_cache, v_cache = (last_dim_contiguous(x) for x in (q, k_cache, v_cache))
    lengths = lengths.contiguous()
    o_part = torch.empty((batch, hq, num_splits, d), device=q.device, dtype=torch.float32)  # [B, Hq, splits, D]
    lse_part = torch.empty((batch, hq, num_splits), device=q.device, dtype=torch.float32)  # [B, Hq, splits]
    block_d = max(16, triton.next_power_of_2(d))  # tl.dot needs 16 along every axis
    group = hq // hkv
    decode_attention_kernel[(batch * hkv, num_splits)](
        q, k_cache, v_cache, lengths, o_part, lse_part, sm_scale * LOG2E,
        *q.stride()[:2], *k_cache.stride()[:3], *v_cache.stride()[:3],
        hkv, group, num_splits, d, BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=_BLOCK_N,
        BLOCK_D=block_d, DOT_F32=interpreter_enabled() or q.dtype == torch.float32)
    o = torch.empty((batch, hq, d), device=q.device, dtype=q.dtype)  # [B, Hq, D]
    decode_merge_kernel[(batch * hq,)](o_part, lse_part, o, num_splits, d,
                                       SPLITS_P2=max(2, triton.next_power_of_2(num_splits)),
                                       BLOCK_D=block_d)
    return o


def decode_attention_ref(q, k_cache, v_cache, lengths, sm_scale: float | None = None) -> torch.Tensor:
    """Plain PyTorch: masked softmax over each sequence's valid cache positions, in fp32."""
    _check(q, k_cache, v_cache, lengths, None)
    sm_scale = resolve_scale(sm_scale, q.shape[-1])
    group = q.shape[1] // k_cache.shape[1]
    k = k_cache.float().repeat_interleave(group, dim=1)  # [B, Hq, S_max, D]
    v = v_cache.float().repeat_interleave(group, dim=1)  # [B, Hq, S_max, D]
    scores = torch.einsum("bhd,bhsd->bhs", q.float(), k) * sm_scale  # [B, Hq, S_max]
    valid = torch.arange(k.shape[2], device=q.device)[None, :] < lengths[:, None]  # [B, S_max]
    scores = scores.masked_fill(~valid[:, None, :], float("-inf"))
    return torch.einsum("bhs,bhsd->bhd", torch.softmax(scores, dim=-1), v).to(q.dtype)  # [B, Hq, D]


__all__ = ["decode_attention", "decode_attention_ref", "decode_attention_kernel", "decode_merge_kernel",
           "default_num_splits"]
