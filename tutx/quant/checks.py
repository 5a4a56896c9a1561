"""Argument checks shared by the quantization modules (the generic ones live in ``tutx._validate``)."""
from __future__ import annotations

import torch
from torch import nn

from tutx._validate import check_choice, check_int

SUPPORTED_BITS = (4, 8)
EPS = torch.finfo(torch.float32).eps  # smallest scale, as torch's observers use


def check_bits(bits) -> int:
    """``bits`` is 4 or 8."""
    return check_choice("bits", check_int("bits", bits), SUPPORTED_BITS)


def check_float_tensor(x, name: str = "x") -> torch.Tensor:
    """``x`` is a floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    return x


def check_finite(x: torch.Tensor, name: str = "x") -> None:
    """Quantizing NaN/Inf silently poisons a whole scale group, so refuse it up front."""
    if x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or Inf; cannot choose quantization parameters")


def check_linear(linear, fqn: str = "") -> torch.Tensor:
    """``linear`` is an ``nn.Linear`` with real, finite 2-D weights; returns them as float32 ``[out, in]``."""
    where = f" ({fqn!r})" if fqn else ""
    if not isinstance(linear, nn.Linear):
        raise TypeError(f"linear{where}: expected an nn.Linear, got {type(linear).__name__}")
    w = linear.weight
    if w.dim() != 2:
        raise ValueError(f"linear{where}: expected a 2-D weight, got shape {tuple(w.shape)}")
    if w.device.type == "meta":
        raise ValueError(f"linear{where}: weight is on the meta device; load real weights before quantizing")
    check_finite(w.detach(), f"linear{where}.weight")
    return w.detach().float()  # [out, in]
