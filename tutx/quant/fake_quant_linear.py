"""``FakeQuantLinear``: an ``nn.Linear`` that trains through its own rounding (QAT)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tutx._validate import check_positive_int
from tutx.quant.checks import check_linear
from tutx.quant.fake_quant import fake_quantize_weight
from tutx.quant.modules import QUANTIZED_LINEARS, Int4WeightOnlyLinear, Int8WeightOnlyLinear
from tutx.quant.primitives import quantize
from tutx.quant.qat_configs import Int4WeightOnlyQAT, Int8WeightOnlyQAT, QATConfig, check_qat_config, check_qat_shape


class FakeQuantLinear(nn.Module):
    """``y = x @ fake_quantize(W).T + b``: an ``nn.Linear`` that trains through its own rounding.

    Holds the floating-point ``weight [out, in]`` and ``bias [out]`` as parameters (shared with the
    ``nn.Linear`` it was made from); :meth:`convert` turns it into the packed quantized module.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 config: QATConfig = Int4WeightOnlyQAT(), device=None, dtype=None):
        super().__init__()
        check_qat_config(config)
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        check_qat_shape(config, in_features)
        self.in_features, self.out_features, self.config = in_features, out_features, config
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's init, for modules built from scratch

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QATConfig, fqn: str = "") -> "FakeQuantLinear":
        """Wrap ``linear``, sharing (not copying) its weight and bias parameters."""
        check_qat_config(config)
        if isinstance(linear, (FakeQuantLinear, *QUANTIZED_LINEARS)):
            raise ValueError(f"linear ({fqn or 'linear'!r}): is already a {type(linear).__name__}")
        check_linear(linear, fqn)  # an nn.Linear with real, finite 2-D weights
        check_qat_shape(config, linear.in_features, fqn)
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod.in_features, mod.out_features, mod.config = linear.in_features, linear.out_features, config
        mod.register_parameter("weight", linear.weight)
        mod.register_parameter("bias", linear.bias)  # None when the Linear has no bias
        return mod

    def fake_quantized_weight(self) -> torch.Tensor:
        """The weight the converted module will hold, ``[out, in]``, differentiable by the STE."""
        return fake_quantize_weight(self.weight, self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected last dimension {self.in_features}, got shape {tuple(x.shape)}")
        return F.linear(x, self.fake_quantized_weight().to(x.dtype), self.bias)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this module's parameters (undoes :func:`prepare_qat_` for this layer)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight = self.weight
        lin.bias = self.bias
        return lin

    def convert(self, fqn: str = "") -> nn.Module:
        """The real quantized module: ``Int8WeightOnlyLinear`` or ``Int4WeightOnlyLinear``, same numbers."""
        lin = self.to_linear()
        if isinstance(self.config, Int8WeightOnlyQAT):
            return Int8WeightOnlyLinear.from_linear(lin, self.config.target(), fqn=fqn)
        target = self.config.target(self.in_features)
        if self.config.group_size is not None:
            return Int4WeightOnlyLinear.from_linear(lin, target, fqn=fqn)
        w = check_linear(lin, fqn)  # [N, K]
        q = quantize(w, 4, symmetric=False, axis=0)  # one scale and zero point per output channel: [N]
        groups = self.in_features // target.group_size
        scale = q.scale[:, None].expand(-1, groups)  # [N, groups]: the row's scale in every group
        zero = q.zero_point[:, None].expand(-1, groups)  # [N, groups]
        return Int4WeightOnlyLinear.from_codes(lin, target, q.data, scale, zero)

    def extra_repr(self) -> str:
        gran = "per-channel" if self.config.group_size is None else f"group_size={self.config.group_size}"
        return (f"in={self.in_features}, out={self.out_features}, int{self.config.bits}, {gran}"
                + ("" if self.bias is not None else ", bias=False"))
