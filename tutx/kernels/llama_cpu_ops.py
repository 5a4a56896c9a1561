"""The elementwise glue of a Llama layer as three C kernels for the CPU engine, with references.

A decode step of a small model on a CPU pays a few microseconds of dispatch for every PyTorch
operator, and Hugging Face's RMSNorm is 8 operators, the rotary embedding of q and k 12, writing
k and v into the pool 2 more. (The same library holds the greedy sampler's row argmax.) ``csrc/llama_cpu_ops.c`` does each piece in one pass
(built on first use by :mod:`tutx.kernels.cpu_build`); the ``*_ref`` functions are the same
operations in plain PyTorch, in Hugging Face's order of operations, and the tests hold the
kernels to them. All float32 on the CPU; the kernels work in place where the docstring says so.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from tutx.kernels.cpu_build import build

_P, _I, _F, _N = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int


@functools.lru_cache(maxsize=None)
def _lib():
    lib = build("llama_cpu_ops.c")
    lib.tutx_add_rms_norm.argtypes = [_P, _P, _P, _P, _I, _I, _F, _N]
    lib.tutx_rope_store.argtypes = [_P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _N]
    lib.tutx_rope_store.restype = _I  # -1, or the first token whose slot is outside the pools
    lib.tutx_silu_mul.argtypes = [_P, _P, _I, _I, _N]
    lib.tutx_argmax_rows.argtypes = [_P, _P, _I, _I, _N]
    for fn in (lib.tutx_add_rms_norm, lib.tutx_silu_mul, lib.tutx_argmax_rows):
        fn.restype = None
    return lib


def _rows(name: str, t: torch.Tensor) -> tuple[int, int]:
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor [T, ...], got shape {tuple(t.shape)}")
    return tuple(t.shape)


def _check(name: str, t: torch.Tensor, shape: tuple) -> None:
    if t.dtype != torch.float32 or t.device.type != "cpu" or not t.is_contiguous():
        raise TypeError(f"{name}: expected a contiguous float32 CPU tensor, got {t.dtype} on {t.device}"
                        f"{'' if t.is_contiguous() else ' (not contiguous)'}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(t.shape)}")


def add_rms_norm_cpu(h: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor, eps: float,
                     trusted: bool = False) -> torch.Tensor:
    """``h += x`` in place (skipped when ``x`` is None), then RMSNorm of ``h`` ``[T, H]`` with ``weight [H]``.

    ``trusted=True`` skips every check (the engine, which builds these tensors itself, saves a few
    microseconds per call); wrong inputs then read or write out of bounds.
    """
    t, hidden = h.shape if trusted else _rows("h", h)
    if not trusted:
        _check("h", h, (t, hidden))
        if x is not None:
            _check("x", x, (t, hidden))
        _check("weight", weight, (hidden,))
    out = torch.empty_like(h)
    _lib().tutx_add_rms_norm(h.data_ptr(), None if x is None else x.data_ptr(), weight.data_ptr(),
                             out.data_ptr(), t, hidden, float(eps), torch.get_num_threads())
    return out


def add_rms_norm_ref(h: torch.Tensor, x: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`add_rms_norm_cpu` in PyTorch (Hugging Face's ``LlamaRMSNorm``)."""
    if x is not None:
        h += x
    return weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps))


def rope_store_cpu(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_pool: torch.Tensor,
                   v_pool: torch.Tensor, slots: torch.Tensor, num_heads: int, num_kv_heads: int,
                   trusted: bool = False, keys_transposed: bool = False) -> None:
    """Rotate q and k in place in ``qkv [T, (Hq + 2 Hkv) * D]`` and write k, v to the pools' ``slots [T]``.

    ``cos``, ``sin``: ``[T, D]`` (Hugging Face's rotary tables for each token's position); pools
    ``[num_blocks, block_size, Hkv, D]``, contiguous; a slot is ``block * block_size + offset``.
    ``keys_transposed=True``: ``k_pool`` is ``[num_blocks, Hkv, D, block_size]``, the layout
    :func:`~tutx.kernels.paged_decode_cpu.paged_decode_attention_cpu` reads fastest.
    Raises ValueError, touching nothing, for a slot outside the pools or an odd head dim ``D``
    (the slot check runs in C even when ``trusted=True`` skips the others).
    """
    t, width = qkv.shape if trusted else _rows("qkv", qkv)
    d = width // (num_heads + 2 * num_kv_heads)
    if not trusted:
        _check_rope(qkv, cos, sin, k_pool, v_pool, slots, num_heads, num_kv_heads, t, d, keys_transposed)
    num_slots = v_pool.shape[0] * v_pool.shape[1]
    bad = _lib().tutx_rope_store(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(), k_pool.data_ptr(),
                                 v_pool.data_ptr(), slots.data_ptr(), num_slots, t, num_heads, num_kv_heads, d,
                                 v_pool.shape[1] if keys_transposed else 0, torch.get_num_threads())
    if bad >= 0:
        raise ValueError(f"slots: slot {int(slots[bad])} of token {bad} is outside the pools' {num_slots} slots")


def _check_rope(qkv, cos, sin, k_pool, v_pool, slots, num_heads, num_kv_heads, t, d, keys_transposed) -> None:
    _check("qkv", qkv, (t, (num_heads + 2 * num_kv_heads) * d))
    if d % 2:
        raise ValueError(f"qkv: the rotary needs an even head dim, got {d}")
    _check("cos", cos, (t, d))
    _check("sin", sin, (t, d))
    if keys_transposed:  # k_pool [num_blocks, Hkv, D, block_size], its sizes from v_pool
        _check("v_pool", v_pool, tuple(v_pool.shape))
        if v_pool.dim() != 4 or v_pool.shape[2:] != (num_kv_heads, d):
            raise ValueError(f"v_pool: expected [num_blocks, block_size, {num_kv_heads}, {d}], got {tuple(v_pool.shape)}")
        _check("k_pool", k_pool, (v_pool.shape[0], num_kv_heads, d, v_pool.shape[1]))
    else:
        _check("k_pool", k_pool, tuple(k_pool.shape))
        _check("v_pool", v_pool, tuple(k_pool.shape))
        if k_pool.shape[2:] != (num_kv_heads, d):
            raise ValueError(f"k_pool: expected [num_blocks, block_size, {num_kv_heads}, {d}], got {tuple(k_pool.shape)}")
    if slots.dtype != torch.int64 or slots.shape != (t,) or not slots.is_contiguous():
        raise ValueError(f"slots: expected a contiguous int64 tensor of shape ({t},), got {slots.dtype} "
                         f"{tuple(slots.shape)}")


def rope_store_ref(qkv, cos, sin, k_pool, v_pool, slots, num_heads: int, num_kv_heads: int) -> None:
    """:func:`rope_store_cpu` in PyTorch (``x * cos + rotate_half(x) * sin``, then an indexed copy;
    pools in rows, ``[num_blocks, block_size, Hkv, D]``)."""
    t = qkv.shape[0]
    d = qkv.shape[1] // (num_heads + 2 * num_kv_heads)
    heads = qkv.view(t, -1, d)  # [T, Hq + 2 Hkv, D]
    qk = heads[:, :num_heads + num_kv_heads]
    x1, x2 = qk.chunk(2, dim=-1)
    qk.copy_(qk * cos[:, None] + torch.cat((-x2, x1), dim=-1) * sin[:, None])
    k_pool.view(-1, num_kv_heads, d).index_copy_(0, slots, heads[:, num_heads:num_heads + num_kv_heads])
    v_pool.view(-1, num_kv_heads, d).index_copy_(0, slots, heads[:, num_heads + num_kv_heads:])


def silu_mul_cpu(gate_up: torch.Tensor, trusted: bool = False) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up [T, 2 I]`` (gate first): ``[T, I]`` (``trusted``: no checks)."""
    t, two_i = gate_up.shape if trusted else _rows("gate_up", gate_up)
    if not trusted:
        _check("gate_up", gate_up, (t, two_i))
        if two_i % 2:
            raise ValueError(f"gate_up: expected an even last dimension (gate then up), got {two_i}")
    out = gate_up.new_empty((t, two_i // 2))
    _lib().tutx_silu_mul(gate_up.data_ptr(), out.data_ptr(), t, two_i // 2, torch.get_num_threads())
    return out


def silu_mul_ref(gate_up: torch.Tensor) -> torch.Tensor:
    """:func:`silu_mul_cpu` in PyTorch."""
    gate, up = gate_up.chunk(2, dim=-1)
    return torch.nn.functional.silu(gate) * up


__all__ = ["add_rms_norm_cpu", "add_rms_norm_ref", "rope_store_cpu", "rope_store_ref", "silu_mul_cpu",
           "silu_mul_ref"]


def argmax_rows_cpu(x: torch.Tensor) -> list[int]:
    """``x.argmax(dim=-1).tolist()`` for a contiguous float32 CPU ``x [R, C]`` (the first maximum;
    the first NaN in a row that has one), in one vectorized pass per row."""
    rows, cols = _rows("x", x)
    _check("x", x, (rows, cols))
    if cols == 0:
        raise ValueError("x: expected at least one column")
    out = torch.empty(rows, dtype=torch.int64)
    _lib().tutx_argmax_rows(x.data_ptr(), out.data_ptr(), rows, cols, torch.get_num_threads())
    return out.tolist()
