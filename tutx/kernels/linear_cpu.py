"""Linear layers with few rows on the CPU: a register-blocked C kernel over weights packed once.

A decode step multiplies a few dozen rows (one per running sequence) by every weight matrix.
oneDNN's kernels are built for many rows: on this workplace's 2-core AMD EPYC they reach 10-60
GFLOP/s below 16 rows and ~120 at 40, against ~190 at 256 (PERF_NOTES.md, L22). The kernel
``csrc/linear_cpu.c`` is the textbook register-blocked micro-kernel: the weight is packed once
into tiles of 64 output columns (``[N / 64, K, 64]``), and with AVX-512 a 6 x 64 block of the
output stays in 24 vector registers while it walks ``k`` (6 x 16 blocks with AVX2). With AVX-512
it reaches 170-215 GFLOP/s of this CPU's ~218 from 12 to 2,048 rows, ahead of oneDNN at every
size on both benchmark models' shapes (L31), so the engine runs every product through it there
(:func:`few_rows_limit`).

The triple: the kernel, :func:`linear_cpu` (the wrapper; :func:`pack_weight` packs), and the
reference :func:`linear_ref` (``F.linear``). fp32 only; the sums run over ``k`` in order, so the
results equal ``F.linear``'s to float rounding.
"""
from __future__ import annotations

import ctypes
import functools

import torch

from tutx.kernels.cpu_build import build

NR = 64  # output columns per packed tile (four 16-lane vectors)
_P, _I = ctypes.c_void_p, ctypes.c_int64


@functools.lru_cache(maxsize=None)
def _lib():
    lib = build("linear_cpu.c")
    lib.tutx_pack_weight.argtypes = [_P, _P, _I, _I]
    lib.tutx_linear_f32.argtypes = [_P, _I, _P, _P, _P, _I, _I, _I, _I, ctypes.c_int]
    lib.tutx_pack_weight.restype = lib.tutx_linear_f32.restype = None
    lib.tutx_pack_gated.argtypes = [_P, _P, _I, _I]
    lib.tutx_linear_silu_f32.argtypes = [_P, _I, _P, _P, _I, _I, _I, _I, ctypes.c_int]
    lib.tutx_pack_gated.restype = lib.tutx_linear_silu_f32.restype = None
    lib.tutx_linear_vector_bits.argtypes = []
    lib.tutx_linear_vector_bits.restype = ctypes.c_int
    return lib


def _check_f32(name: str, t: torch.Tensor, dim: int) -> None:
    if t.dtype != torch.float32 or t.device.type != "cpu" or t.dim() != dim:
        raise TypeError(f"{name}: expected a {dim}-D float32 CPU tensor, got {t.dim()}-D {t.dtype} on {t.device}")


def _checked_input(x: torch.Tensor, packed: torch.Tensor, packer: str, name: str, outputs: int,
                   cols_per_tile: int) -> torch.Tensor:
    """The checks :func:`linear_cpu` and :func:`linear_silu_cpu` share: ``x [M, K]`` against a packed
    weight made by ``packer``, whose tiles give ``cols_per_tile`` outputs each (``name``: ``outputs``).
    Returns ``x`` with unit column stride."""
    _check_f32("x", x, 2)
    _check_f32("packed", packed, 3)
    tiles, k, nr = packed.shape
    if nr != NR or not packed.is_contiguous():
        raise ValueError(f"packed: expected a contiguous [tiles, K, {NR}] tensor from {packer}, "
                         f"got {tuple(packed.shape)}")
    if x.shape[1] != k:
        raise ValueError(f"x: expected {k} input features (from packed), got {x.shape[1]}")
    lo, hi = (tiles - 1) * cols_per_tile, tiles * cols_per_tile
    if not lo < outputs <= hi:
        raise ValueError(f"{name}: expected ({lo}, {hi}] for {tiles} packed tiles, got {outputs}")
    return x if x.stride(1) == 1 else x.contiguous()


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight [N, K]`` (an ``nn.Linear``'s) packed for :func:`linear_cpu`: ``[ceil(N / 64), K, 64]``,
    zeros past ``N``."""
    _check_f32("weight", weight, 2)
    weight = weight.detach().contiguous()
    n, k = weight.shape
    packed = torch.empty(-(-n // NR), k, NR)
    _lib().tutx_pack_weight(weight.data_ptr(), packed.data_ptr(), n, k)
    return packed


def pad_bias(bias: torch.Tensor | None, packed: torch.Tensor) -> torch.Tensor | None:
    """``bias [N]`` zero-padded to the packed width (what :func:`linear_cpu` takes)."""
    if bias is None:
        return None
    out = torch.zeros(packed.shape[0] * NR)
    out[:bias.shape[0]] = bias.detach().float()
    return out


def linear_cpu(x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None = None,
               trusted: bool = False) -> torch.Tensor:
    """``x [M, K] @ W.T (+ bias)``: ``[M, out_features]``, with ``packed = pack_weight(W)``.

    ``bias``: the padded bias of :func:`pad_bias`, or None. ``trusted=True`` skips the checks (the
    engine's own contiguous fp32 tensors): wrong shapes then read out of bounds.
    """
    if not trusted:
        x = _checked_input(x, packed, "pack_weight", "out_features", out_features, NR)
        tiles = packed.shape[0]
        if bias is not None and (bias.dtype != torch.float32 or bias.shape != (tiles * NR,)):
            raise ValueError(f"bias: expected float32 [{tiles * NR}] (pad_bias), got {bias.dtype} {tuple(bias.shape)}")
    m, k = x.shape
    y = torch.empty(m, out_features)
    _lib().tutx_linear_f32(x.data_ptr(), x.stride(0), packed.data_ptr(), None if bias is None else bias.data_ptr(),
                           y.data_ptr(), out_features, m, out_features, k, torch.get_num_threads())
    return y


def pack_gated(weight: torch.Tensor) -> torch.Tensor:
    """A fused gate|up weight ``[2 I, K]`` (gate rows first) packed for :func:`linear_silu_cpu`:
    ``[ceil(I / 32), K, 64]``, each tile 32 gate columns and then the 32 up columns they pair with."""
    _check_f32("weight", weight, 2)
    if weight.shape[0] % 2:
        raise ValueError(f"weight: expected [2 I, K] (gate rows, then up rows), got {tuple(weight.shape)}")
    weight = weight.detach().contiguous()
    i, k = weight.shape[0] // 2, weight.shape[1]
    packed = torch.empty(-(-i // (NR // 2)), k, NR)
    _lib().tutx_pack_gated(weight.data_ptr(), packed.data_ptr(), i, k)
    return packed


def linear_silu_cpu(x: torch.Tensor, packed: torch.Tensor, intermediate: int, trusted: bool = False) -> torch.Tensor:
    """``silu(x @ Wg.T) * (x @ Wu.T)``: ``[M, intermediate]``, with ``packed = pack_gated(cat([Wg, Wu]))``.

    A Llama MLP's gate and up products and its SiLU-and-multiply in one pass: the ``[M, 2 I]``
    intermediate is never written. ``trusted=True`` skips the checks (the engine's own tensors).
    """
    if not trusted:
        x = _checked_input(x, packed, "pack_gated", "intermediate", intermediate, NR // 2)
    m, k = x.shape
    y = torch.empty(m, intermediate)
    _lib().tutx_linear_silu_f32(x.data_ptr(), x.stride(0), packed.data_ptr(), y.data_ptr(), intermediate, m,
                                intermediate, k, torch.get_num_threads())
    return y


def linear_silu_ref(x: torch.Tensor, weight_gate: torch.Tensor, weight_up: torch.Tensor) -> torch.Tensor:
    """:func:`linear_silu_cpu` in PyTorch."""
    return torch.nn.functional.silu(x @ weight_gate.T) * (x @ weight_up.T)


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`linear_cpu` in PyTorch."""
    return torch.nn.functional.linear(x, weight, bias)


def vector_bits() -> int:
    """The vector width the kernel was compiled for on this CPU, in bits: 512 (AVX-512), 256 (AVX,
    AVX2) or 128 (SSE, NEON)."""
    return int(_lib().tutx_linear_vector_bits())


def few_rows_limit(in_features: int) -> int | None:
    """The most rows for which :func:`linear_cpu` is used instead of oneDNN's prepacked product
    (None: every row count). Measured on this workplace's CPU (PERF_NOTES.md, L31): with AVX-512
    the kernel beats oneDNN from 1 to 2,048 rows on both benchmark models' shapes; built for AVX2
    it is level with oneDNN's AVX2 kernels at 48-256 rows and behind below 12 rows for wide inputs,
    so there it runs up to 48 rows for inputs of at most 512 features and 12 beyond."""
    if vector_bits() >= 512:
        return None
    return 48 if in_features <= 512 else 12


__all__ = ["pack_weight", "pad_bias", "linear_cpu", "linear_ref", "pack_gated", "linear_silu_cpu", "linear_silu_ref",
           "few_rows_limit", "vector_bits", "NR"]
