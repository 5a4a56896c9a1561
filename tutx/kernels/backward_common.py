"""Pieces shared by the backward kernels of dense and sliding-window attention.

Both run the FlashAttention-2 backward in three launches (``attention_bwd.py`` explains the
algebra): the δ pre-pass below, a dK/dV kernel with one program per key block and a dQ kernel
with one program per query block. Only the loops differ — which blocks a program visits and how
they are masked — so the pre-pass, the loads that open each kernel, the stores that close it and
the launch sequence live here once.
"""
from __future__ import annotations

import torch

from tutx.kernels._attention_common import LOG2E, seq_bucket
from tutx.kernels._triton import tl, triton

DELTA_BLOCK_M = 64


@triton.jit
def bwd_delta_kernel(O, DO, DELTA, stride_ob, stride_oh, stride_om, stride_db, stride_dh, stride_dm,
                     Hq, S_q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """δ = rowsum(dO ∘ O) in fp32, ``[B, Hq, S_q]``; grid ``(cdiv(S_q, BM), B*Hq)``."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m[:, None] < S_q
    o = tl.load(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
                mask=in_q, other=0.0)  # [BM, D]
    do = tl.load(DO + b * stride_db + h * stride_dh + offs_m[:, None] * stride_dm + offs_d[None, :],
                 mask=in_q, other=0.0)  # [BM, D]
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)  # [BM]
    tl.store(DELTA + pid_bh.to(tl.int64) * S_q + offs_m, delta, mask=offs_m < S_q)


@triton.jit
def load_key_block(K, V, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn, Hkv, S_k,
                   HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """Opening of a dK/dV program (grid ``(cdiv(S_k, BN), B*Hkv)``): its keys and values ``[BN, D]``."""
    pid_bkv = tl.program_id(1)
    b = (pid_bkv // Hkv).to(tl.int64)
    kvh = (pid_bkv % Hkv).to(tl.int64)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, HEAD_DIM)
    in_k = offs_n[:, None] < S_k
    k = tl.load(K + b * stride_kb + kvh * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=in_k, other=0.0)  # [BN, D]
    v = tl.load(V + b * stride_vb + kvh * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                mask=in_k, other=0.0)  # [BN, D]
    return b, kvh, offs_n, k, v


@triton.jit
def store_key_grads(DK, DV, dk, dv, b, kvh, offs_n, S_k, sm_scale, stride_dkb, stride_dkh, stride_dkn,
                    stride_dvb, stride_dvh, stride_dvn, HEAD_DIM: tl.constexpr):
    """Close a dK/dV program: dK gets its ``sm_scale``; rows past ``S_k`` are not stored."""
    offs_d = tl.arange(0, HEAD_DIM)
    in_k = offs_n[:, None] < S_k
    dk = dk * sm_scale
    tl.store(DK + b * stride_dkb + kvh * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=in_k)
    tl.store(DV + b * stride_dvb + kvh * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=in_k)


@triton.jit
def load_query_block(Q, DO, LSE, DELTA, pid_m, stride_qb, stride_qh, stride_qm, stride_dob, stride_doh,
                     stride_dom, Hq, S_q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """Opening of a dQ program (grid ``(cdiv(S_q, BM), B*Hq)``): q and dO ``[BM, D]``, lse and δ ``[BM]``."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < S_q
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=in_q[:, None], other=0.0)  # [BM, D]
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                 mask=in_q[:, None], other=0.0)  # [BM, D]
    lse = tl.load(LSE + pid_bh.to(tl.int64) * S_q + offs_m, mask=in_q, other=0.0)  # [BM]
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * S_q + offs_m, mask=in_q, other=0.0)  # [BM]
    return b, h, offs_m, q, do, lse, delta


@triton.jit
def store_query_grads(DQ, dq, b, h, offs_m, S_q, sm_scale, stride_dqb, stride_dqh, stride_dqm,
                      HEAD_DIM: tl.constexpr):
    """Close a dQ program: dQ gets its ``sm_scale``; rows past ``S_q`` are not stored."""
    offs_d = tl.arange(0, HEAD_DIM)
    dq = dq * sm_scale
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=(offs_m < S_q)[:, None])


def launch_backward(dkdv_kernel, dq_kernel, q, k, v, o, lse, do, causal: bool, sm_scale: float, *pattern):
    """δ pre-pass, then the two gradient kernels; returns ``(dq, dk, dv)``.

    Both kernels take the same leading arguments; ``pattern`` (e.g. ``window, n_global``) is
    passed after the autotuning keys, before the constexprs.
    """
    (batch, hq, s_q, d), (hkv, s_k) = q.shape, k.shape[1:3]
    delta = torch.empty_like(lse)  # [B, Hq, S_q] fp32
    bwd_delta_kernel[(triton.cdiv(s_q, DELTA_BLOCK_M), batch * hq)](
        o, do, delta, *o.stride()[:3], *do.stride()[:3], hq, s_q, HEAD_DIM=d, BLOCK_M=DELTA_BLOCK_M)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)  # [B, Hq, S_q, D]
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)  # [B, Hkv, S_k, D]
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)  # [B, Hkv, S_k, D]
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    qk_scale = sm_scale * LOG2E
    tune = (seq_bucket(s_q), seq_bucket(s_k))
    dkdv_kernel[lambda meta: (triton.cdiv(s_k, meta["BLOCK_N"]), batch * hkv)](
        q, k, v, do, lse, delta, dk, dv, qk_scale, sm_scale, *strides, *dk.stride()[:3], *dv.stride()[:3],
        hq, hkv, hq // hkv, s_q, s_k, *tune, *pattern, HEAD_DIM=d, CAUSAL=causal)
    dq_kernel[lambda meta: (triton.cdiv(s_q, meta["BLOCK_M"]), batch * hq)](
        q, k, v, do, lse, delta, dq, qk_scale, sm_scale, *strides, *dq.stride()[:3],
        hq, hq // hkv, s_q, s_k, *tune, *pattern, HEAD_DIM=d, CAUSAL=causal)
    return dq, dk, dv


__all__ = ["DELTA_BLOCK_M", "bwd_delta_kernel", "load_key_block", "store_key_grads", "load_query_block",
           "store_query_grads", "launch_backward"]
