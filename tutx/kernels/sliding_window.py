"""Sliding-window (local) + global attention whose kernel visits only the key blocks it needs.

The pattern (Longformer / Mistral / StreamingLLM "sinks") is defined in :mod:`tutx.kernels.masks`:
query position ``p`` sees the keys of its band ``|p - j| < window``, the global tokens
``j < num_global_tokens`` (and global queries see every key); causal keeps ``j <= p``. A dense
mask would still cost O(S²); here each query block loops over at most two key ranges — the
global blocks and the blocks overlapping its band — so the work is O(S · (window +
num_global_tokens)). Blocks that every row of a query block sees whole skip the mask, as in the
dense kernel's two stages; the band's edge blocks and the global blocks are masked.
"""
from __future__ import annotations

import torch

from tutx._validate import check_int
from tutx.kernels._attention_common import (
    LOG2E,
    autotune_configs,
    check_qkv,
    head_dim_pruner,
    resolve_scale,
    run_attention_kernel,
    seq_bucket,
)
from tutx.kernels._dispatch import use_triton
from tutx.kernels._triton import tl, triton
from tutx.kernels.attention import flash_attention_ref
from tutx.kernels.forward_common import load_query_tile, store_output
from tutx.kernels.masks import allowed, full_block_range, key_ranges, sliding_window_mask
from tutx.kernels.sliding_window_bwd import sliding_window_backward

# (BLOCK_M, BLOCK_N, num_warps, num_stages); the last entry of each row fits a T4.
_FWD_CONFIGS = {
    "small_d": [(128, 64, 4, 3), (64, 64, 4, 3), (64, 32, 4, 2)],
    "d128": [(128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)],
}


@triton.jit
def _swa_fwd_range(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, lo, hi, pos_q, S_k, window, n_global,
                   qk_scale, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                   MASKED: tl.constexpr):
    """Online-softmax update over key blocks ``[lo, hi)``.

    ``MASKED`` blocks may hold pairs outside the pattern (a row may even see none of a block);
    unmasked ones lie inside every row's window, so they skip the mask, the bounds checks and
    the all-masked-row guard — most of a long window's blocks, as in the dense kernel's split.
    """
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)  # [BN]
        if MASKED:
            in_k = cols < S_k
            k = tl.load(K + cols[None, :] * stride_kn + offs_d[:, None], mask=in_k[None, :], other=0.0)  # [D, BN]
            qk = tl.dot(q, k) * qk_scale  # [BM, BN]
            qk = tl.where(allowed(pos_q[:, None], cols[None, :], S_k, window, n_global, CAUSAL), qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))  # [BM]
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing visible yet
            v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :], mask=in_k[:, None], other=0.0)  # [BN, D]
        else:
            k = tl.load(K + cols[None, :] * stride_kn + offs_d[:, None])  # [D, BN]
            qk = tl.dot(q, k) * qk_scale  # [BM, BN]
            m_new = tl.maximum(m_i, tl.max(qk, 1))  # [BM]
            m_safe = m_new
            v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :])  # [BN, D]
        p = tl.exp2(qk - m_safe[:, None])  # [BM, BN]
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])  # [BM, D]
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=autotune_configs(_FWD_CONFIGS, "BLOCK_M", "BLOCK_N", (16, 16)),
                 key=["TUNE_Q", "TUNE_K", "window", "n_global", "HEAD_DIM", "CAUSAL"],
                 prune_configs_by={"early_config_prune": head_dim_pruner(_FWD_CONFIGS, "BLOCK_M", "BLOCK_N")})
@triton.jit
def sliding_window_attention_kernel(Q, K, V, O, LSE, VISITS, qk_scale,
                                    stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                                    stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                                    Hq, GROUP, S_q, S_k, TUNE_Q, TUNE_K, window, n_global,
                                    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, COUNT: tl.constexpr,
                                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Grid ``(cdiv(S_q, BM), B*Hq)``; with ``COUNT`` each program records how many key blocks it visited."""
    pid_m = tl.program_id(0)
    b, h, offs_m, q, K, V = load_query_tile(Q, K, V, pid_m, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh,
                                            stride_vb, stride_vh, Hq, GROUP, S_q, HEAD_DIM, BLOCK_M)  # q: [BM, D]
    pos_q = offs_m + (S_k - S_q)  # absolute positions, [BM]
    p_last = tl.minimum(pid_m * BLOCK_M + BLOCK_M, S_q) - 1 + (S_k - S_q)
    g_hi, lo, hi = key_ranges(pid_m * BLOCK_M + (S_k - S_q), p_last, S_k, window, n_global, CAUSAL, BLOCK_N)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    p_first = pid_m * BLOCK_M + (S_k - S_q)
    full_lo, full_hi = full_block_range(p_first, p_last, lo, hi, S_k, window, CAUSAL, BLOCK_N)
    acc, l_i, m_i = _swa_fwd_range(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, 0, g_hi, pos_q, S_k,
                                   window, n_global, qk_scale, CAUSAL, HEAD_DIM, BLOCK_N, True)
    acc, l_i, m_i = _swa_fwd_range(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, lo, full_lo, pos_q, S_k,
                                   window, n_global, qk_scale, CAUSAL, HEAD_DIM, BLOCK_N, True)
    acc, l_i, m_i = _swa_fwd_range(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, full_lo, full_hi, pos_q, S_k,
                                   window, n_global, qk_scale, CAUSAL, HEAD_DIM, BLOCK_N, False)
    acc, l_i, m_i = _swa_fwd_range(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, full_hi, hi, pos_q, S_k,
                                   window, n_global, qk_scale, CAUSAL, HEAD_DIM, BLOCK_N, True)
    store_output(O, LSE, acc, l_i, m_i, b, h, offs_m, Hq, S_q, stride_ob, stride_oh, stride_om, HEAD_DIM)
    if COUNT:
        visited = tl.cdiv(g_hi, BLOCK_N) + tl.cdiv(tl.maximum(hi - lo, 0), BLOCK_N)
        tl.store(VISITS + (b * Hq + h) * S_q + pid_m, visited)  # row stride S_q >= #query blocks


def sliding_window_forward(q, k, v, window, n_global, causal, sm_scale, count_blocks=False):
    """Launch the forward kernel: ``(o, lse, visits)``.

    With ``count_blocks``, ``visits[b, h, m]`` is how many key blocks the program of query block
    ``m`` visited (``[B, Hq, cdiv(S_q, BLOCK_M)]``, int32) — how the tests check the O(S·W) claim;
    otherwise ``visits`` is None.
    """
    (batch, hq, s_q, d), hkv, s_k = q.shape, k.shape[1], k.shape[2]
    o = torch.empty_like(q, memory_format=torch.contiguous_format)  # [B, Hq, S_q, D]
    lse = torch.empty((batch, hq, s_q), device=q.device, dtype=torch.float32)  # [B, Hq, S_q]
    visits = torch.zeros((batch, hq, s_q), device=q.device, dtype=torch.int32) if count_blocks else lse
    grid = lambda meta: (triton.cdiv(s_q, meta["BLOCK_M"]), batch * hq)  # noqa: E731
    sliding_window_attention_kernel[grid](
        q, k, v, o, lse, visits, sm_scale * LOG2E,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        hq, hq // hkv, s_q, s_k, seq_bucket(s_q), seq_bucket(s_k), window, n_global,
        HEAD_DIM=d, CAUSAL=causal, COUNT=count_blocks)
    if not count_blocks:
        return o, lse, None
    n_m = triton.cdiv(s_q, sliding_window_attention_kernel.best_config.kwargs["BLOCK_M"])
    return o, lse, visits[:, :, :n_m]


def _forward_for_autograd(q, k, v, window, n_global, causal, sm_scale):
    o, lse, _ = sliding_window_forward(q, k, v, window, n_global, causal, sm_scale)
    return o, lse


def _check_pattern(q, k, v, window, num_global_tokens, causal):
    check_qkv(q, k, v, causal)
    check_int("window", window, minimum=1)  # query p sees keys |p - j| < window
    check_int("num_global_tokens", num_global_tokens, minimum=0)
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"q: sliding-window attention aligns queries to the end of the keys and needs "
                         f"S_q <= S_k, got S_q={q.shape[2]} > S_k={k.shape[2]}")


def sliding_window_attention(q, k, v, window: int, num_global_tokens: int = 0, causal: bool = True,
                             sm_scale: float | None = None) -> torch.Tensor:
    """Local-band + global-token attention, ``[B, Hq, S_q, D]`` out, differentiable in q, k, v.

    Same layouts, dtypes, GQA and dispatch as :func:`tutx.kernels.attention.flash_attention`
    (``backend="triton"``); :func:`tutx.kernels.masks.sliding_window_mask` draws the pattern.
    """
    _check_pattern(q, k, v, window, num_global_tokens, causal)
    sm_scale = resolve_scale(sm_scale, q.shape[-1])
    if not use_triton(q, k, v):
        return sliding_window_attention_ref(q, k, v, window, num_global_tokens, causal, sm_scale)
    return run_attention_kernel(_forward_for_autograd, sliding_window_backward, q, k, v,
                                window, num_global_tokens, causal, sm_scale)


def sliding_window_attention_ref(q, k, v, window: int, num_global_tokens: int = 0, causal: bool = True,
                                 sm_scale: float | None = None) -> torch.Tensor:
    """Dense masked attention in fp32 (O(S²) memory): the ground truth for the kernel."""
    _check_pattern(q, k, v, window, num_global_tokens, causal)
    keep = sliding_window_mask(q.shape[2], k.shape[2], window, num_global_tokens, causal, q.device)  # [S_q, S_k]
    return flash_attention_ref(q, k, v, causal=False, sm_scale=sm_scale, mask=keep)


__all__ = ["sliding_window_attention", "sliding_window_attention_ref", "sliding_window_attention_kernel",
           "sliding_window_forward"]
