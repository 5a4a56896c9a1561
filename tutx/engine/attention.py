"""The engine's attention in PyTorch: prefill over new and cached tokens, decode without a GPU kernel.

Pool layout as in :mod:`tutx.kernels.paged_decode` (one pair per layer, ``[num_blocks, block_size,
Hkv, D]``); the Triton decode kernel lives there. These are the paths the engine takes for every
prefill, and for decode on a CPU (``attention_backend="sdpa"``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tutx.kernels.paged_decode import check_paged_metadata


def _store_kv(k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor, k: torch.Tensor,
              v: torch.Tensor) -> None:
    hkv, d = k_pool.shape[-2:]
    k_pool.view(-1, hkv, d).index_copy_(0, slots, k)  # [N*bs, Hkv, D]
    v_pool.view(-1, hkv, d).index_copy_(0, slots, v)


# Under torch.compile the write is this custom op, called as it is: traced as a plain indexed
# assignment, functionalisation copies the whole pool every layer (measured: compiled decode 5x
# slower than eager on the tiny LM). Eagerly the plain function runs (a custom op's Python
# wrapper costs more than the write itself).
_store_kv_op = torch.library.custom_op("tutx::store_kv", _store_kv, mutates_args=("k_pool", "v_pool"))


@_store_kv_op.register_fake
def _(k_pool, v_pool, slots, k, v) -> None:
    return None


def store_kv(k_pool: torch.Tensor, v_pool: torch.Tensor, slots: torch.Tensor, k: torch.Tensor,
             v: torch.Tensor) -> None:
    """Write ``k``, ``v`` ``[T, Hkv, D]`` into the pools' slots ``[T]`` (pools ``[N, bs, Hkv, D]``), in place."""
    (_store_kv_op if torch.compiler.is_compiling() else _store_kv)(k_pool, v_pool, slots, k, v)


def gather_kv(pool: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """The first ``length`` cached rows of one sequence, made dense: ``[length, Hkv, D]``."""
    block_size = pool.shape[1]
    pages = block_table[: (length + block_size - 1) // block_size].long()  # [P]
    return pool.index_select(0, pages).flatten(0, 1)[:length]  # [P*block_size, Hkv, D] -> [length, Hkv, D]


def paged_decode_attention_sdpa(q, k_pool, v_pool, block_tables, lengths, sm_scale: float | None = None,
                                validate: bool = True) -> torch.Tensor:
    """The engine's fast path without a GPU kernel: gather the pages, then one masked SDPA call (GQA native).

    Same result as :func:`~tutx.kernels.paged_decode.paged_decode_attention_ref` (to rounding)
    when every slot of the pool holds finite numbers — as the engine's pools do: they start
    zeroed and only ever receive computed keys and values. (The reference also survives NaN garbage in unused slots.)
    """
    if validate:
        check_paged_metadata(block_tables, lengths, k_pool.shape[0], k_pool.shape[1])
    pages = block_tables.long().clamp(0, k_pool.shape[0] - 1)  # padding entries read block 0, then masked
    # index_select copies whole blocks (rows of bs*Hkv*D values): ~5x faster on a CPU than pool[pages]'s
    # general advanced indexing (PERF_NOTES.md, "Engine on CPU").
    shape = (*pages.shape, *k_pool.shape[1:])  # [B, M, bs, Hkv, D]
    k = k_pool.index_select(0, pages.flatten()).view(shape).flatten(1, 2).transpose(1, 2)  # [B, Hkv, M*bs, D]
    v = v_pool.index_select(0, pages.flatten()).view(shape).flatten(1, 2).transpose(1, 2)  # [B, Hkv, M*bs, D]
    keep = torch.arange(k.shape[2], device=q.device)[None, :] < lengths[:, None]  # [B, M*bs]
    out = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=keep[:, None, None, :],
                                         scale=sm_scale, enable_gqa=True)  # [B, Hq, 1, D]
    return out[:, :, 0]


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_cached: int,
                      scale: float) -> torch.Tensor:
    """Causal attention of one sequence's new tokens (PyTorch SDPA, GQA without copying K/V).

    q ``[S_new, Hq, D]`` holds positions ``num_cached .. num_cached+S_new-1``; k, v ``[S, Hkv, D]``
    hold positions ``0 .. S-1`` with ``S = num_cached + S_new`` (the cached prefix gathered from
    the pool, then the new tokens). Returns ``[S_new, Hq, D]``.
    """
    s = k.shape[0]
    qh, kh, vh = (x.transpose(0, 1)[None] for x in (q, k, v))  # [1, H, S, D]
    if num_cached == 0:
        out = F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=scale, enable_gqa=True)
    else:  # query i sees keys 0 .. num_cached + i (SDPA's is_causal would align to the top left)
        rows = torch.arange(num_cached, s, device=q.device)[:, None]  # [S_new, 1]
        mask = torch.arange(s, device=q.device)[None, :] <= rows  # [S_new, S]
        out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=scale, enable_gqa=True)
    return out[0].transpose(0, 1)  # [S_new, Hq, D]


__all__ = ["store_kv", "gather_kv", "paged_decode_attention_sdpa", "prefill_attention"]
