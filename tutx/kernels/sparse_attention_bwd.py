"""Backward pass of sliding-window + global attention: the dense backward, restricted to the blocks
the pattern touches.

The algebra is the one in ``attention_bwd.py`` (δ pre-pass, then dK/dV per key block and dQ per
query block, probabilities recomputed from the saved log-sum-exp). What changes is *which*
blocks each program loops over: a key block is seen by the queries whose band covers it, by the
global queries, and — if it holds global keys — by every query; a query block needs the same key
ranges as in the forward pass (:func:`tutx.kernels.sparse_attention.key_ranges`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tutx.kernels._attention_common import LOG2E, autotune_configs, head_dim_pruner, seq_bucket
from tutx.kernels.attention_bwd import _DELTA_BLOCK_M, _bwd_delta_kernel
from tutx.kernels.sparse_attention import allowed, key_ranges

# (BLOCK_M, BLOCK_N, num_warps, num_stages); the last entry of each row fits a T4.
_DKDV_CONFIGS = {"small_d": [(64, 64, 4, 3), (32, 64, 4, 2)], "d128": [(64, 64, 4, 2), (32, 32, 4, 2)]}
_DQ_CONFIGS = {"small_d": [(64, 64, 4, 3), (64, 32, 4, 2)], "d128": [(64, 64, 4, 2), (32, 32, 4, 2)]}


@triton.jit
def query_ranges(n_first, n_last, S_q, off, window, n_global, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr):
    """Query-row ranges ``[lo1, hi1)`` and ``[lo2, hi2)`` that see keys ``n_first..n_last`` (p = i + off)."""
    holds_global = n_first < n_global
    if CAUSAL:  # a global key is seen by every later query; global queries see only global keys
        lo1 = tl.where(holds_global, (tl.maximum(n_first - off, 0) // BLOCK_M) * BLOCK_M, 0)
        hi1 = tl.where(holds_global, S_q, 0)
        p_lo = n_first
    else:  # global queries (p < n_global) see every key; a global key is seen by every query
        lo1 = 0
        g_rows = tl.minimum(tl.cdiv(tl.maximum(n_global - off, 0), BLOCK_M) * BLOCK_M, S_q)
        hi1 = tl.where(holds_global, S_q, g_rows)
        p_lo = n_first - window + 1
    lo2 = tl.maximum((tl.maximum(p_lo - off, 0) // BLOCK_M) * BLOCK_M, hi1)
    hi2 = tl.minimum(n_last + window - off, S_q)
    return lo1, hi1, lo2, hi2


@triton.jit
def _swa_dkdv_range(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qm, stride_dom, lo, hi, offs_n, S_q, S_k,
                    window, n_global, qk_scale, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                    BLOCK_M: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)  # [BM]
        in_q = offs_m < S_q
        q_t = tl.load(Q + offs_m[None, :] * stride_qm + offs_d[:, None], mask=in_q[None, :], other=0.0)  # [D, BM]
        lse = tl.load(LSE + offs_m, mask=in_q, other=0.0)  # [BM]
        keep = allowed((offs_m + S_k - S_q)[None, :], offs_n[:, None], S_k, window, n_global, CAUSAL)
        p_t = tl.where(keep & in_q[None, :], tl.exp2(tl.dot(k, q_t) * qk_scale - lse[None, :]), 0.0)  # [BN, BM]
        do = tl.load(DO + offs_m[:, None] * stride_dom + offs_d[None, :], mask=in_q[:, None], other=0.0)  # [BM, D]
        dv = tl.dot(p_t.to(do.dtype), do, dv)  # [BN, D]
        delta = tl.load(DELTA + offs_m, mask=in_q, other=0.0)  # [BM]
        ds_t = p_t * (tl.dot(v, tl.trans(do)) - delta[None, :])  # [BN, BM]
        dk = tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), dk)  # [BN, D]
    return dk, dv


@triton.autotune(configs=autotune_configs(_DKDV_CONFIGS, "BLOCK_M", "BLOCK_N", (16, 16)),
                 key=["TUNE_Q", "TUNE_K", "window", "n_global", "HEAD_DIM", "CAUSAL"],
                 prune_configs_by={"early_config_prune": head_dim_pruner(_DKDV_CONFIGS, "BLOCK_M", "BLOCK_N")})
@triton.jit
def _swa_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, sm_scale,
                     stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                     stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                     stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                     Hq, Hkv, GROUP, S_q, S_k, TUNE_Q, TUNE_K, window, n_global,
                     HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid ``(cdiv(S_k, BN), B*Hkv)``; sums over the query heads of the GQA group."""
    pid_bkv = tl.program_id(1)
    b = (pid_bkv // Hkv).to(tl.int64)
    kvh = (pid_bkv % Hkv).to(tl.int64)
    n_first = tl.program_id(0) * BLOCK_N
    offs_n = n_first + tl.arange(0, BLOCK_N)  # [BN]
    offs_d = tl.arange(0, HEAD_DIM)
    in_k = offs_n[:, None] < S_k
    k = tl.load(K + b * stride_kb + kvh * stride_kh + offs_n[:, None] * stride_kn + offs_d[None, :],
                mask=in_k, other=0.0)  # [BN, D]
    v = tl.load(V + b * stride_vb + kvh * stride_vh + offs_n[:, None] * stride_vn + offs_d[None, :],
                mask=in_k, other=0.0)  # [BN, D]
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    n_last = tl.minimum(n_first + BLOCK_N, S_k) - 1
    lo1, hi1, lo2, hi2 = query_ranges(n_first, n_last, S_q, S_k - S_q, window, n_global, CAUSAL, BLOCK_M)
    for g in range(0, GROUP):
        h = kvh * GROUP + g
        bh = b * Hq + h
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        dk, dv = _swa_dkdv_range(dk, dv, k, v, q_base, do_base, LSE + bh * S_q, DELTA + bh * S_q, stride_qm,
                                 stride_dom, lo1, hi1, offs_n, S_q, S_k, window, n_global, qk_scale,
                                 CAUSAL, HEAD_DIM, BLOCK_M)
        dk, dv = _swa_dkdv_range(dk, dv, k, v, q_base, do_base, LSE + bh * S_q, DELTA + bh * S_q, stride_qm,
                                 stride_dom, lo2, hi2, offs_n, S_q, S_k, window, n_global, qk_scale,
                                 CAUSAL, HEAD_DIM, BLOCK_M)
    tl.store(DK + b * stride_dkb + kvh * stride_dkh + offs_n[:, None] * stride_dkn + offs_d[None, :],
             (dk * sm_scale).to(DK.dtype.element_ty), mask=in_k)
    tl.store(DV + b * stride_dvb + kvh * stride_dvh + offs_n[:, None] * stride_dvn + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=in_k)


@triton.jit
def _swa_dq_range(dq, q, do, lse, delta, K, V, stride_kn, stride_vn, lo, hi, pos_q, S_k, window, n_global,
                  qk_scale, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)  # [BN]
        in_k = cols < S_k
        k_t = tl.load(K + cols[None, :] * stride_kn + offs_d[:, None], mask=in_k[None, :], other=0.0)  # [D, BN]
        v_t = tl.load(V + cols[None, :] * stride_vn + offs_d[:, None], mask=in_k[None, :], other=0.0)  # [D, BN]
        keep = allowed(pos_q[:, None], cols[None, :], S_k, window, n_global, CAUSAL)
        p = tl.where(keep, tl.exp2(tl.dot(q, k_t) * qk_scale - lse[:, None]), 0.0)  # [BM, BN]
        ds = p * (tl.dot(do, v_t) - delta[:, None])  # [BM, BN]
        dq = tl.dot(ds.to(k_t.dtype), tl.trans(k_t), dq)  # [BM, D]
    return dq


@triton.autotune(configs=autotune_configs(_DQ_CONFIGS, "BLOCK_M", "BLOCK_N", (16, 16)),
                 key=["TUNE_Q", "TUNE_K", "window", "n_global", "HEAD_DIM", "CAUSAL"],
                 prune_configs_by={"early_config_prune": head_dim_pruner(_DQ_CONFIGS, "BLOCK_M", "BLOCK_N")})
@triton.jit
def _swa_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, qk_scale, sm_scale,
                   stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                   stride_dqb, stride_dqh, stride_dqm,
                   Hq, GROUP, S_q, S_k, TUNE_Q, TUNE_K, window, n_global,
                   HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid ``(cdiv(S_q, BM), B*Hq)``."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    kvh = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < S_q
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=in_q[:, None], other=0.0)  # [BM, D]
    do = tl.load(DO + b * stride_dob + h * stride_doh + offs_m[:, None] * stride_dom + offs_d[None, :],
                 mask=in_q[:, None], other=0.0)  # [BM, D]
    lse = tl.load(LSE + pid_bh.to(tl.int64) * S_q + offs_m, mask=in_q, other=0.0)  # [BM]
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * S_q + offs_m, mask=in_q, other=0.0)  # [BM]
    K += b * stride_kb + kvh * stride_kh
    V += b * stride_vb + kvh * stride_vh
    pos_q = offs_m + (S_k - S_q)
    p_last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, S_q) - 1 + (S_k - S_q)
    g_hi, lo, hi = key_ranges(pid_m * BLOCK_M + (S_k - S_q), p_last, S_k, window, n_global, CAUSAL, BLOCK_N)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    dq = _swa_dq_range(dq, q, do, lse, delta, K, V, stride_kn, stride_vn, 0, g_hi, pos_q, S_k, window,
                       n_global, qk_scale, CAUSAL, HEAD_DIM, BLOCK_N)
    dq = _swa_dq_range(dq, q, do, lse, delta, K, V, stride_kn, stride_vn, lo, hi, pos_q, S_k, window,
                       n_global, qk_scale, CAUSAL, HEAD_DIM, BLOCK_N)
    tl.store(DQ + b * stride_dqb + h * stride_dqh + offs_m[:, None] * stride_dqm + offs_d[None, :],
             (dq * sm_scale).to(DQ.dtype.element_ty), mask=in_q[:, None])


def sliding_window_backward(q, k, v, o, lse, do, window, n_global, causal, sm_scale):
    """Gradients ``(dq, dk, dv)`` of sliding-window attention from the saved base-2 LSE."""
    (batch, hq, s_q, d), (hkv, s_k) = q.shape, k.shape[1:3]
    delta = torch.empty_like(lse)  # [B, Hq, S_q] fp32
    _bwd_delta_kernel[(triton.cdiv(s_q, _DELTA_BLOCK_M), batch * hq)](
        o, do, delta, *o.stride()[:3], *do.stride()[:3], hq, s_q, HEAD_DIM=d, BLOCK_M=_DELTA_BLOCK_M)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)  # [B, Hq, S_q, D]
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)  # [B, Hkv, S_k, D]
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)  # [B, Hkv, S_k, D]
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *do.stride()[:3])
    qk_scale = sm_scale * LOG2E
    _swa_dkdv_kernel[lambda meta: (triton.cdiv(s_k, meta["BLOCK_N"]), batch * hkv)](
        q, k, v, do, lse, delta, dk, dv, qk_scale, sm_scale, *strides, *dk.stride()[:3], *dv.stride()[:3],
        hq, hkv, hq // hkv, s_q, s_k, seq_bucket(s_q), seq_bucket(s_k), window, n_global,
        HEAD_DIM=d, CAUSAL=causal)
    _swa_dq_kernel[lambda meta: (triton.cdiv(s_q, meta["BLOCK_M"]), batch * hq)](
        q, k, v, do, lse, delta, dq, qk_scale, sm_scale, *strides, *dq.stride()[:3],
        hq, hq // hkv, s_q, s_k, seq_bucket(s_q), seq_bucket(s_k), window, n_global,
        HEAD_DIM=d, CAUSAL=causal)
    return dq, dk, dv


__all__ = ["sliding_window_backward"]
