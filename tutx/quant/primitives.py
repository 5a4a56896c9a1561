"""Quantize and dequantize: the arithmetic every quantization scheme in Chapter 3 is built from.

An integer code ``q`` stands for the real number ``(q - zero_point) * scale``. A scheme chooses
three things:

* **bits** — 8 or 4;
* **symmetric or asymmetric** — symmetric codes are signed and centred on zero
  (``zero_point = 0``, codes in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``: the restricted range, so
  that ``+max`` and ``-max`` are both exact); asymmetric codes are unsigned (``[0, 2**bits - 1]``)
  with an integer zero point, which spends every level on the data's actual ``[min, max]``;
* **granularity** — one scale for the whole tensor (``axis=None``), one per channel along ``axis``
  (per-channel), or one per group of ``group_size`` consecutive elements of the last dimension
  (per-group; for a Linear weight ``[out, in]`` that is per output row, per block of inputs).

Rounding is half-to-even and ``x * (1 / scale)``, as in PyTorch's own quantizers, so our codes are
bit-identical to ``torch.quantize_per_channel`` given the same scales.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from tutx._validate import check_int
from tutx.quant.checks import EPS as _EPS
from tutx.quant.checks import SUPPORTED_BITS, check_bits, check_finite, check_float_tensor  # noqa: F401


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """The integer codes a scheme may use: ``(-127, 127)`` / ``(-7, 7)`` or ``(0, 255)`` / ``(0, 15)``."""
    check_bits(bits)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return -qmax, qmax
    return 0, 2**bits - 1


def normalize_granularity(shape: torch.Size, axis, group_size) -> tuple[int | None, int | None]:
    """Validate ``axis``/``group_size`` for a tensor of ``shape``; returns them normalised.

    Per-group quantization groups the last dimension, so ``axis`` becomes ``ndim - 1``.
    """
    ndim = len(shape)
    if group_size is not None:
        check_int("group_size", group_size, minimum=1)
        if ndim == 0:
            raise ValueError("group_size: a 0-d tensor has no dimension to group")
        if shape[-1] % group_size:
            raise ValueError(
                f"group_size: {group_size} does not divide the last dimension ({shape[-1]})")
        if axis is not None and axis not in (-1, ndim - 1):
            raise ValueError(f"axis: per-group quantization groups the last dimension; got axis={axis}")
        return ndim - 1, group_size
    if axis is None:
        return None, None
    check_int("axis", axis)
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis: expected None or an int in [{-ndim}, {ndim - 1}], got {axis!r}")
    return axis % ndim, None


def slots_view(x: torch.Tensor, axis: int | None, group_size: int | None) -> tuple[torch.Tensor, tuple]:
    """Reshape ``x`` to ``[n_slots, elems_per_slot]``: one row per scale. Returns the view and the scale shape."""
    if group_size is not None:
        scale_shape = tuple(x.shape[:-1]) + (x.shape[-1] // group_size,)
        return x.reshape(-1, group_size), scale_shape  # [n_groups, group_size]
    if axis is not None:
        moved = x.movedim(axis, 0)
        return moved.reshape(x.shape[axis], -1), (x.shape[axis],)  # [C, rest]
    return x.reshape(1, -1), ()  # [1, numel]


def broadcast_qparams(p: torch.Tensor, x: torch.Tensor, axis: int | None, group_size: int | None) -> torch.Tensor:
    """Expand per-slot parameters ``p`` to the shape of ``x``."""
    if group_size is not None:
        return p.repeat_interleave(group_size, dim=-1)  # [..., cols]
    if axis is not None:
        view = [1] * x.dim()
        view[axis] = -1
        return p.reshape(view)
    return p


def choose_qparams(min_val: torch.Tensor, max_val: torch.Tensor, bits: int, symmetric: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale (float32) and zero point (int32, or None when symmetric) covering ``[min_val, max_val]``.

    The range is widened to include 0 so that zero (padding, ReLU outputs) is exact. Matches
    ``torch.ao.quantization.MinMaxObserver`` for the same integer range.
    """
    qmin, qmax = qrange(bits, symmetric)
    min_neg = torch.clamp(min_val.float(), max=0.0)
    max_pos = torch.clamp(max_val.float(), min=0.0)
    if symmetric:
        scale = torch.maximum(-min_neg, max_pos) / ((qmax - qmin) / 2)
        return torch.clamp(scale, min=_EPS), None
    scale = torch.clamp((max_pos - min_neg) / (qmax - qmin), min=_EPS)
    zero_point = qmin - torch.round(min_neg / scale).to(torch.int32)
    return scale, torch.clamp(zero_point, qmin, qmax).to(torch.int32)


@dataclass(frozen=True, repr=False, eq=False)
class QTensor:
    """A quantized tensor: integer codes plus what is needed to map them back to reals.

    ``data`` holds one code per element, shaped like the original tensor (int8 when symmetric,
    uint8 when asymmetric — 4-bit codes too; see :func:`pack_int4` for two per byte).
    ``scale`` (float32) and ``zero_point`` (int32, ``None`` when symmetric) have shape ``[]``
    per-tensor, ``[C]`` per-channel, ``[..., cols // group_size]`` per-group.
    """

    data: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    bits: int
    group_size: int | None = None
    axis: int | None = None

    def __post_init__(self):
        check_bits(self.bits)
        axis, group = normalize_granularity(self.data.shape, self.axis, self.group_size)
        object.__setattr__(self, "axis", axis)
        if self.symmetric and self.data.dtype != torch.int8:
            raise ValueError(f"data: symmetric codes are int8, got {self.data.dtype}")
        if not self.symmetric and self.data.dtype != torch.uint8:
            raise ValueError(f"data: asymmetric codes are uint8, got {self.data.dtype}")
        _, scale_shape = slots_view(self.data, axis, group)
        if tuple(self.scale.shape) != scale_shape:
            raise ValueError(f"scale: expected shape {scale_shape}, got {tuple(self.scale.shape)}")
        if self.zero_point is not None and self.zero_point.shape != self.scale.shape:
            raise ValueError(f"zero_point: expected shape {scale_shape}, got {tuple(self.zero_point.shape)}")

    @property
    def symmetric(self) -> bool:
        return self.zero_point is None

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    @property
    def granularity(self) -> str:
        if self.group_size is not None:
            return f"per-group(group_size={self.group_size})"
        return "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self, dtype)

    def __repr__(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        return (f"QTensor(shape={tuple(self.shape)}, int{self.bits}, {kind}, {self.granularity}, "
                f"scale={tuple(self.scale.shape)})")


def quantize(x: torch.Tensor, bits: int = 8, *, symmetric: bool = True, axis: int | None = None,
             group_size: int | None = None, scale: torch.Tensor | None = None,
             zero_point: torch.Tensor | None = None) -> QTensor:
    """Quantize ``x`` with the given scheme; without ``scale`` the range is min-max of ``x`` itself.

    Pass ``scale`` (and ``zero_point`` when asymmetric) from an observer to use calibrated ranges.
    Values outside the range are clipped to the extreme codes — that is what calibration trades.
    """
    check_float_tensor(x)
    check_bits(bits)
    check_finite(x)
    axis, group_size = normalize_granularity(x.shape, axis, group_size)
    slots, scale_shape = slots_view(x, axis, group_size)  # [n_slots, per_slot]
    if scale is None:
        if zero_point is not None:
            raise ValueError("zero_point: given without scale")
        if slots.numel() == 0:
            raise ValueError("x: cannot choose a scale for an empty tensor")
        scale, zero_point = choose_qparams(slots.amin(1), slots.amax(1), bits, symmetric)
        scale = scale.reshape(scale_shape)
        zero_point = None if zero_point is None else zero_point.reshape(scale_shape)
    else:
        scale, zero_point = _check_given_qparams(scale, zero_point, scale_shape, bits, symmetric)
    return QTensor(quantize_codes(x, scale, zero_point, bits, axis, group_size), scale, zero_point,
                   bits, group_size, axis)


def _check_given_qparams(scale, zero_point, scale_shape, bits, symmetric):
    check_float_tensor(scale, "scale")
    if tuple(scale.shape) != scale_shape:
        raise ValueError(f"scale: expected shape {scale_shape}, got {tuple(scale.shape)}")
    if not bool((scale > 0).all()):
        raise ValueError("scale: every scale must be > 0")
    if symmetric:
        if zero_point is not None:
            raise ValueError("zero_point: must be None for symmetric quantization")
        return scale.float(), None
    if zero_point is None or zero_point.is_floating_point():
        raise ValueError("zero_point: asymmetric quantization needs an integer zero_point tensor")
    if tuple(zero_point.shape) != scale_shape:
        raise ValueError(f"zero_point: expected shape {scale_shape}, got {tuple(zero_point.shape)}")
    qmin, qmax = qrange(bits, symmetric)
    if bool((zero_point < qmin).any() | (zero_point > qmax).any()):
        raise ValueError(f"zero_point: values must lie in [{qmin}, {qmax}]")
    return scale.float(), zero_point.to(torch.int32)


def quantize_codes(x, scale, zero_point, bits, axis, group_size) -> torch.Tensor:
    """The rounding step alone: ``clamp(round(x / scale) + zero_point)`` as int8/uint8 codes."""
    qmin, qmax = qrange(bits, zero_point is None)
    s = broadcast_qparams(scale, x, axis, group_size)
    q = torch.round(x.float() * s.reciprocal())
    if zero_point is not None:
        q = q + broadcast_qparams(zero_point, x, axis, group_size)
    q = torch.clamp(q, qmin, qmax)
    return q.to(torch.int8 if zero_point is None else torch.uint8)


def dequantize(q: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map codes back to reals: ``(data - zero_point) * scale``."""
    if not isinstance(q, QTensor):
        raise TypeError(f"q: expected a QTensor, got {type(q).__name__}")
    vals = q.data.to(torch.float32)
    if q.zero_point is not None:
        vals = vals - broadcast_qparams(q.zero_point, vals, q.axis, q.group_size)
    return (vals * broadcast_qparams(q.scale, vals, q.axis, q.group_size)).to(dtype)


def fake_quantize(x: torch.Tensor, bits: int = 8, **kwargs) -> torch.Tensor:
    """Quantize then dequantize: the value the model actually sees, in ``x``'s dtype."""
    return quantize(x, bits, **kwargs).dequantize(x.dtype)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Pack 4-bit codes two per byte along the last dimension: ``[..., K]`` → uint8 ``[..., K // 2]``.

    Nibble order: byte ``j`` holds element ``2j`` in its **low** nibble (bits 0-3) and element
    ``2j + 1`` in its **high** nibble (bits 4-7) — the order PyTorch's ``quint4x2`` and Triton's
    ``dot_scaled`` use. Signed codes (int8 in ``[-8, 7]``) are stored as two's-complement nibbles;
    unsigned codes (uint8 in ``[0, 15]``) as they are.
    """
    if not isinstance(codes, torch.Tensor):
        raise TypeError(f"codes: expected a torch.Tensor, got {type(codes).__name__}")
    if codes.dtype not in (torch.int8, torch.uint8):
        raise ValueError(f"codes: expected int8 or uint8 4-bit codes, got dtype {codes.dtype}")
    if codes.dim() == 0 or codes.shape[-1] % 2:
        raise ValueError(f"codes: the last dimension must be even to pack pairs, got shape {tuple(codes.shape)}")
    lo, hi = (-8, 7) if codes.dtype == torch.int8 else (0, 15)
    if codes.numel() and bool((codes < lo).any() | (codes > hi).any()):
        raise ValueError(f"codes: {codes.dtype} 4-bit codes must lie in [{lo}, {hi}]")
    nib = codes.to(torch.int16) & 0xF  # two's complement for negatives
    return (nib[..., 0::2] | (nib[..., 1::2] << 4)).to(torch.uint8)  # [..., K // 2]


def unpack_int4(packed: torch.Tensor, signed: bool = False) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: uint8 ``[..., K // 2]`` → ``[..., K]`` int8 (signed) or uint8."""
    if not isinstance(packed, torch.Tensor):
        raise TypeError(f"packed: expected a torch.Tensor, got {type(packed).__name__}")
    if packed.dtype != torch.uint8:
        raise ValueError(f"packed: expected dtype torch.uint8, got {packed.dtype}")
    if packed.dim() == 0:
        raise ValueError("packed: expected at least one dimension")
    p = packed.to(torch.int16)
    lo, hi = p & 0xF, p >> 4  # [..., K // 2] each
    out = torch.stack([lo, hi], dim=-1).reshape(*packed.shape[:-1], -1)  # [..., K]
    if signed:
        return torch.where(out >= 8, out - 16, out).to(torch.int8)
    return out.to(torch.uint8)
