"""Backward pass of sliding-window + global attention: the dense backward, restricted to the blocks
the pattern touches.

The algebra is the one in ``attention_bwd.py`` (δ pre-pass, then dK/dV per key block and dQ per
query block, probabilities recomputed from the saved log-sum-exp), and so are the pre-pass, the
kernels' opening loads, closing stores and the launches (``backward_common.py``). What changes is
*which* blocks each program loops over: a key block is seen by the queries whose band covers it,
by the global queries, and — if it holds global keys — by every query
(:func:`tutx.kernels.masks.query_ranges`); a query block needs the same key ranges as in the
forward pass (:func:`tutx.kernels.masks.key_ranges`).
"""
from __future__ import annotations

import torch

from tutx.kernels._attention_common import autotune_configs, head_dim_pruner
from tutx.kernels._triton import tl, triton
from tutx.kernels.backward_common import (
    launch_backward,
    load_key_block,
    load_query_block,
    store_key_grads,
    store_query_grads,
)
from tutx.kernels.masks import allowed, key_ranges, query_ranges

# (BLOCK_M, BLOCK_N, num_warps, num_stages); the last entry of each row fits a T4.
_DKDV_CONFIGS = {"small_d": [(64, 64, 4, 3), (32, 64, 4, 2)], "d128": [(64, 64, 4, 2), (32, 32, 4, 2)]}
_DQ_CONFIGS = {"small_d": [(64, 64, 4, 3), (64, 32, 4, 2)], "d128": [(64, 64, 4, 2), (32, 32, 4, 2)]}


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
def swa_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, sm_scale,
                    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                    stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                    Hq, Hkv, GROUP, S_q, S_k, TUNE_Q, TUNE_K, window, n_global,
                    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid ``(cdiv(S_k, BN), B*Hkv)``; sums over the query heads of the GQA group."""
    b, kvh, offs_n, k, v = load_key_block(K, V, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                                          Hkv, S_k, HEAD_DIM, BLOCK_N)  # k, v: [BN, D]
    n_first = tl.program_id(0) * BLOCK_N
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
    store_key_grads(DK, DV, dk, dv, b, kvh, offs_n, S_k, sm_scale, stride_dkb, stride_dkh, stride_dkn,
                    stride_dvb, stride_dvh, stride_dvn, HEAD_DIM)


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
def swa_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, qk_scale, sm_scale,
                  stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                  stride_dqb, stride_dqh, stride_dqm,
                  Hq, GROUP, S_q, S_k, TUNE_Q, TUNE_K, window, n_global,
                  HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid ``(cdiv(S_q, BM), B*Hq)``."""
    pid_m = tl.program_id(0)
    b, h, offs_m, q, do, lse, delta = load_query_block(Q, DO, LSE, DELTA, pid_m, stride_qb, stride_qh, stride_qm,
                                                       stride_dob, stride_doh, stride_dom, Hq, S_q,
                                                       HEAD_DIM, BLOCK_M)  # q, do: [BM, D]; lse, delta: [BM]
    kvh = h // GROUP
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
    store_query_grads(DQ, dq, b, h, offs_m, S_q, sm_scale, stride_dqb, stride_dqh, stride_dqm, HEAD_DIM)


def sliding_window_backward(q, k, v, o, lse, do, window, n_global, causal, sm_scale):
    """Gradients ``(dq, dk, dv)`` of sliding-window attention from the saved base-2 LSE."""
    return launch_backward(swa_dkdv_kernel, swa_dq_kernel, q, k, v, o, lse, do, causal, sm_scale, window, n_global)


__all__ = ["sliding_window_backward", "swa_dkdv_kernel", "swa_dq_kernel"]
