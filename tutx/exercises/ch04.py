"""Checks for Chapter 4's exercises (efficient attention).

Each ``check_…(fn)`` runs your function on a handful of cases and compares it with the reference
solution written below. It prints ``✅ …`` when all cases pass and raises an ``AssertionError``
that names the first failing case otherwise; a stub that still returns ``None`` (or ``...``)
prints "not solved yet".
"""
from __future__ import annotations

import torch

from tutx.configs import get_config
from tutx.exercises._check import check_fn, run_cases, run_tensor_cases
from tutx.kernels.sparse_attention import sliding_window_mask
from tutx.scaling import ModelSpec, kv_cache_bytes

__all__ = ["check_online_softmax_update", "check_window_block_mask", "check_kv_cache_bytes_gqa",
           "online_softmax_update", "window_block_mask", "kv_cache_bytes_gqa"]


# ---- 1. one step of the online softmax ------------------------------------------------------

def online_softmax_update(m, l, acc, scores, values):
    """Fold one block of keys into running softmax statistics (natural exp, as FlashAttention does).

    ``m [M]`` running max, ``l [M]`` running sum of ``exp(score - m)``, ``acc [M, D]`` running
    unnormalised output; ``scores [M, N]`` of the new keys, ``values [N, D]``. After the last block
    the attention output is ``acc / l[:, None]``.
    """
    m_new = torch.maximum(m, scores.max(dim=1).values)  # [M]
    alpha = torch.exp(m - m_new)  # [M]: rescales what was summed under the old max
    p = torch.exp(scores - m_new[:, None])  # [M, N]
    l_new = l * alpha + p.sum(dim=1)  # [M]
    acc_new = acc * alpha[:, None] + p @ values  # [M, D]
    return m_new, l_new, acc_new


def _softmax_cases():
    gen = torch.Generator().manual_seed(4)
    cases = []
    # (rows M, keys N, head dim D, blocks already folded in, shift of the new scores, masked keys)
    for m_rows, n, d, blocks_before, shift, masked in ((4, 8, 16, 0, 0.0, 0), (5, 7, 3, 1, 0.0, 3),
                                                       (3, 16, 8, 2, 0.0, 0), (6, 4, 5, 1, -20.0, 0),
                                                       (2, 9, 4, 3, 30.0, 1)):
        state = (torch.full((m_rows,), float("-inf")), torch.zeros(m_rows), torch.zeros(m_rows, d))
        for _ in range(blocks_before):  # a running state from earlier blocks
            state = online_softmax_update(*state, 3 * torch.randn(m_rows, n, generator=gen),
                                          torch.randn(n, d, generator=gen))
        scores = 3 * torch.randn(m_rows, n, generator=gen) + shift  # the new max is below/above the old
        scores[:, n - masked:] = float("-inf")  # masked keys (causal, padding) contribute nothing
        cases.append((*state, scores, torch.randn(n, d, generator=gen)))
    return cases


def check_online_softmax_update(fn) -> None:
    """``fn(m, l, acc, scores, values) -> (m_new, l_new, acc_new)``: one online-softmax step.

    Shapes: ``m``, ``l`` ``[M]``; ``acc`` ``[M, D]``; ``scores`` ``[M, N]``; ``values`` ``[N, D]``.
    The first case starts from the empty state (``m = -inf``, ``l = 0``, ``acc = 0``); later ones
    continue a running state, with a new block whose maximum is below or above the old one.
    """
    check_fn(fn, "check_online_softmax_update")
    run_tensor_cases("check_online_softmax_update", fn, online_softmax_update,
                     _softmax_cases(), rtol=1e-5, atol=1e-5)


# ---- 2. which key blocks a sliding-window query block visits ------------------------------

def window_block_mask(num_q_blocks: int, num_k_blocks: int, block: int, window: int) -> torch.Tensor:
    """``[num_q_blocks, num_k_blocks]`` bool: does query block ``i`` need key block ``j``?

    A block is visited if any (query, key) pair in it is allowed by the causal sliding window —
    ``key <= query`` and ``query - key < window`` — i.e. the block-wise *any* of
    :func:`~tutx.kernels.sparse_attention.sliding_window_mask`. As there, queries are aligned to
    the end of the keys: query block ``i`` covers positions from ``(i + num_k_blocks - num_q_blocks) * block``.
    """
    dense = sliding_window_mask(num_q_blocks * block, num_k_blocks * block, window)  # [S_q, S_k]
    return dense.reshape(num_q_blocks, block, num_k_blocks, block).any(dim=3).any(dim=1)  # [nq, nk]


def check_window_block_mask(fn) -> None:
    """``fn(num_q_blocks, num_k_blocks, block, window) -> bool tensor [num_q_blocks, num_k_blocks]``.

    With ``num_q_blocks == num_k_blocks`` query block ``i`` covers the same positions as key block
    ``i``; with fewer query blocks (a chunk after cached keys) the queries are the *last* positions.
    """
    cases = [
        (4, 4, 16, 16),  # window = block: the diagonal block and the one before
        (8, 8, 16, 40),  # window not a multiple of the block
        (6, 6, 32, 1),  # window 1: each query sees only itself
        (5, 5, 16, 1000),  # window longer than the sequence: plain causal
        (3, 7, 16, 48),  # 3 query blocks at the end of 7 key blocks
        (1, 9, 8, 17),  # one decode-sized block at the end
    ]
    check_fn(fn, "check_window_block_mask")
    run_tensor_cases("check_window_block_mask", fn, window_block_mask, cases, rtol=0, atol=0)


# ---- 3. KV cache bytes of a GQA model from its config ---------------------------------------

def kv_cache_bytes_gqa(config: dict, batch: int, seq_len: int, bytes_per_elem: float) -> float:
    """Bytes of the KV cache of a Llama-style ``config`` dict: only ``num_key_value_heads`` heads.

    A missing ``num_key_value_heads`` means multi-head attention; a missing ``head_dim`` means
    ``hidden_size // num_attention_heads``.
    """
    spec = ModelSpec.from_config(config)
    return kv_cache_bytes(spec.num_layers, spec.num_kv_heads, spec.head_dim, batch, seq_len, bytes_per_elem)


def check_kv_cache_bytes_gqa(fn) -> None:
    """``fn(config, batch, seq_len, bytes_per_elem) -> bytes`` for Llama-style config dicts."""
    tiny = dict(model_type="llama", vocab_size=4096, hidden_size=256, num_hidden_layers=5,
                num_attention_heads=8, num_key_value_heads=2, intermediate_size=640)
    no_kv_field = {k: v for k, v in get_config("Llama-2-7B").items() if k != "num_key_value_heads"}
    cases = [
        (get_config("Llama-3.1-8B"), 1, 8192, 2),  # 8 KV heads for 32 query heads: 1 GiB in bf16
        (get_config("Llama-2-7B"), 1, 4096, 2),  # MHA: 32 KV heads
        (get_config("Llama-2-70B"), 8, 4096, 2),
        (tiny, 4, 512, 4),  # the course's tiny model, fp32
        (dict(tiny, num_key_value_heads=1, head_dim=48), 2, 100, 1),  # MQA, explicit head_dim
        (no_kv_field, 2, 1000, 2),  # the field is missing: every head has its own K and V
    ]
    check_fn(fn, "check_kv_cache_bytes_gqa")
    run_cases("check_kv_cache_bytes_gqa", fn, kv_cache_bytes_gqa, cases, rel_tol=1e-9)
