"""Bytes moved and FLOPs of the Chapter 5 kernels, for rooflines and effective GB/s or TFLOP/s.

Each function returns a :class:`KernelCost` for one call at a given shape, counting what an ideal
fused kernel must move — every input read once, every output written once — and the arithmetic
it does. Dividing by a measured time gives the *effective* bandwidth or FLOP rate, the number to
hold against a GPU's ceilings in :mod:`tutx.hardware`::

    cost = softmax_cost(4096, 8192, torch.bfloat16)
    cost.gbps(seconds)                 # effective GB/s
    cost.intensity                     # FLOP per byte, vs get_hardware("H100-SXM").ridge_point()

FLOP counts per element are conventions (an ``exp`` counts as one): softmax 5 (max, subtract,
exp, sum, divide), RMSNorm 4 (square, add, two multiplies), LayerNorm 7 (add for the mean,
subtract, square, add, three multiplies/adds for scale and shift), SwiGLU 5 (silu is
``x / (1 + exp(-x))``: exp, add, divide, then two multiplies). Backward passes read ``x`` and
``dy`` and write ``dx`` (per-row statistics and the small ``[N]`` weight gradients are counted too).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from tutx._validate import check_bool, check_positive_int

__all__ = ["KernelCost", "softmax_cost", "rms_norm_cost", "layer_norm_cost", "swiglu_cost", "matmul_cost"]


class KernelCost(NamedTuple):
    """Bytes an ideal kernel moves to or from memory, and the FLOPs it does, for one call."""

    bytes: int
    flops: int

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOP per byte."""
        return self.flops / self.bytes

    def gbps(self, seconds: float) -> float:
        """Effective bandwidth in GB/s for a call that took ``seconds``."""
        return self.bytes / seconds / 1e9

    def tflops(self, seconds: float) -> float:
        """Achieved TFLOP/s for a call that took ``seconds``."""
        return self.flops / seconds / 1e12


def _size(dtype) -> int:
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype such as torch.bfloat16, got {dtype!r}")
    return torch.empty((), dtype=dtype).element_size()


def _rows_cols(rows, cols):
    return check_positive_int("rows", rows), check_positive_int("cols", cols)


def softmax_cost(rows: int, cols: int, dtype: torch.dtype) -> KernelCost:
    """Row softmax of ``[rows, cols]``: read x, write y (the one-block path); 5 FLOPs per element."""
    rows, cols = _rows_cols(rows, cols)
    return KernelCost(2 * rows * cols * _size(dtype), 5 * rows * cols)


def rms_norm_cost(rows: int, cols: int, dtype: torch.dtype, backward: bool = False) -> KernelCost:
    """RMSNorm of ``[rows, cols]``: forward reads x and w, writes y and one fp32 rstd per row.

    ``backward=True``: reads x, dy, w and the rstd, writes dx and dw; about 7 FLOPs per element.
    """
    rows, cols = _rows_cols(rows, cols)
    e = _size(dtype)
    if check_bool("backward", backward):
        return KernelCost(3 * rows * cols * e + 2 * cols * e + 4 * rows, 7 * rows * cols)
    return KernelCost(2 * rows * cols * e + cols * e + 4 * rows, 4 * rows * cols)


def layer_norm_cost(rows: int, cols: int, dtype: torch.dtype, backward: bool = False) -> KernelCost:
    """LayerNorm of ``[rows, cols]`` with weight and bias: as :func:`rms_norm_cost` plus the mean and bias.

    ``backward=True``: reads x, dy, w, mean, rstd; writes dx, dw, db; about 10 FLOPs per element.
    """
    rows, cols = _rows_cols(rows, cols)
    e = _size(dtype)
    if check_bool("backward", backward):
        return KernelCost(3 * rows * cols * e + 3 * cols * e + 8 * rows, 10 * rows * cols)
    return KernelCost(2 * rows * cols * e + 2 * cols * e + 8 * rows, 7 * rows * cols)


def swiglu_cost(numel: int, dtype: torch.dtype, backward: bool = False) -> KernelCost:
    """``silu(gate) * up`` over ``numel`` elements: read gate and up, write out; 5 FLOPs per element.

    ``backward=True``: reads gate, up, dy, writes d_gate and d_up; about 10 FLOPs per element.
    """
    numel = check_positive_int("numel", numel)
    e = _size(dtype)
    if check_bool("backward", backward):
        return KernelCost(5 * numel * e, 10 * numel)
    return KernelCost(3 * numel * e, 5 * numel)


def matmul_cost(m: int, n: int, k: int, dtype: torch.dtype) -> KernelCost:
    """``[m, k] @ [k, n]``: ``2·m·n·k`` FLOPs; each operand read once and c written once (the ideal)."""
    m, n, k = (check_positive_int(name, v) for name, v in (("m", m), ("n", n), ("k", k)))
    return KernelCost((m * k + k * n + m * n) * _size(dtype), 2 * m * n * k)
