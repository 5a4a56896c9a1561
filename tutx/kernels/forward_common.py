"""The loads that open and the stores that close a program of the attention forward kernels.

Dense (``attention.py``) and sliding-window (``sliding_window.py``) attention share the grid
``(cdiv(S_q, BLOCK_M), B * Hq)`` and the online-softmax state; they differ only in which key
blocks the loop between these two visits.
"""
from __future__ import annotations

from tutx.kernels._triton import tl, triton


@triton.jit
def load_query_tile(Q, K, V, pid_m, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_vb, stride_vh,
                    Hq, GROUP, S_q, HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr):
    """The program's queries ``[BM, D]`` (rows past ``S_q`` are 0) and K, V moved to its KV head.

    Query head ``h`` reads KV head ``h // GROUP`` (GQA/MQA): K and V are never expanded.
    """
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    kvh = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_d = tl.arange(0, HEAD_DIM)
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_m[:, None] * stride_qm + offs_d[None, :],
                mask=offs_m[:, None] < S_q, other=0.0)  # [BM, D]
    K += b * stride_kb + kvh * stride_kh
    V += b * stride_vb + kvh * stride_vh
    return b, h, offs_m, q, K, V


@triton.jit
def store_output(O, LSE, acc, l_i, m_i, b, h, offs_m, Hq, S_q, stride_ob, stride_oh, stride_om,
                 HEAD_DIM: tl.constexpr):
    """Write ``o = acc / l`` and the base-2 log-sum-exp ``m + log2(l)`` (saved for the backward pass).

    A row that saw no key at all (only padded rows past ``S_q`` can, with a sliding window) keeps
    ``l = 1`` instead of dividing by zero; it is not stored anyway.
    """
    offs_d = tl.arange(0, HEAD_DIM)
    in_q = offs_m < S_q
    l_i = tl.where(l_i > 0, l_i, 1.0)
    acc = acc / l_i[:, None]
    tl.store(O + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om + offs_d[None, :],
             acc.to(O.dtype.element_ty), mask=in_q[:, None])
    tl.store(LSE + (b * Hq + h) * S_q + offs_m, m_i + tl.log2(l_i), mask=in_q)


__all__ = ["load_query_tile", "store_output"]
