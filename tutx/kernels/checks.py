"""Tensor checks shared by every kernel wrapper (attention, decode, quantized matmuls).

Each raises a ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, device or value)
that names the argument, what it got and what was expected (CONTRIBUTING.md, *Errors*). Plain
Python values (ints, flags, choices) are checked with :mod:`tutx._validate`.
"""
from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_tensor(name: str, x, ndim: int, layout: str) -> None:
    """``x`` is a tensor with ``ndim`` dimensions (``layout`` names them in the message)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor {layout}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions {layout}, got shape {tuple(x.shape)}")
    if any(s == 0 for s in x.shape):
        raise ValueError(f"{name}: expected every dimension >= 1 {layout}, got shape {tuple(x.shape)}")


def check_float_dtypes(**tensors: torch.Tensor) -> torch.dtype:
    """All tensors share one floating dtype among fp16 / bf16 / fp32; return it."""
    (first, x), *rest = tensors.items()
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{first}: expected dtype float16, bfloat16 or float32, got {x.dtype}")
    for name, y in rest:
        if y.dtype != x.dtype:
            raise TypeError(f"{name}: expected the dtype of {first} ({x.dtype}), got {y.dtype}")
    return x.dtype


def check_same_device(**tensors: torch.Tensor) -> None:
    """All tensors are on the device of the first one."""
    (first, x), *rest = tensors.items()
    for name, y in rest:
        if y.device != x.device:
            raise ValueError(f"{name}: expected the device of {first} ({x.device}), got {y.device}")


def check_matrix(t, name: str, dtypes: tuple, rows: int | None = None, cols: int | None = None,
                 contiguous: bool = False) -> None:
    """``t`` is a 2-D tensor of one of ``dtypes`` (with ``rows`` / ``cols`` / contiguity if given)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise ValueError(f"{name}: expected a 2-D tensor, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")
    if rows is not None and t.shape[0] != rows:
        raise ValueError(f"{name}: expected {rows} rows, got shape {tuple(t.shape)}")
    if cols is not None and t.shape[1] != cols:
        raise ValueError(f"{name}: expected {cols} columns, got shape {tuple(t.shape)}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor (call .contiguous()), got strides {t.stride()}")


def check_vector(t, name: str, dtypes: tuple, length: int) -> None:
    """``t`` is a 1-D tensor of ``length`` elements, of one of ``dtypes``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.shape != (length,):
        raise ValueError(f"{name}: expected shape ({length},), got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name}: expected dtype in {[str(d) for d in dtypes]}, got {t.dtype}")


__all__ = ["FLOAT_DTYPES", "check_tensor", "check_float_dtypes", "check_same_device", "check_matrix", "check_vector"]
