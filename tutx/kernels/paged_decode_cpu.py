"""Paged decode attention on the CPU: a C kernel that reads the KV pool in place.

On a GPU the paged kernel (:mod:`tutx.kernels.paged_decode`) saves memory; on a CPU the cost it
removes is a *copy*. The PyTorch path (:func:`tutx.engine.attention.paged_decode_attention_sdpa`)
gathers every sequence's pages into a dense ``[B, Hkv, S, D]`` tensor, pads all rows to the
longest, then calls SDPA: for a decode step of a few dozen sequences that copy moves megabytes per
layer and costs more than the arithmetic. The kernel here walks each sequence's block table and
reads its key and value rows where they are, as vLLM's CPU backend does.

The triple: the kernel ``csrc/paged_decode_cpu.c`` (C, OpenMP over (sequence, KV head), compiled
on first use for this CPU and head dimension by :mod:`tutx.kernels.cpu_build`), the wrapper
:func:`paged_decode_attention_cpu`, and the reference
:func:`~tutx.kernels.paged_decode.paged_decode_attention_ref`. fp32 only.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from tutx.kernels._attention_common import resolve_scale
from tutx.kernels.cpu_build import KernelBuildError, build
from tutx.kernels.paged_decode import check_paged_decode_args

_ARGTYPES = ([ctypes.c_void_p, ctypes.c_int64] + [ctypes.c_void_p] * 6 + [ctypes.c_int64] * 6
             + [ctypes.c_float, ctypes.c_int, ctypes.c_int])
MAX_GROUP = 64  # query heads per KV head the kernel holds on its stack


@functools.lru_cache(maxsize=None)  # build() hashes the source and asks the compiler its version
def _kernel(head_dim: int):
    """The library for this head dimension, its argument types set."""
    lib = build("paged_decode_cpu.c", {"HEAD_DIM": head_dim})
    lib.tutx_paged_decode_f32.argtypes, lib.tutx_paged_decode_f32.restype = _ARGTYPES, ctypes.c_int
    return lib


def cpu_kernel_available(head_dim: int) -> bool:
    """Whether the kernel builds (a C compiler is there and the build works) for this head dimension."""
    try:
        _kernel(head_dim)
        return True
    except KernelBuildError:
        return False


def transpose_keys(k_pool: torch.Tensor) -> torch.Tensor:
    """A key pool ``[num_blocks, block_size, Hkv, D]`` in the kernels' faster layout, keys transposed
    within each block: ``[num_blocks, Hkv, D, block_size]`` (a copy)."""
    if k_pool.dim() != 4:
        raise ValueError(f"k_pool: expected [num_blocks, block_size, Hkv, D], got shape {tuple(k_pool.shape)}")
    return k_pool.permute(0, 2, 3, 1).contiguous()


def _rows_view(k_pool: torch.Tensor, keys_transposed: bool) -> torch.Tensor:
    """The key pool seen as ``[num_blocks, block_size, Hkv, D]`` (a view: for the shape checks)."""
    return k_pool.permute(0, 3, 1, 2) if keys_transposed else k_pool


def _rows_of_heads(q: torch.Tensor) -> torch.Tensor:
    """``q [T, Hq, D]`` as the kernel reads it: any row stride, each row's heads contiguous."""
    return q if q.stride(2) == 1 and q.stride(1) == q.shape[2] else q.contiguous()


def _check_args(q, k_pool, v_pool, block_tables, lengths, validate: bool, keys_transposed: bool = False) -> None:
    if keys_transposed and v_pool.dim() == 4:  # the sizes come from v_pool [num_blocks, block_size, Hkv, D]
        n, bs, hkv, d = v_pool.shape
        if tuple(k_pool.shape) != (n, hkv, d, bs):
            raise ValueError(f"k_pool: expected [num_blocks, Hkv, D, block_size] = {(n, hkv, d, bs)} with "
                             f"keys_transposed=True (sizes from v_pool), got shape {tuple(k_pool.shape)}")
    check_paged_decode_args(q, _rows_view(k_pool, keys_transposed), v_pool, block_tables, lengths, None, validate)
    for name, t in (("q", q), ("k_pool", k_pool), ("v_pool", v_pool)):
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise TypeError(f"{name}: expected a float32 CPU tensor, got {t.dtype} on {t.device}")
    if not (k_pool.is_contiguous() and v_pool.is_contiguous()):
        raise ValueError("k_pool, v_pool: expected contiguous pools [num_blocks, block_size, Hkv, D]")
    hq, hkv = q.shape[1], k_pool.shape[2]
    if hq // hkv > MAX_GROUP:
        raise ValueError(f"q: expected at most {MAX_GROUP} query heads per KV head, got {hq // hkv}")


def paged_decode_attention_cpu(q, k_pool, v_pool, block_tables, lengths, sm_scale: float | None = None,
                               validate: bool = True, trusted: bool = False,
                               keys_transposed: bool = False) -> torch.Tensor:
    """Attention of ``q [B, Hq, D]`` over the first ``lengths[b]`` tokens of each paged cache: ``[B, Hq, D]``.

    Same arguments and result (to rounding) as
    :func:`~tutx.kernels.paged_decode.paged_decode_attention`; CPU float32 tensors only, the pools
    contiguous. Raises :class:`~tutx.kernels.cpu_build.KernelBuildError` when the kernel cannot
    be built. ``validate=False`` skips the value checks of the tables and lengths (the engine
    checks them once per step): out-of-range values would read outside the pool. ``trusted=True``
    skips the shape and type checks too (the engine's contiguous int32 tables and lengths, fp32
    pools, and a ``q`` whose rows may be apart but whose heads are contiguous within a row).

    ``keys_transposed=True``: ``k_pool`` is ``[num_blocks, Hkv, D, block_size]``, the keys of a
    block side by side for every ``d`` (:func:`transpose_keys`; the engine's C path keeps its keys
    so). The scores of 16 keys are then one vector multiply-add per ``d`` and head, with no
    horizontal sums: 2-3x faster than with keys in rows (PERF_NOTES.md, L21).
    """
    if not trusted:
        _check_args(q, k_pool, v_pool, block_tables, lengths, validate, keys_transposed)
        q = _rows_of_heads(q)
        block_tables = block_tables.to(torch.int32).contiguous()  # [B, W]
        lengths = lengths.to(torch.int32).contiguous()  # [B]
    (b, hq, d), (block_size, hkv) = q.shape, v_pool.shape[1:3]
    scale = resolve_scale(sm_scale, d)
    tables, lens, table_of_row = block_tables, lengths, None
    out = torch.empty((b, hq, d), dtype=q.dtype)  # [B, Hq, D]
    status = _kernel(d).tutx_paged_decode_f32(q.data_ptr(), q.stride(0), k_pool.data_ptr(), v_pool.data_ptr(),
                        tables.data_ptr(), None if table_of_row is None else table_of_row.data_ptr(), lens.data_ptr(),
                        out.data_ptr(), b, hq, hkv, d, block_size, tables.shape[1], scale, int(keys_transposed),
                        torch.get_num_threads())
    if status:
        raise RuntimeError(f"paged_decode_cpu kernel failed (status {status}: 1 = bad shapes, 2 = out of memory)")
    return out


def paged_prefill_attention_cpu(q, k_pool, v_pool, block_tables, table_of_row, lengths,
                                sm_scale: float | None = None, trusted: bool = False,
                                keys_transposed: bool = False) -> torch.Tensor:
    """Causal attention of a prefill's tokens over the paged cache, every sequence of the step in one call.

    Row ``r`` of ``q [T, Hq, D]`` (a prompt token) attends to the first ``lengths[r]`` tokens of
    sequence ``table_of_row[r]``, whose pages are ``block_tables[table_of_row[r]]``: with the
    step's keys and values already in the pool, a token at position ``p`` has length ``p + 1`` —
    causal attention over cached prefix and new tokens alike, with no gather. The same library as
    :func:`paged_decode_attention_cpu`, tiled over query vectors: the G query heads of a KV head
    for 16 / G consecutive tokens share every key read (PERF_NOTES.md, L16). ``block_tables [S, W]``,
    ``table_of_row [T]`` and ``lengths [T]`` are int32; ``trusted=True`` skips the checks (the
    engine's own tensors); ``keys_transposed`` as for :func:`paged_decode_attention_cpu`.
    """
    if not trusted:
        if table_of_row.shape != (q.shape[0],):
            raise ValueError(f"table_of_row: expected shape ({q.shape[0]},), got {tuple(table_of_row.shape)}")
        if table_of_row.numel() and not 0 <= int(table_of_row.min()) <= int(table_of_row.max()) < block_tables.shape[0]:
            raise ValueError(f"table_of_row: expected values in [0, {block_tables.shape[0]}), got {table_of_row.tolist()}")
        _check_args(q, k_pool, v_pool, block_tables[table_of_row.long()], lengths, True, keys_transposed)
        q = _rows_of_heads(q)
        block_tables, table_of_row, lengths = (x.to(torch.int32).contiguous() for x in (block_tables, table_of_row, lengths))
    (t, hq, d), (block_size, hkv) = q.shape, v_pool.shape[1:3]
    out = torch.empty((t, hq, d), dtype=q.dtype)  # [T, Hq, D]
    status = _kernel(d).tutx_paged_decode_f32(
        q.data_ptr(), q.stride(0), k_pool.data_ptr(), v_pool.data_ptr(), block_tables.data_ptr(), table_of_row.data_ptr(),
        lengths.data_ptr(), out.data_ptr(), t, hq, hkv, d, block_size, block_tables.shape[1],
        resolve_scale(sm_scale, d), int(keys_transposed), torch.get_num_threads())
    if status:
        raise RuntimeError(f"paged_decode_cpu kernel failed (status {status}: 1 = bad shapes, 2 = out of memory)")
    return out


__all__ = ["paged_decode_attention_cpu", "paged_prefill_attention_cpu", "transpose_keys", "cpu_kernel_available",
           "MAX_GROUP"]
