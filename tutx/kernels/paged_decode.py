"""Flash-decoding over a paged KV cache: one query token per sequence, keys and values in pool blocks.

Pool layout (one pair per layer): ``k_pool`` and ``v_pool`` are ``[num_blocks, block_size, Hkv, D]``.
A token's K/V row is ``pool[slot // block_size, slot % block_size]``. Only the ``Hkv`` key/value
heads are stored (GQA/MQA): query head ``h`` reads KV head ``h // (Hq // Hkv)``.
``block_tables [B, max_blocks]`` maps sequence ``b``'s logical block ``i`` to a pool block; entries
past ``ceil(lengths[b] / block_size)`` are padding and never read.

The kernel is :mod:`tutx.kernels.decode`'s flash-decoding with the dense ``S_max`` axis replaced
by the block table: each program walks its chunk of the sequence *page by page*, loading the
page's pool id from the table and then a ``[block_size, D]`` tile of keys and values (rows
``Hkv * D`` apart). The split/merge structure, and the merge kernel itself, are shared with it.

The triple (CONTRIBUTING.md): :func:`paged_decode_attention_kernel`, the wrapper
:func:`paged_decode_attention`, and :func:`paged_decode_attention_ref` in plain PyTorch.
"""
from __future__ import annotations

import torch

from tutx._validate import check_optional_int
from tutx.kernels._attention_common import (
    LOG2E,
    check_float_dtypes,
    check_kernel_dtype,
    check_same_device,
    check_tensor,
    cuda_capability,
    last_dim_contiguous,
    resolve_scale,
)
from tutx.kernels._dispatch import use_triton
from tutx.kernels._triton import tl, triton
from tutx.kernels.decode import (MAX_HEAD_DIM, MAX_SPLITS, decode_attention_ref, decode_merge_kernel,
                                 default_num_splits)


@triton.jit
def paged_decode_attention_kernel(Q, K_POOL, V_POOL, BLOCK_TABLES, LENGTHS, O_PART, LSE_PART, qk_scale,
                                  stride_qb, stride_qh, stride_kblk, stride_kpos, stride_kh,
                                  stride_vblk, stride_vpos, stride_vh, stride_bt,
                                  Hq, GROUP, NUM_SPLITS, D, PAGE,
                                  BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Partial attention of one (sequence, query head) over one chunk of its pages; grid ``(B*Hq, splits)``.

    Pages are dealt out per sequence from its own length, so short sequences spread over all
    splits too; a split past the end writes lse = -inf, o = 0. ``BLOCK_N`` is ``PAGE`` rounded up
    to a power of two (the tail of the tile is masked).
    """
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    b = pid_bh // Hq
    h = pid_bh % Hq
    kvh = (h // GROUP).to(tl.int64)
    length = tl.load(LENGTHS + b).to(tl.int32)
    num_pages = tl.cdiv(length, PAGE)
    per_split = tl.cdiv(num_pages, NUM_SPLITS)
    lo = split * per_split
    hi = tl.minimum(lo + per_split, num_pages)

    offs_d = tl.arange(0, BLOCK_D)
    offs_p = tl.arange(0, BLOCK_N)  # slot within a page
    in_d = offs_d < D
    q = tl.load(Q + b.to(tl.int64) * stride_qb + h * stride_qh + offs_d, mask=in_d, other=0.0)
    q = q.to(tl.float32) * qk_scale  # [BD], base-2 logits come out of the dot
    table = BLOCK_TABLES + b.to(tl.int64) * stride_bt

    m_i = tl.full([1], float("-inf"), tl.float32)
    l_i = tl.zeros([1], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for page in range(lo, hi):
        blk = tl.load(table + page).to(tl.int64)  # pool block of this page
        in_n = (offs_p < PAGE) & (page * PAGE + offs_p < length)  # [BN]
        mask = in_n[:, None] & in_d[None, :]
        k_ptrs = K_POOL + blk * stride_kblk + offs_p[:, None] * stride_kpos + kvh * stride_kh + offs_d[None, :]
        k = tl.load(k_ptrs, mask=mask, other=0.0)  # [BN, BD]
        s = tl.sum(q[None, :] * k.to(tl.float32), 1)  # [BN]
        s = tl.where(in_n, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))  # [1]
        p = tl.exp2(s - m_new)  # [BN]
        alpha = tl.exp2(m_i - m_new)  # [1]
        l_i = l_i * alpha + tl.sum(p, 0)
        v_ptrs = V_POOL + blk * stride_vblk + offs_p[:, None] * stride_vpos + kvh * stride_vh + offs_d[None, :]
        v = tl.load(v_ptrs, mask=mask, other=0.0)  # [BN, BD]
        acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)  # [BD]
        m_i = m_new

    nonempty = l_i > 0
    acc = acc / tl.where(nonempty, l_i, 1.0)
    lse = tl.where(nonempty, m_i + tl.log2(tl.where(nonempty, l_i, 1.0)), float("-inf"))  # [1]
    part = pid_bh.to(tl.int64) * NUM_SPLITS + split
    tl.store(O_PART + part * D + offs_d, acc, mask=in_d)
    tl.store(LSE_PART + part, tl.max(lse, 0))


def check_block_tables(block_tables: list[list[int]], lengths: list[int], num_blocks: int,
                       block_size: int) -> None:
    """:func:`check_paged_metadata` on the Python lists a caller builds its tensors from (no device sync).

    ``block_tables[b]`` must hold at least ``ceil(lengths[b] / block_size)`` entries, those in
    ``[0, num_blocks)``; every length must be >= 1.
    """
    for b, (table, n) in enumerate(zip(block_tables, lengths)):
        used = table[:-(-n // block_size)]
        if n < 1 or len(used) * block_size < n or (used and (min(used) < 0 or max(used) >= num_blocks)):
            raise ValueError(f"block_tables[{b}]: expected at least ceil({n}/{block_size}) entries in "
                             f"[0, num_blocks={num_blocks}) for length {n} (>= 1), got {table}")


def check_paged_metadata(block_tables, lengths, num_blocks: int, block_size: int) -> None:
    """Values check with one device->host sync: lengths in ``[1, max_blocks*block_size]``, used table
    entries in ``[0, num_blocks)``. Out-of-range values would make the kernel read another
    sequence's cache. Callers that build the tensors from lists check those instead
    (:func:`check_block_tables`) and pass ``validate=False``."""
    if block_tables.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"block_tables: expected dtype int32 or int64, got {block_tables.dtype}")
    if lengths.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"lengths: expected dtype int32 or int64, got {lengths.dtype}")
    max_len = block_tables.shape[1] * block_size
    pages = torch.arange(block_tables.shape[1], device=lengths.device)  # [M]
    used = pages[None, :] * block_size < lengths[:, None]  # [B, M]
    bad_ids = used & ((block_tables < 0) | (block_tables >= num_blocks))  # [B, M]
    bad = (lengths < 1) | (lengths > max_len) | bad_ids.any(dim=1)  # [B]
    if not bool(bad.any()):  # the one sync
        return
    b = int(bad.nonzero()[0, 0])
    n = int(lengths[b])
    if not 1 <= n <= max_len:
        raise ValueError(f"lengths: expected values in [1, max_blocks*block_size={max_len}], got {n} at row {b}")
    raise ValueError(f"block_tables: expected the entries of used pages in [0, num_blocks={num_blocks}), "
                     f"got {block_tables[b].tolist()} at row {b} (length {n})")


def check_paged_decode_args(q, k_pool, v_pool, block_tables, lengths, num_splits, validate: bool) -> None:
    """The argument checks of the paged decode wrappers (shapes, dtypes, devices; values when ``validate``)."""
    check_tensor("q", q, 3, "[B, Hq, D]")
    check_tensor("k_pool", k_pool, 4, "[num_blocks, block_size, Hkv, D]")
    check_tensor("v_pool", v_pool, 4, "[num_blocks, block_size, Hkv, D]")
    check_tensor("block_tables", block_tables, 2, "[B, max_blocks]")
    check_tensor("lengths", lengths, 1, "[B]")
    check_float_dtypes(q=q, k_pool=k_pool, v_pool=v_pool)
    check_same_device(q=q, k_pool=k_pool, v_pool=v_pool, block_tables=block_tables, lengths=lengths)
    if v_pool.shape != k_pool.shape:
        raise ValueError(f"v_pool: expected the shape of k_pool {tuple(k_pool.shape)}, got {tuple(v_pool.shape)}")
    (b, hq, d), (num_blocks, block_size, hkv, dk) = q.shape, k_pool.shape
    for name, got in (("block_tables", block_tables.shape[0]), ("lengths", lengths.shape[0])):
        if got != b:
            raise ValueError(f"{name}: expected batch {b} (from q), got {got}")
    if dk != d:
        raise ValueError(f"k_pool: expected head_dim {d} (from q), got {dk}")
    if d > MAX_HEAD_DIM:
        raise ValueError(f"head_dim: expected at most {MAX_HEAD_DIM}, got {d}")
    if hq % hkv:
        raise ValueError(f"k_pool: expected a number of KV heads dividing q's {hq} (GQA/MQA), got {hkv}")
    check_optional_int("num_splits", num_splits, minimum=1, maximum=MAX_SPLITS)
    if validate:
        check_paged_metadata(block_tables, lengths, num_blocks, block_size)


def paged_decode_attention(q, k_pool, v_pool, block_tables, lengths, sm_scale: float | None = None,
                           num_splits: int | None = None, validate: bool = True) -> torch.Tensor:
    """Attention of ``q [B, Hq, D]`` over the first ``lengths[b]`` tokens of each paged cache: ``[B, Hq, D]``.

    ``k_pool``/``v_pool``: ``[num_blocks, block_size, Hkv, D]``; ``block_tables``: ``[B, max_blocks]``.
    Launches the kernels on CUDA tensors (fp16/bf16) or under the interpreter, else runs
    :func:`paged_decode_attention_ref`. ``validate=False`` skips the value checks (a host sync);
    the model runner checks the metadata once per step instead of once per layer.
    """
    check_paged_decode_args(q, k_pool, v_pool, block_tables, lengths, num_splits, validate)
    sm_scale = resolve_scale(sm_scale, q.shape[-1])
    if not use_triton(q, k_pool, v_pool, block_tables, lengths):
        return paged_decode_attention_ref(q, k_pool, v_pool, block_tables, lengths, sm_scale, validate=False)
    check_kernel_dtype(q.dtype, q.device.type, cuda_capability(q))
    (batch, hq, d), (block_size, hkv) = q.shape, k_pool.shape[1:3]
    if num_splits is None:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
        num_splits = default_num_splits(batch * hq, block_tables.shape[1] * block_size, sms)
    q, k_pool, v_pool = (last_dim_contiguous(x) for x in (q, k_pool, v_pool))
    block_tables, lengths = block_tables.contiguous(), lengths.contiguous()
    o_part = torch.empty((batch, hq, num_splits, d), device=q.device, dtype=torch.float32)  # [B, Hq, splits, D]
    lse_part = torch.empty((batch, hq, num_splits), device=q.device, dtype=torch.float32)  # [B, Hq, splits]
    block_d = triton.next_power_of_2(d)
    paged_decode_attention_kernel[(batch * hq, num_splits)](
        q, k_pool, v_pool, block_tables, lengths, o_part, lse_part, sm_scale * LOG2E,
        *q.stride()[:2], *k_pool.stride()[:3], *v_pool.stride()[:3], block_tables.stride(0),
        hq, hq // hkv, num_splits, d, block_size,
        BLOCK_N=max(2, triton.next_power_of_2(block_size)), BLOCK_D=block_d)
    o = torch.empty((batch, hq, d), device=q.device, dtype=q.dtype)  # [B, Hq, D]
    decode_merge_kernel[(batch * hq,)](o_part, lse_part, o, num_splits, d,
                                        SPLITS_P2=max(2, triton.next_power_of_2(num_splits)), BLOCK_D=block_d)
    return o


def paged_decode_attention_ref(q, k_pool, v_pool, block_tables, lengths, sm_scale: float | None = None,
                               validate: bool = True) -> torch.Tensor:
    """Plain PyTorch: gather each sequence's pages into a dense cache, then masked softmax in fp32."""
    check_paged_decode_args(q, k_pool, v_pool, block_tables, lengths, None, validate)
    pages = block_tables.long().clamp(0, k_pool.shape[0] - 1)  # padding entries read block 0, then masked
    k = k_pool[pages].flatten(1, 2).transpose(1, 2)  # [B, M, bs, Hkv, D] -> [B, Hkv, M*bs, D]
    v = v_pool[pages].flatten(1, 2).transpose(1, 2)  # [B, Hkv, M*bs, D]
    # Slots past a length may hold anything (even NaN, and 0 * NaN is NaN): zero them.
    valid = (torch.arange(k.shape[2], device=q.device)[None, :] < lengths[:, None])[:, None, :, None]
    k, v = k.masked_fill(~valid, 0), v.masked_fill(~valid, 0)  # valid: [B, 1, M*bs, 1]
    return decode_attention_ref(q, k, v, lengths, sm_scale)


__all__ = ["paged_decode_attention", "paged_decode_attention_ref", "paged_decode_attention_kernel",
           "check_paged_metadata", "check_block_tables", "check_paged_decode_args"]
