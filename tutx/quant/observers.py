"""Observers: choose quantization ranges from data seen during calibration.

Min-max covers every value seen, so one outlier stretches the grid for everyone else. Clipping
the range costs a large error on the few outliers and buys a finer grid for the many values in
the bulk; the percentile and MSE observers choose where to clip.

Usage: ``obs = MSEObserver(bits=4, axis=0); obs.update(batch)…; q = obs.quantize(w)``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from tutx._validate import check_bool, check_int, check_number, check_probability

from tutx.quant.primitives import (
    QTensor,
    check_bits,
    check_finite,
    check_float_tensor,
    choose_qparams,
    normalize_granularity,
    quantize,
    quantize_codes,
    slots_view,
)


class Observer(ABC):
    """Base class: tracks per-slot statistics (one slot per scale) over ``update`` calls."""

    def __init__(self, bits: int = 8, *, symmetric: bool = True, axis: int | None = None,
                 group_size: int | None = None):
        self.bits = check_bits(bits)
        self.symmetric = check_bool("symmetric", symmetric)
        self.axis = axis
        self.group_size = group_size
        self._shape: torch.Size | None = None  # shape of the first batch; later ones must agree
        self._scale_shape: tuple | None = None

    def update(self, x: torch.Tensor) -> "Observer":
        """Observe one batch (returns self so calls chain)."""
        check_float_tensor(x)
        check_finite(x)
        if x.numel() == 0:
            raise ValueError("x: cannot observe an empty tensor")
        axis, group = normalize_granularity(x.shape, self.axis, self.group_size)
        if self._shape is None:
            self._shape, self.axis = x.shape, axis
        elif self._slots_key(x.shape) != self._slots_key(self._shape):
            raise ValueError(f"x: shape {tuple(x.shape)} does not match the slots of the first batch "
                             f"{tuple(self._shape)}")
        slots, self._scale_shape = slots_view(x.detach(), axis, group)  # [n_slots, per_slot]
        self._observe(slots.float())
        return self

    __call__ = update

    def _slots_key(self, shape):
        if self.group_size is not None:
            return tuple(shape[:-1]) + (shape[-1] // self.group_size,)
        return () if self.axis is None else (shape[self.axis],)

    @abstractmethod
    def _observe(self, slots: torch.Tensor) -> None:
        """Fold one batch, viewed as ``[n_slots, per_slot]`` float32, into the statistics."""

    @abstractmethod
    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``(min, max)`` per slot to quantize with."""

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(scale, zero_point)`` shaped like the scales of :class:`QTensor` (zero point None if symmetric)."""
        if self._shape is None:
            raise ValueError("observer: no data observed yet; call update(x) with calibration data first")
        lo, hi = self._range()
        scale, zp = choose_qparams(lo, hi, self.bits, self.symmetric)
        scale = scale.reshape(self._scale_shape)
        return scale, None if zp is None else zp.reshape(self._scale_shape)

    def quantize(self, x: torch.Tensor) -> QTensor:
        """Quantize ``x`` (shaped like the observed batches' slots) with the calibrated range."""
        scale, zp = self.qparams()
        return quantize(x, self.bits, symmetric=self.symmetric, axis=self.axis,
                        group_size=self.group_size, scale=scale, zero_point=zp)

    def __repr__(self) -> str:
        kind = "symmetric" if self.symmetric else "asymmetric"
        return (f"{type(self).__name__}(bits={self.bits}, {kind}, axis={self.axis}, "
                f"group_size={self.group_size})")


class MinMaxObserver(Observer):
    """Running min and max per slot: no value is ever clipped."""

    def __init__(self, bits: int = 8, **kwargs):
        super().__init__(bits, **kwargs)
        self.min_val: torch.Tensor | None = None
        self.max_val: torch.Tensor | None = None

    def _observe(self, slots):
        lo, hi = slots.amin(1), slots.amax(1)  # [n_slots]
        if self.min_val is None:
            self.min_val, self.max_val = lo, hi
        else:
            self.min_val, self.max_val = torch.minimum(self.min_val, lo), torch.maximum(self.max_val, hi)

    def _range(self):
        return self.min_val, self.max_val


class PercentileObserver(Observer):
    """Clip at a percentile of each batch (e.g. 99.99), averaged over batches.

    Averaging per-batch percentiles keeps memory constant; a histogram would be exact but is more
    machinery than a course needs. For symmetric schemes the percentile is taken of ``|x|``.
    """

    def __init__(self, bits: int = 8, percentile: float = 99.99, **kwargs):
        super().__init__(bits, **kwargs)
        check_number("percentile", percentile, minimum=50, maximum=100, strict_min=True)
        self.percentile = float(percentile)
        self._lo_sum = self._hi_sum = None
        self._batches = 0

    def _kth(self, v: torch.Tensor, frac: float) -> torch.Tensor:
        k = min(v.shape[1], max(1, int(round(frac * v.shape[1]))))
        return v.kthvalue(k, dim=1).values  # [n_slots]

    def _observe(self, slots):
        p = self.percentile / 100
        if self.symmetric:
            hi = self._kth(slots.abs(), p)
            lo = -hi
        else:
            lo, hi = self._kth(slots, 1 - p), self._kth(slots, p)
        self._lo_sum = lo if self._lo_sum is None else self._lo_sum + lo
        self._hi_sum = hi if self._hi_sum is None else self._hi_sum + hi
        self._batches += 1

    def _range(self):
        return self._lo_sum / self._batches, self._hi_sum / self._batches


class MSEObserver(Observer):
    """Search the clipping ratio that minimises the quantization MSE, per slot.

    Candidates are ``ratio * [min, max]`` for ``grid`` ratios in ``[min_ratio, 1]``. The observer keeps
    the observed values (calibration sets and weights are small) so the search is exact.
    """

    def __init__(self, bits: int = 8, grid: int = 100, min_ratio: float = 0.2, **kwargs):
        super().__init__(bits, **kwargs)
        check_int("grid", grid, minimum=2)
        check_probability("min_ratio", min_ratio, allow_zero=False, allow_one=False)
        self.grid, self.min_ratio = grid, float(min_ratio)
        self._seen: list[torch.Tensor] = []

    def _observe(self, slots):
        self._seen.append(slots)

    def _range(self):
        data = torch.cat(self._seen, dim=1)  # [n_slots, all observed values]
        lo, hi = data.amin(1), data.amax(1)  # [n_slots]
        best_err = torch.full_like(lo, float("inf"))
        best_lo, best_hi = lo.clone(), hi.clone()
        for ratio in torch.linspace(self.min_ratio, 1.0, self.grid).tolist():
            c_lo, c_hi = lo * ratio, hi * ratio
            scale, zp = choose_qparams(c_lo, c_hi, self.bits, self.symmetric)
            q = quantize_codes(data, scale, zp, self.bits, axis=0, group_size=None)  # [n_slots, n]
            deq = q.float() - (0 if zp is None else zp[:, None])
            err = (deq * scale[:, None] - data).pow(2).mean(1)  # [n_slots]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_lo, best_hi = torch.where(better, c_lo, best_lo), torch.where(better, c_hi, best_hi)
        return best_lo, best_hi
