"""Which keys each query attends to: dense masks for the reference, block ranges for the kernels.

A leaf module (it imports no other kernel module), shared by the sliding-window forward and
backward kernels and by the attention reference. Queries are aligned to the *end* of the keys:
query row ``i`` of ``S_q`` sits at absolute position ``p = i + S_k - S_q``.

The sliding-window + global pattern (Longformer / Mistral / StreamingLLM "sinks"): query ``p``
attends to key ``j`` when ``|p - j| < window`` (the local band), or ``j < num_global_tokens``
(every query sees the global tokens), or ``p < num_global_tokens`` (global tokens see every key);
and, when causal, only if ``j <= p``.
"""
from __future__ import annotations

import torch

from tutx.kernels._triton import tl, triton


def causal_mask(s_q: int, s_k: int, device=None) -> torch.Tensor:
    """``[S_q, S_k]`` bool, True where query ``i`` may see key ``j`` (``j <= i + S_k - S_q``)."""
    return torch.ones(s_q, s_k, dtype=torch.bool, device=device).tril(diagonal=s_k - s_q)


def sliding_window_mask(s_q: int, s_k: int, window: int, num_global_tokens: int = 0, causal: bool = True,
                        device=None) -> torch.Tensor:
    """The dense ``[S_q, S_k]`` bool mask of the pattern (True = attend), for the reference and plots."""
    pos_q = torch.arange(s_q, device=device)[:, None] + (s_k - s_q)  # [S_q, 1]
    cols = torch.arange(s_k, device=device)[None, :]  # [1, S_k]
    dist = pos_q - cols  # [S_q, S_k]
    ok = (dist.abs() < window) | (cols < num_global_tokens) | (pos_q < num_global_tokens)
    return ok & (dist >= 0) if causal else ok


@triton.jit
def allowed(pos_q, cols, S_k, window, n_global, CAUSAL: tl.constexpr):
    """The kernels' version of :func:`sliding_window_mask`; ``pos_q`` and ``cols`` broadcast."""
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


__all__ = ["causal_mask", "sliding_window_mask", "allowed", "key_ranges", "full_block_range", "query_ranges"]
