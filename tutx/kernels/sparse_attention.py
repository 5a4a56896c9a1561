"""Sliding-window (local) + global attention whose kernel visits only the key blocks it needs.

The pattern (Longformer / Mistral / StreamingLLM "sinks"): with absolute query position
``p = i + S_k - S_q`` (queries aligned to the end of the keys, as in dense causal attention),
query ``p`` may attend to key ``j`` when

* ``|p - j| < window`` — the local band (``window`` keys up to and including itself when causal), or
* ``j < num_global_tokens`` — every query sees the global tokens, or
* ``p < num_global_tokens`` — global tokens see every key,

and, when ``causal``, only if ``j <= p``. A dense mask would still cost O(S²); here each query
block loops over at most two key ranges — the global blocks and the blocks overlapping its band —
so the work is O(S · (window + num_global_tokens)). Every visited block is masked (no unmasked
fast stage: the band's edges cut through most blocks anyway at small windows).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tutx.kernels._attention_common import (
    LOG2E,
    autotune_configs,
    check_kernel_dtype,
    check_qkv,
    cuda_capability,
    head_dim_pruner,
    last_dim_contiguous,
    padded_head_dim,
    resolve_scale,
    seq_bucket,
)
from tutx.kernels._dispatch import use_triton

# (BLOCK_M, BLOCK_N, num_warps, num_stages); the last entry of each row fits a T4.
_FWD_CONFIGS = {
    "small_d": [(128, 64, 4, 3), (64, 64, 4, 3), (64, 32, 4, 2)],
    "d128": [(128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 2)],
}


@triton.jit
def allowed(pos_q, cols, S_k, window, n_global, CAUSAL: tl.constexpr):
    """Which (query position, key) pairs attend; ``pos_q`` and ``cols`` broadcast against each other."""
    dist = pos_q - cols
    ok = ((dist < window) & (dist > -window)) | (cols < n_global) | (pos_q < n_global)
    if CAUSAL:
        ok = ok & (dist >= 0)
    return ok & (cols < S_k)


@triton.jit
def key_ranges(p_first, p_last, S_k, window, n_global, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
    """Key ranges ``[0, g_hi)`` (global) and ``[lo, hi)`` (band) for queries at positions p_first..p_last."""
    if CAUSAL:
        hi = tl.minimum(p_last + 1, S_k)
        g_hi = tl.minimum(tl.cdiv(n_global, BLOCK_N) * BLOCK_N, hi)
    else:
        hi = tl.minimum(p_last + window, S_k)
        g_hi = tl.minimum(tl.cdiv(n_global, BLOCK_N) * BLOCK_N, S_k)
        g_hi = tl.where(p_first < n_global, S_k, g_hi)  # a global query sees every key
    lo = (tl.maximum(p_first - window + 1, 0) // BLOCK_N) * BLOCK_N
    lo = tl.maximum(lo, g_hi)
    return g_hi, lo, hi


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


@triton.jit
def full_block_range(p_first, p_last, lo, hi, S_k, window, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr):
    """``[full_lo, full_hi)`` inside ``[lo, hi)``: key blocks that every query row p_first..p_last sees whole."""
    full_lo = tl.cdiv(tl.maximum(p_last - window + 1, 0), BLOCK_N) * BLOCK_N
    if CAUSAL:
        full_hi = ((p_first + 1) // BLOCK_N) * BLOCK_N
    else:
        full_hi = (tl.minimum(p_first + window, S_k) // BLOCK_N) * BLOCK_N
    full_lo = tl.minimum(tl.maximum(full_lo, lo), hi)
    full_hi = tl.minimum(tl.maximum(full_hi, full_lo), hi)
    return full_lo, full_hi


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
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    kvh = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m[:, None] < S_q
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=in_q, other=0.0)  # [BM, D]
    K += b * stride_kb + kvh * stride_kh
    V += b * stride_vb + kvh * stride_vh
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
    l_i = tl.where(l_i > 0, l_i, 1.0)  # padded rows past S_q may see no key at all
    acc = acc / l_i[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             acc.to(O.dtype.element_ty), mask=in_q)
    tl.store(LSE + pid_bh.to(tl.int64) * S_q + offs_m, m_i + tl.log2(l_i), mask=offs_m < S_q)
    if COUNT:
        visited = tl.cdiv(g_hi, BLOCK_N) + tl.cdiv(tl.maximum(hi - lo, 0), BLOCK_N)
        tl.store(VISITS + pid_bh * S_q + pid_m, visited)  # row stride S_q >= #query blocks


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


class _SlidingWindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, window, n_global, causal, sm_scale):
        o, lse, _ = sliding_window_forward(q, k, v, window, n_global, causal, sm_scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.args = (window, n_global, causal, sm_scale)
        return o

    @staticmethod
    def backward(ctx, do):
        from tutx.kernels.sparse_attention_bwd import sliding_window_backward

        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = sliding_window_backward(q, k, v, o, lse, last_dim_contiguous(do), *ctx.args)
        return dq, dk, dv, None, None, None, None


def _check_pattern(q, k, v, window, num_global_tokens, causal):
    check_qkv(q, k, v, causal)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window: expected a positive int (query p sees keys |p - j| < window), got {window!r}")
    if isinstance(num_global_tokens, bool) or not isinstance(num_global_tokens, int) or num_global_tokens < 0:
        raise ValueError(f"num_global_tokens: expected an int >= 0, got {num_global_tokens!r}")
    if q.shape[2] > k.shape[2]:
        raise ValueError(f"q: sliding-window attention aligns queries to the end of the keys and needs "
                         f"S_q <= S_k, got S_q={q.shape[2]} > S_k={k.shape[2]}")


def sliding_window_attention(q, k, v, window: int, num_global_tokens: int = 0, causal: bool = True,
                             sm_scale: float | None = None) -> torch.Tensor:
    """Local-band + global-token attention, ``[B, Hq, S_q, D]`` out, differentiable in q, k, v.

    Same layouts, dtypes, GQA and dispatch as :func:`tutx.kernels.attention.flash_attention`.
    """
    _check_pattern(q, k, v, window, num_global_tokens, causal)
    sm_scale = resolve_scale(sm_scale, q.shape[-1])
    if not use_triton(q, k, v):
        return sliding_window_attention_ref(q, k, v, window, num_global_tokens, causal, sm_scale)
    check_kernel_dtype(q.dtype, q.device.type, cuda_capability(q))
    d = q.shape[-1]
    d_pad = padded_head_dim(d)
    if d_pad != d:
        q, k, v = (torch.nn.functional.pad(x, (0, d_pad - d)) for x in (q, k, v))
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    o = _SlidingWindowAttention.apply(q, k, v, window, num_global_tokens, causal, sm_scale)
    return o[..., :d] if d_pad != d else o


def sliding_window_mask(s_q: int, s_k: int, window: int, num_global_tokens: int = 0, causal: bool = True,
                        device=None) -> torch.Tensor:
    """The dense ``[S_q, S_k]`` boolean mask of the pattern (True = attend), for the reference and plots."""
    pos_q = torch.arange(s_q, device=device)[:, None] + (s_k - s_q)  # [S_q, 1]
    cols = torch.arange(s_k, device=device)[None, :]  # [1, S_k]
    dist = pos_q - cols
    ok = (dist.abs() < window) | (cols < num_global_tokens) | (pos_q < num_global_tokens)
    return ok & (dist >= 0) if causal else ok


def sliding_window_attention_ref(q, k, v, window: int, num_global_tokens: int = 0, causal: bool = True,
                                 sm_scale: float | None = None) -> torch.Tensor:
    """Dense masked attention in fp32 (O(S²) memory): the ground truth for the kernel."""
    _check_pattern(q, k, v, window, num_global_tokens, causal)
    sm_scale = resolve_scale(sm_scale, q.shape[-1])
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)  # [B, Hq, S_k, D]
    v = v.float().repeat_interleave(group, dim=1)  # [B, Hq, S_k, D]
    scores = torch.matmul(q.float(), k.transpose(-2, -1)) * sm_scale  # [B, Hq, S_q, S_k]
    keep = sliding_window_mask(q.shape[2], k.shape[2], window, num_global_tokens, causal, q.device)
    scores = scores.masked_fill(~keep, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v).to(q.dtype)  # [B, Hq, S_q, D]


__all__ = ["sliding_window_attention", "sliding_window_attention_ref", "sliding_window_mask",
           "sliding_window_attention_kernel", "sliding_window_forward"]
