"""Checks for Chapter 4's exercises (efficient attention).

Each ``check_…(fn)`` runs your function on cases generated inside the check (not shown in the
notebook) and compares it with a reference solution kept private here. It prints ``✅ …`` when
all cases pass and raises an ``AssertionError`` that names the first failing case otherwise; a
stub that still returns ``None`` (or ``...``) prints "not solved yet".
"""
from __future__ import annotations

import torch

from tutx.configs import get_config
from tutx.exercises._check import check_fn, run_cases, run_tensor_cases
from tutx.scaling import ModelSpec, kv_cache_bytes

__all__ = ["check_online_softmax_update", "check_merge_partials", "check_window_block_mask",
           "check_kv_cache_bytes_gqa"]


# ---- 1. one step of the online softmax, safe for rows that have seen no key yet --------------

def _solution_online_softmax_update(m, l, acc, scores, values):
    m_new = torch.maximum(m, scores.max(dim=1).values)  # [M]
    m_safe = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)  # rows with no key yet
    alpha = torch.exp(m - m_safe)  # [M]: rescales what was summed under the old max
    p = torch.exp(scores - m_safe[:, None])  # [M, N]
    return m_new, l * alpha + p.sum(dim=1), acc * alpha[:, None] + p @ values


def _wrong_online_softmax_update(m, l, acc, scores, values):
    """Section 2's update as written: exp(-inf - (-inf)) is NaN for a row with no visible key."""
    m_new = torch.maximum(m, scores.max(dim=1).values)
    alpha = torch.exp(m - m_new)
    p = torch.exp(scores - m_new[:, None])
    return m_new, l * alpha + p.sum(dim=1), acc * alpha[:, None] + p @ values


def _softmax_cases():
    gen = torch.Generator().manual_seed(4)
    cases = []
    # (rows M, keys N, head dim D, blocks already folded in, shift of the new scores, masked keys, blind rows)
    for m_rows, n, d, before, shift, masked, blind in ((4, 8, 16, 0, 0.0, 0, 1), (5, 7, 3, 1, 0.0, 3, 2),
                                                       (3, 16, 8, 2, 0.0, 0, 0), (6, 4, 5, 1, -20.0, 0, 0),
                                                       (2, 9, 4, 3, 30.0, 1, 0), (4, 5, 6, 0, 0.0, 5, 0)):
        state = (torch.full((m_rows,), float("-inf")), torch.zeros(m_rows), torch.zeros(m_rows, d))
        for _ in range(before):  # a running state from earlier blocks
            state = _solution_online_softmax_update(*state, 3 * torch.randn(m_rows, n, generator=gen),
                                                    torch.randn(n, d, generator=gen))
        scores = 3 * torch.randn(m_rows, n, generator=gen) + shift  # the new max is below/above the old
        scores[:, n - masked:] = float("-inf")  # masked keys (causal, padding) contribute nothing
        if blind and before == 0:
            scores[:blind] = float("-inf")  # rows that see no key in any block so far (a sliding window's edge)
        cases.append((*state, scores, torch.randn(n, d, generator=gen)))
    return cases


def check_online_softmax_update(fn) -> None:
    """``fn(m, l, acc, scores, values) -> (m_new, l_new, acc_new)``: one online-softmax step.

    Shapes: ``m``, ``l`` ``[M]``; ``acc`` ``[M, D]``; ``scores`` ``[M, N]``; ``values`` ``[N, D]``.
    Cases start from the empty state (``m = -inf``, ``l = 0``, ``acc = 0``) or continue a running
    one; masked keys have score ``-inf``, and some rows have seen no key at all yet — they must
    stay at ``m = -inf``, ``l = 0``, ``acc = 0``, with no NaN.
    """
    check_fn(fn, "check_online_softmax_update")
    run_tensor_cases("check_online_softmax_update", fn, _solution_online_softmax_update,
                     _softmax_cases(), rtol=1e-5, atol=1e-5)


# ---- 2. build it: flash-decoding's merge of per-split partial results -----------------------

def _solution_merge_partials(o_parts, lse_parts):
    lse = torch.logsumexp(lse_parts, dim=0)  # [M]
    weights = torch.exp(lse_parts - lse)  # [S, M]; 0 for an empty split (lse_s = -inf)
    return (weights[..., None] * o_parts).sum(dim=0), lse  # [M, D], [M]


def _wrong_merge_partials(o_parts, lse_parts):
    """Weights exp(lse_s) / Σ exp(lse_s) without subtracting the max: overflows for large scores."""
    w = torch.exp(lse_parts)  # [S, M]
    return (w[..., None] * o_parts).sum(dim=0) / w.sum(dim=0)[:, None], torch.log(w.sum(dim=0))


def _split_attention(scores, values, bounds):
    """Per split ``[lo, hi)`` of the keys: (normalised partial output, natural-log LSE)."""
    o_parts, lse_parts = [], []
    for lo, hi in bounds:
        s, v = scores[:, lo:hi], values[lo:hi]  # [M, n], [n, D]
        if hi == lo:  # a split past the end of a short sequence: nothing to attend to
            o_parts.append(torch.zeros(scores.shape[0], values.shape[1], dtype=scores.dtype))
            lse_parts.append(torch.full((scores.shape[0],), float("-inf"), dtype=scores.dtype))
        else:
            o_parts.append(torch.softmax(s, dim=1) @ v)
            lse_parts.append(torch.logsumexp(s, dim=1))
    return torch.stack(o_parts), torch.stack(lse_parts)  # [S, M, D], [S, M]


def _merge_cases():
    gen = torch.Generator().manual_seed(40)
    cases = []
    # (rows M, keys N, head dim D, split boundaries, score scale, score shift)
    for m_rows, n, d, cuts, scale, shift in ((3, 16, 8, (8,), 1.0, 0.0), (4, 20, 5, (3, 11, 12), 3.0, 0.0),
                                             (2, 12, 4, (12, 12), 2.0, 0.0),  # two empty splits at the end
                                             (5, 9, 6, (4,), 1.0, 1000.0),  # exp(lse) overflows, even in float64
                                             (1, 7, 3, (1, 2, 3, 4, 5, 6), 5.0, -800.0)):
        scores = scale * torch.randn(m_rows, n, generator=gen, dtype=torch.float64) + shift
        values = torch.randn(n, d, generator=gen, dtype=torch.float64)
        edges = (0, *cuts, n)
        cases.append(_split_attention(scores, values, list(zip(edges[:-1], edges[1:]))))
    return cases


def check_merge_partials(fn) -> None:
    """``fn(o_parts, lse_parts) -> (o, lse)``: merge flash-decoding's partial results exactly.

    ``o_parts [S, M, D]``: each split's attention output, normalised over that split's keys;
    ``lse_parts [S, M]``: the natural-log log-sum-exp of each split's scores (``-inf`` for a split
    with no keys, whose ``o_parts`` rows are 0). Return the attention output over all keys
    ``[M, D]`` and its log-sum-exp ``[M]``. Scores may be in the thousands: ``exp(lse)`` overflows even in float64.
    """
    check_fn(fn, "check_merge_partials")
    run_tensor_cases("check_merge_partials", fn, _solution_merge_partials, _merge_cases(), rtol=1e-7, atol=1e-9)


# ---- 3. which key blocks a sliding-window query block visits ------------------------------

def _solution_window_block_mask(num_q_blocks: int, num_k_blocks: int, block: int, window: int) -> torch.Tensor:
    offset = (num_k_blocks - num_q_blocks) * block  # queries are the last positions
    q_first = torch.arange(num_q_blocks)[:, None] * block + offset  # [nq, 1]
    k_first = torch.arange(num_k_blocks)[None, :] * block  # [1, nk]
    return (k_first <= q_first + block - 1) & (q_first - (k_first + block - 1) < window)  # [nq, nk]


def _wrong_window_block_mask(num_q_blocks, num_k_blocks, block, window):
    """Plain causal at block level: forgets the window."""
    return _solution_window_block_mask(num_q_blocks, num_k_blocks, block, num_k_blocks * block + 1)


def check_window_block_mask(fn) -> None:
    """``fn(num_q_blocks, num_k_blocks, block, window) -> bool tensor [num_q_blocks, num_k_blocks]``.

    Block ``(i, j)`` is True if any (query, key) pair in it is allowed by the causal sliding
    window: ``key <= query`` and ``query - key < window``. With ``num_q_blocks == num_k_blocks``
    query block ``i`` covers the same positions as key block ``i``; with fewer query blocks (a
    chunk after cached keys) the queries are the *last* positions.
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
    run_tensor_cases("check_window_block_mask", fn, _solution_window_block_mask, cases, rtol=0, atol=0)


# ---- 4. KV cache bytes of a GQA model from its config ---------------------------------------

def _solution_kv_cache_bytes_gqa(config: dict, batch: int, seq_len: int, bytes_per_elem: float) -> float:
    spec = ModelSpec.from_config(config)
    return kv_cache_bytes(spec.num_layers, spec.num_kv_heads, spec.head_dim, batch, seq_len, bytes_per_elem)


def _wrong_kv_cache_bytes_gqa(config, batch, seq_len, bytes_per_elem):
    """Counts every query head as a KV head (the MHA cache)."""
    return _solution_kv_cache_bytes_gqa({**config, "num_key_value_heads": config["num_attention_heads"]},
                                        batch, seq_len, bytes_per_elem)


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
    run_cases("check_kv_cache_bytes_gqa", fn, _solution_kv_cache_bytes_gqa, cases, rel_tol=1e-9)


CONTRACT = {
    "check_online_softmax_update": (_solution_online_softmax_update, _wrong_online_softmax_update),
    "check_merge_partials": (_solution_merge_partials, _wrong_merge_partials),
    "check_window_block_mask": (_solution_window_block_mask, _wrong_window_block_mask),
    "check_kv_cache_bytes_gqa": (_solution_kv_cache_bytes_gqa, _wrong_kv_cache_bytes_gqa),
}
