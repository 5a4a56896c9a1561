"""Fake quantization with the straight-through estimator (STE): the forward pass rounds, the backward does not.

Rounding has zero gradient almost everywhere, so QAT's backward pass treats ``round`` as the
identity (Bengio et al. 2013): the gradient passes through unchanged for values inside the
clipping range, and is zero for values clipped to the extreme codes (moving them a little changes
nothing). The forward value is ``s * (clamp(round(w / s) + z, qmin, qmax) - z)``, bit for bit
what :func:`~tutx.quant.fake_quantize` and the converted modules compute.
"""
from __future__ import annotations

import torch

from tutx.quant.checks import check_float_tensor
from tutx.quant.primitives import broadcast_qparams, choose_qparams, qrange, quantize, slots_view
from tutx.quant.qat_configs import QATConfig, check_qat_config


def weight_qparams(weight: torch.Tensor, config: QATConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero point (None when symmetric) that the converted module will use for ``weight [N, K]``.

    Shapes: ``[N]`` per channel, ``[N, K // group_size]`` per group. Min-max, computed without
    gradient — the same call ``quantize`` makes inside the modules' ``from_linear``.
    """
    check_qat_config(config)
    w = weight.detach().float()  # [N, K]
    axis, group = (None, config.group_size) if config.group_size is not None else (0, None)
    slots, scale_shape = slots_view(w, axis, group)  # [slots, per_slot]
    scale, zero_point = choose_qparams(slots.amin(1), slots.amax(1), config.bits, config.symmetric)
    return scale.reshape(scale_shape), None if zero_point is None else zero_point.reshape(scale_shape)


class FakeQuantSTE(torch.autograd.Function):
    """Forward: round to the grid and back. Backward: the straight-through estimator."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        q = torch.round(x.float() * scale.reciprocal())  # [N, K], half-to-even as in quantize_codes
        if zero_point is not None:
            q = q + zero_point
        inside = (q >= qmin) & (q <= qmax)  # weights that were not clipped
        q = torch.clamp(q, qmin, qmax)
        if zero_point is not None:
            q = q - zero_point
        ctx.save_for_backward(inside)
        return (q * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None  # identity inside the range, zero where clipped


def fake_quantize_ste(x: torch.Tensor, bits: int = 8, *, symmetric: bool = True, axis: int | None = None,
                      group_size: int | None = None, scale: torch.Tensor | None = None,
                      zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`~tutx.quant.fake_quantize` with a straight-through gradient: differentiable w.r.t. ``x``.

    Same arguments and forward values (bit for bit) as ``fake_quantize``; the gradient is passed
    through where ``x`` lies inside the clipping range and is zero where it was clipped. Without
    ``scale`` the range is min-max of ``x`` (then nothing is clipped); the qparams get no gradient.
    """
    check_float_tensor(x)
    with torch.no_grad():
        q = quantize(x.detach(), bits, symmetric=symmetric, axis=axis, group_size=group_size, scale=scale,
                     zero_point=zero_point)  # validates everything, and chooses qparams when not given
    s = broadcast_qparams(q.scale, x, q.axis, q.group_size)
    z = None if q.zero_point is None else broadcast_qparams(q.zero_point, x, q.axis, q.group_size).float()
    qmin, qmax = qrange(bits, symmetric)
    return FakeQuantSTE.apply(x, s, z, qmin, qmax)


def fake_quantize_weight(weight: torch.Tensor, config: QATConfig) -> torch.Tensor:
    """The hot path of :class:`FakeQuantLinear`: no validation, qparams as in :func:`weight_qparams`."""
    scale, zero_point = weight_qparams(weight, config)
    axis, group = (None, config.group_size) if config.group_size is not None else (0, None)
    s = broadcast_qparams(scale, weight, axis, group)  # [N, K] or [N, 1]
    z = None if zero_point is None else broadcast_qparams(zero_point, weight, axis, group).float()
    qmin, qmax = qrange(config.bits, config.symmetric)
    return FakeQuantSTE.apply(weight, s, z, qmin, qmax)
