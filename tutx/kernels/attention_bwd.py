"""Backward pass of the FlashAttention kernel (FlashAttention-2 algorithm), in three launches.

With ``P = softmax(S)``, ``S = sm_scale · q kᵀ`` and the upstream gradient ``dO``:

    dV = Pᵀ dO        dP = dO Vᵀ        dS = P ∘ (dP − δ),  δ = rowsum(dO ∘ O)
    dQ = sm_scale · dS K                dK = sm_scale · dSᵀ Q

``P`` is never stored: each kernel recomputes a block of it as ``exp2(S·log2e − lse)`` from the
log-sum-exp saved by the forward pass. The launches:

1. ``bwd_delta_kernel`` — δ per query row (a cheap pre-pass, so the others need not touch O);
2. ``bwd_dkdv_kernel`` — one program per key block accumulates dK and dV over all query blocks
   *and over all query heads of its GQA group*, so the group sum needs no extra buffer or atomics;
3. ``bwd_dq_kernel`` — one program per query block accumulates dQ over the key blocks.

Separate dK/dV and dQ kernels do some recomputation twice but write each gradient exactly once,
so results are deterministic (no atomics). Both split the causal loop like the forward: blocks
straddling the diagonal are masked, the others are not. The pre-pass, the loads that open each
kernel and the stores that close it are shared with the sliding-window backward
(``backward_common.py``).
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

# (BLOCK_M, BLOCK_N, num_warps, num_stages). dK/dV: BLOCK_N keys stay resident, BLOCK_M queries
# stream; dQ: the other way round. The last entry of each row fits a T4's 64 KB of shared memory.
_DKDV_CONFIGS = {
    "small_d": [(32, 128, 8, 3), (64, 64, 4, 3), (32, 64, 4, 2)],
    "d128": [(32, 128, 8, 2), (64, 64, 4, 2), (32, 64, 4, 2), (32, 32, 4, 2)],
}
_DQ_CONFIGS = {
    "small_d": [(128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 4, 2)],
    "d128": [(128, 32, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2), (32, 32, 4, 2)],
}


@triton.jit
def _dkdv_stage(dk, dv, k, v, Q, DO, LSE, DELTA, stride_qm, stride_dom, lo, hi, offs_n, S_q, diag,
                qk_scale, MASKED: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """Accumulate one query head's contribution over query blocks ``[lo, hi)`` into dK, dV.

    Query rows past ``S_q`` load as zeros (and lse = δ = 0), which makes their terms exactly
    zero, so only causality needs a mask. Rows of dK/dV past ``S_k`` are never stored.
    """
    offs_d = tl.arange(0, HEAD_DIM)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)  # [BM]
        in_q = offs_m < S_q
        q_t = tl.load(Q + offs_m[None, :] * stride_qm + offs_d[:, None], mask=in_q[None, :], other=0.0)  # [D, BM]
        lse = tl.load(LSE + offs_m, mask=in_q, other=0.0)  # [BM]
        p_t = tl.exp2(tl.dot(k, q_t) * qk_scale - lse[None, :])  # [BN, BM] = Pᵀ
        if MASKED:
            p_t = tl.where(offs_n[:, None] <= offs_m[None, :] + diag, p_t, 0.0)
        do = tl.load(DO + offs_m[:, None] * stride_dom + offs_d[None, :], mask=in_q[:, None], other=0.0)  # [BM, D]
        dv = tl.dot(p_t.to(do.dtype), do, dv)  # [BN, D]
        delta = tl.load(DELTA + offs_m, mask=in_q, other=0.0)  # [BM]
        dp_t = tl.dot(v, tl.trans(do))  # [BN, BM] = dPᵀ
        ds_t = p_t * (dp_t - delta[None, :])  # [BN, BM] = dSᵀ (without sm_scale)
        dk = tl.dot(ds_t.to(q_t.dtype), tl.trans(q_t), dk)  # [BN, D]
    return dk, dv


@triton.autotune(configs=autotune_configs(_DKDV_CONFIGS, "BLOCK_M", "BLOCK_N", (16, 32)),
                 key=["TUNE_Q", "TUNE_K", "HEAD_DIM", "CAUSAL"],
                 prune_configs_by={"early_config_prune": head_dim_pruner(_DKDV_CONFIGS, "BLOCK_M", "BLOCK_N")})
@triton.jit
def bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, sm_scale,
                    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                    stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                    stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
                    Hq, Hkv, GROUP, S_q, S_k, TUNE_Q, TUNE_K,
                    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program: ``BLOCK_N`` keys of one (batch, KV head); grid ``(cdiv(S_k, BN), B*Hkv)``."""
    b, kvh, offs_n, k, v = load_key_block(K, V, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
                                          Hkv, S_k, HEAD_DIM, BLOCK_N)  # k, v: [BN, D]
    start_n = tl.program_id(0) * BLOCK_N
    dk = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], tl.float32)

    diag = S_k - S_q  # query i sees keys j <= i + diag
    lo = 0
    mid = 0  # query blocks in [lo, mid) straddle the diagonal; from mid on every row sees every key
    if CAUSAL:
        lo = (tl.maximum(start_n - diag, 0) // BLOCK_M) * BLOCK_M
        mid = tl.cdiv(tl.maximum(start_n + BLOCK_N - 1 - diag, 0), BLOCK_M) * BLOCK_M
        mid = tl.minimum(mid, tl.cdiv(S_q, BLOCK_M) * BLOCK_M)
    for g in range(0, GROUP):  # every query head that reads this KV head
        bh = b * Hq + kvh * GROUP + g  # flat (batch, query head) index
        h = kvh * GROUP + g
        q_base = Q + b * stride_qb + h * stride_qh
        do_base = DO + b * stride_dob + h * stride_doh
        if CAUSAL:
            dk, dv = _dkdv_stage(dk, dv, k, v, q_base, do_base, LSE + bh * S_q, DELTA + bh * S_q,
                                 stride_qm, stride_dom, lo, mid, offs_n, S_q, diag, qk_scale,
                                 True, HEAD_DIM, BLOCK_M)
        dk, dv = _dkdv_stage(dk, dv, k, v, q_base, do_base, LSE + bh * S_q, DELTA + bh * S_q,
                             stride_qm, stride_dom, mid, S_q, offs_n, S_q, diag, qk_scale,
                             False, HEAD_DIM, BLOCK_M)

    store_key_grads(DK, DV, dk, dv, b, kvh, offs_n, S_k, sm_scale, stride_dkb, stride_dkh, stride_dkn,
                    stride_dvb, stride_dvh, stride_dvn, HEAD_DIM)


@triton.jit
def _dq_stage(dq, q, do, lse, delta, K, V, stride_kn, stride_vn, lo, hi, offs_m, S_k, diag, qk_scale,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
              BLOCK_N: tl.constexpr):
    """Accumulate dQ over key blocks ``[lo, hi)``; ``MASKED`` applies key bounds and causality."""
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)  # [BN]
        in_k = cols < S_k
        if MASKED:  # kᵀ, vᵀ: [D, BN]
            k_t = tl.load(K + cols[None, :] * stride_kn + offs_d[:, None], mask=in_k[None, :], other=0.0)
            v_t = tl.load(V + cols[None, :] * stride_vn + offs_d[:, None], mask=in_k[None, :], other=0.0)
        else:  # whole blocks inside the keys
            k_t = tl.load(K + cols[None, :] * stride_kn + offs_d[:, None])  # [D, BN]
            v_t = tl.load(V + cols[None, :] * stride_vn + offs_d[:, None])  # [D, BN]
        p = tl.exp2(tl.dot(q, k_t) * qk_scale - lse[:, None])  # [BM, BN]
        if MASKED:
            keep = in_k[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            p = tl.where(keep, p, 0.0)
        dp = tl.dot(do, v_t)  # [BM, BN]
        ds = p * (dp - delta[:, None])  # [BM, BN]
        dq = tl.dot(ds.to(k_t.dtype), tl.trans(k_t), dq)  # [BM, D]
    return dq


@triton.autotune(configs=autotune_configs(_DQ_CONFIGS, "BLOCK_M", "BLOCK_N", (32, 16)),
                 key=["TUNE_Q", "TUNE_K", "HEAD_DIM", "CAUSAL"],
                 prune_configs_by={"early_config_prune": head_dim_pruner(_DQ_CONFIGS, "BLOCK_M", "BLOCK_N")})
@triton.jit
def bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, qk_scale, sm_scale,
                  stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                  stride_vb, stride_vh, stride_vn, stride_dob, stride_doh, stride_dom,
                  stride_dqb, stride_dqh, stride_dqm,
                  Hq, GROUP, S_q, S_k, TUNE_Q, TUNE_K,
                  HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program: ``BLOCK_M`` queries of one (batch, query head); grid ``(cdiv(S_q, BM), B*Hq)``."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # longest causal rows first
    b, h, offs_m, q, do, lse, delta = load_query_block(Q, DO, LSE, DELTA, pid_m, stride_qb, stride_qh, stride_qm,
                                                       stride_dob, stride_doh, stride_dom, Hq, S_q,
                                                       HEAD_DIM, BLOCK_M)  # q, do: [BM, D]; lse, delta: [BM]
    kvh = h // GROUP
    start_m = pid_m * BLOCK_M
    K += b * stride_kb + kvh * stride_kh
    V += b * stride_vb + kvh * stride_vh
    dq = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    diag = S_k - S_q
    if CAUSAL:
        hi_full = tl.minimum(start_m + diag + 1, S_k)
        hi = tl.minimum(start_m + BLOCK_M + diag, S_k)
    else:
        hi_full = S_k
        hi = S_k
    hi_full = (hi_full // BLOCK_N) * BLOCK_N
    dq = _dq_stage(dq, q, do, lse, delta, K, V, stride_kn, stride_vn, 0, hi_full, offs_m, S_k, diag,
                   qk_scale, False, CAUSAL, HEAD_DIM, BLOCK_N)
    dq = _dq_stage(dq, q, do, lse, delta, K, V, stride_kn, stride_vn, hi_full, hi, offs_m, S_k, diag,
                   qk_scale, True, CAUSAL, HEAD_DIM, BLOCK_N)
    store_query_grads(DQ, dq, b, h, offs_m, S_q, sm_scale, stride_dqb, stride_dqh, stride_dqm, HEAD_DIM)


def flash_attention_backward(q, k, v, o, lse, do, causal: bool, sm_scale: float):
    """Gradients ``(dq, dk, dv)`` of the forward pass; ``lse`` is the base-2 LSE ``[B, Hq, S_q]``."""
    return launch_backward(bwd_dkdv_kernel, bwd_dq_kernel, q, k, v, o, lse, do, causal, sm_scale)


__all__ = ["flash_attention_backward", "bwd_dkdv_kernel", "bwd_dq_kernel"]
