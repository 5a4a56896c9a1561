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

_ARGTYPES = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 6 + [ctypes.c_float, ctypes.c_int]
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


def _check_args(q, k_pool, v_pool, block_tables, lengths, validate: bool) -> None:
    check_paged_decode_args(q, k_pool, v_pool, block_tables, lengths, None, validate)
    for name, t in (("q", q), ("k_pool", k_pool), ("v_pool", v_pool)):
        if t.device.type != "cpu" or t.dtype != torch.float32:
            raise TypeError(f"{name}: expected a float32 CPU tensor, got {t.dtype} on {t.device}")
    if not (k_pool.is_contiguous() and v_pool.is_contiguous()):
        raise ValueError("k_pool, v_pool: expected contiguous pools [num_blocks, block_size, Hkv, D]")
    hq, hkv = q.shape[1], k_pool.shape[2]
    if hq // hkv > MAX_GROUP:
        raise ValueError(f"q: expected at most {MAX_GROUP} query heads per KV head, got {hq // hkv}")


def paged_decode_attention_cpu(q, k_pool, v_pool, block_tables, lengths, sm_scale: float | None = None,
                               validate: bool = True, trusted: bool = False) -> torch.Tensor:
    """Attention of ``q [B, Hq, D]`` over the first ``lengths[b]`` tokens of each paged cache: ``[B, Hq, D]``.

    Same arguments and result (to rounding) as
    :func:`~tutx.kernels.paged_decode.paged_decode_attention`; CPU float32 tensors only, the pools
    contiguous. Raises :class:`~tutx.kernels.cpu_build.KernelBuildError` when the kernel cannot
    be built. ``validate=False`` skips the value checks of the tables and lengths (the engine
    checks them once per step): out-of-range values would read outside the pool. ``trusted=True``
    skips the shape and type checks too (the engine's contiguous int32 tables and lengths, fp32
    contiguous q and pools).
    """
    if not trusted:
        _check_args(q, k_pool, v_pool, block_tables, lengths, validate)
        q = q.contiguous()
        block_tables = block_tables.to(torch.int32).contiguous()  # [B, W]
        lengths = lengths.to(torch.int32).contiguous()  # [B]
    (b, hq, d), (block_size, hkv) = q.shape, k_pool.shape[1:3]
    scale = resolve_scale(sm_scale, d)
    tables, lens, table_of_row = block_tables, lengths, None
    out = torch.empty_like(q)  # [B, Hq, D]
    status = _kernel(d).tutx_paged_decode_f32(q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), tables.data_ptr(),
                        None if table_of_row is None else table_of_row.data_ptr(), lens.data_ptr(),
                        out.data_ptr(), b, hq, hkv, d, block_size, tables.shape[1], scale, torch.get_num_threads())
    if status:
        raise RuntimeError(f"paged_decode_cpu kernel failed (status {status}: 1 = bad shapes, 2 = out of memory)")
    return out


def paged_prefill_attention_cpu(q, k_pool, v_pool, block_tables, table_of_row, lengths,
                                sm_scale: float | None = None, trusted: bool = False) -> torch.Tensor:
    """Causal attention of a prefill's tokens over the paged cache, every sequence of the step in one call.

    Row ``r`` of ``q [T, Hq, D]`` (a prompt token) attends to the first ``lengths[r]`` tokens of
    sequence ``table_of_row[r]``, whose pages are ``block_tables[table_of_row[r]]``: with the
    step's keys and values already in the pool, a token at position ``p`` has length ``p + 1`` —
    causal attention over cached prefix and new tokens alike, with no gather. The same kernel as
    :func:`paged_decode_attention_cpu`, each token a row. ``block_tables [S, W]``,
    ``table_of_row [T]`` and ``lengths [T]`` are int32; ``trusted=True`` skips the checks (the
    engine's own tensors). (A kernel tiled over query rows, sharing each chunk of keys among 16
    of them, was tried and ran 2x slower than this one: PERF_NOTES.md.)
    """
    if not trusted:
        if table_of_row.shape != (q.shape[0],):
            raise ValueError(f"table_of_row: expected shape ({q.shape[0]},), got {tuple(table_of_row.shape)}")
        if table_of_row.numel() and not 0 <= int(table_of_row.min()) <= int(table_of_row.max()) < block_tables.shape[0]:
            raise ValueError(f"table_of_row: expected values in [0, {block_tables.shape[0]}), got {table_of_row.tolist()}")
        _check_args(q, k_pool, v_pool, block_tables[table_of_row.long()], lengths, True)
        q = q.contiguous()
        block_tables, table_of_row, lengths = (x.to(torch.int32).contiguous() for x in (block_tables, table_of_row, lengths))
    (t, hq, d), (block_size, hkv) = q.shape, k_pool.shape[1:3]
    out = torch.empty_like(q)  # [T, Hq, D]
    status = _kernel(d).tutx_paged_decode_f32(
        q.data_ptr(), k_pool.data_ptr(), v_pool.data_ptr(), block_tables.data_ptr(), table_of_row.data_ptr(),
        lengths.data_ptr(), out.data_ptr(), t, hq, hkv, d, block_size, block_tables.shape[1],
        resolve_scale(sm_scale, d), torch.get_num_threads())
    if status:
        raise RuntimeError(f"paged_decode_cpu kernel failed (status {status}: 1 = bad shapes, 2 = out of memory)")
    return out


__all__ = ["paged_decode_attention_cpu", "paged_prefill_attention_cpu", "cpu_kernel_available", "MAX_GROUP"]
