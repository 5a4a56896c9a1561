"""Checks for Chapter 3's exercises (quantization).

Each ``check_…(fn)`` runs your function on a handful of tensors and compares it with the
reference in :mod:`tutx.quant`. It prints ``✅ …`` when all cases pass, ``✏️ … not solved yet``
while your function is still the stub, and raises an ``AssertionError`` naming the first
failing case otherwise.
"""
from __future__ import annotations

import torch

from tutx.exercises._check import run_tensor_cases
from tutx.quant.primitives import pack_int4, quantize, unpack_int4

__all__ = ["check_quantize_per_channel_int8", "check_pack_int4", "check_unpack_int4"]


def _weights(n: int, k: int, seed: int, std: float = 0.02) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * std  # [N, K]


def _reference_per_channel_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = quantize(w, 8, symmetric=True, axis=0)
    return q.data, q.scale  # int8 [N, K], float32 [N]


def check_quantize_per_channel_int8(fn) -> None:
    """``fn(w) -> (codes, scale)``: symmetric INT8 with one scale per output channel (row).

    ``w`` is float32 ``[N, K]`` (a Linear weight ``[out, in]``). For each row:
    ``scale = max(|w_row|) / 127`` — but at least ``torch.finfo(torch.float32).eps``, so an
    all-zero row gets a tiny positive scale instead of a division by zero — and
    ``codes = clamp(round(w_row / scale), -127, 127)`` as ``torch.int8`` (``torch.round`` rounds
    halves to even). Return ``codes`` int8 ``[N, K]`` and ``scale`` float32 ``[N]``.
    """
    outlier = _weights(6, 32, seed=2)
    outlier[3, 7] = 0.9  # one large weight: its row's other codes get squeezed towards 0
    zero_row = _weights(4, 16, seed=3)
    zero_row[1] = 0.0
    cases = [
        (_weights(4, 16, seed=0),),
        (_weights(16, 64, seed=1, std=1.0),),
        (outlier,),
        (zero_row,),
        (torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.0, -2.0]]),),  # by hand: scales 1/127 and 2/127
    ]
    run_tensor_cases("check_quantize_per_channel_int8", fn, _reference_per_channel_int8, cases, rtol=1e-6, atol=0)


def _codes(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)  # [N, K]


def check_pack_int4(fn) -> None:
    """``fn(codes) -> packed``: two 4-bit codes per byte, uint8 ``[N, K]`` (values 0..15) → uint8 ``[N, K // 2]``.

    Byte ``j`` of a row holds column ``2j`` in its **low** nibble (bits 0-3) and column
    ``2j + 1`` in its **high** nibble (bits 4-7): ``packed = codes[:, 0::2] | (codes[:, 1::2] << 4)``.
    """
    cases = [
        (torch.tensor([[1, 2, 3, 4]], dtype=torch.uint8),),  # -> [[0x21, 0x43]]
        (torch.full((2, 6), 15, dtype=torch.uint8),),  # every bit set: 0xFF
        (_codes(3, 8, seed=0),),
        (_codes(16, 64, seed=1),),
    ]
    run_tensor_cases("check_pack_int4", fn, pack_int4, cases, rtol=0, atol=0)


def check_unpack_int4(fn) -> None:
    """``fn(packed) -> codes``: the inverse of :func:`check_pack_int4`'s packing, uint8 ``[N, K // 2]`` → ``[N, K]``.

    Low nibble first: ``codes[:, 2j] = packed[:, j] & 0xF`` and ``codes[:, 2j + 1] = packed[:, j] >> 4``.
    """
    cases = [
        (torch.tensor([[0x21, 0x43]], dtype=torch.uint8),),  # -> [[1, 2, 3, 4]]
        (torch.tensor([[0x0F, 0xF0, 0xFF, 0x00]], dtype=torch.uint8),),
        (pack_int4(_codes(3, 8, seed=2)),),
        (pack_int4(_codes(16, 64, seed=3)),),
    ]
    run_tensor_cases("check_unpack_int4", fn, unpack_int4, cases, rtol=0, atol=0)
