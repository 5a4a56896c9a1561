"""The seed's fused-attention kernel, reproduced with its bug, and the three-line fix.

The original course (section 5) shipped a "fused attention" kernel that streams the keys in
blocks, like FlashAttention, but takes a *complete* softmax inside every key block::

    p = exp(s - max(s_block)) / sum(exp(s - max(s_block)))     # normalised per key block
    acc += p @ v_block

Each block's weights sum to 1 on their own, so with ``n`` key blocks the output is the *sum* of
``n`` per-block attention outputs instead of one softmax over all keys. With a single key block
(``S_k <= BLOCK_N``) it is exact, which is why a test at a small sequence length passes and the
bug ships. The fix (``online=True``) is the *online softmax*: keep a running max ``m`` and sum
``l`` per query; when a block raises the max, rescale what was accumulated by ``exp(m_old - m_new)``;
divide by ``l`` once at the end. :func:`tutx.kernels.attention.flash_attention` is the full
version (exp2, GQA, causal masks, backward pass, autotuning).

Layout q, k, v ``[B, H, S, D]`` (``S_q`` and ``S_k`` may differ), no mask, ``D`` in 16/32/64/128.
"""
from __future__ import annotations

import math

import torch

from tutx._validate import check_bool, check_int, check_positive
from tutx.kernels._dispatch import use_triton
from tutx.kernels._triton import tl, triton
from tutx.kernels.checks import check_float_dtypes, check_same_device, check_tensor

HEAD_DIMS = (16, 32, 64, 128)


@triton.jit
def naive_fused_attention_kernel(Q, K, V, O, sm_scale, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh,
                                 stride_kn, stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                                 H, S_q, S_k, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
                                 BLOCK_N: tl.constexpr, ONLINE: tl.constexpr):
    """``BLOCK_M`` queries of one (batch, head) per program; grid ``(cdiv(S_q, BM), B*H)``."""
    b = tl.program_id(1) // H
    h = tl.program_id(1) % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, HEAD_DIM)  # [D]
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=offs_m[:, None] < S_q, other=0.0)  # [BM, D]
    K += b * stride_kb + h * stride_kh
    V += b * stride_vb + h * stride_vh
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)  # used by the fix only
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start in range(0, S_k, BLOCK_N):
        cols = start + offs_n  # [BN]
        k = tl.load(K + cols[None, :] * stride_kn + offs_d[:, None], mask=cols[None, :] < S_k, other=0.0)  # [D, BN]
        v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :], mask=cols[:, None] < S_k, other=0.0)  # [BN, D]
        s = tl.dot(q.to(tl.float32), k.to(tl.float32), input_precision="ieee") * sm_scale  # [BM, BN]
        s = tl.where(cols[None, :] < S_k, s, float("-inf"))
        if ONLINE:  # the fix: one softmax over all keys, built block by block
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)  # rescales everything accumulated under the old max
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            m_i = m_new
        else:  # the seed's bug: a complete softmax inside each key block
            p = tl.exp(s - tl.max(s, 1)[:, None])
            p = p / tl.sum(p, 1)[:, None]
            acc += tl.dot(p, v.to(tl.float32), input_precision="ieee")
    if ONLINE:
        acc = acc / l_i[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             acc.to(O.dtype.element_ty), mask=offs_m[:, None] < S_q)


def _check(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, 4, "[B, H, S, D]")
    check_float_dtypes(q=q, k=k, v=v)
    check_same_device(q=q, k=k, v=v)
    if k.shape != v.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"k: expected batch, heads and head dim of q {tuple(q.shape)}, got {tuple(k.shape)}")


def naive_fused_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float | None = None,
                          block_n: int = 32, online: bool = False) -> torch.Tensor:
    """The seed's kernel (``online=False``: wrong once ``S_k > block_n``) or its fix (``online=True``).

    q ``[B, H, S_q, D]``, k and v ``[B, H, S_k, D]``; ``block_n`` keys per step (a power of two >= 16).
    Only for teaching: it always launches the kernel when Triton can run (CUDA, or the interpreter)
    and otherwise runs :func:`naive_fused_attention_ref`, the correct answer.
    """
    _check(q, k, v)
    check_bool("online", online)
    check_int("block_n", block_n, minimum=16)
    if block_n & (block_n - 1):
        raise ValueError(f"block_n: expected a power of two, got {block_n}")
    d = q.shape[-1]
    if d not in HEAD_DIMS:
        raise ValueError(f"q: head dim {d} not supported; expected one of {HEAD_DIMS}")
    sm_scale = 1.0 / math.sqrt(d) if sm_scale is None else check_positive("sm_scale", sm_scale)
    if not use_triton(q, k, v):
        return naive_fused_attention_ref(q, k, v, sm_scale)
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    (batch, heads, s_q, _), s_k = q.shape, k.shape[2]
    o = torch.empty(q.shape, device=q.device, dtype=q.dtype)  # [B, H, S_q, D]
    grid = (triton.cdiv(s_q, 16), batch * heads)
    naive_fused_attention_kernel[grid](q, k, v, o, sm_scale, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
                                       *o.stride()[:3], heads, s_q, s_k, HEAD_DIM=d, BLOCK_M=16,
                                       BLOCK_N=block_n, ONLINE=online)
    return o


def naive_fused_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              sm_scale: float | None = None) -> torch.Tensor:
    """What the kernel should compute: ``softmax(q kᵀ · sm_scale) v`` in fp32, cast back."""
    _check(q, k, v)
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    scores = q.float() @ k.float().transpose(-2, -1) * sm_scale  # [B, H, S_q, S_k]
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype)


__all__ = ["naive_fused_attention", "naive_fused_attention_ref", "naive_fused_attention_kernel", "HEAD_DIMS"]
