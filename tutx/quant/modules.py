"""Drop-in replacements for ``nn.Linear`` that hold quantized weights.

The quantized weights, scales and zero points are *buffers*, not parameters: they are not
trained, but they move with ``.to(device)``, appear in ``state_dict`` and are saved. The original
floating-point weight is dropped, so the memory really shrinks (``model_weight_bytes``).

``forward`` flattens the leading dimensions and calls the kernel wrapper, which runs the Triton
kernel on CUDA tensors and the PyTorch reference on CPU (see ``tutx.kernels._dispatch``).
"""
from __future__ import annotations

import torch
from torch import nn

from tutx.kernels.quant_matmul import int8_matmul_rescale, int8_weight_only_matmul
from tutx.kernels.quant_matmul_int4 import int4_weight_only_matmul
from tutx.quant.configs import Int4WeightOnly, Int8DynamicActivationInt8Weight, Int8WeightOnly
from tutx._validate import check_positive_int
from tutx.quant.checks import EPS as _EPS
from tutx.quant.checks import check_linear
from tutx.quant.primitives import pack_int4, quantize, unpack_int4


class QuantizedLinear(nn.Module):
    """Shared plumbing: shapes, bias, flattening of leading dimensions, and a readable repr."""

    def __init__(self, in_features: int, out_features: int, bias: bool, device, dtype):
        super().__init__()
        check_positive_int("in_features", in_features)
        check_positive_int("out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        bias_t = torch.zeros(out_features, device=device, dtype=dtype) if bias else None
        self.register_buffer("bias", bias_t)

    def _copy_bias(self, linear: nn.Linear) -> None:
        if linear.bias is not None:
            self.bias.copy_(linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected last dimension {self.in_features}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # [tokens, in]
        y = self._matmul_float64(x2) if x.dtype == torch.float64 else self._matmul(x2)  # [tokens, out]
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def _matmul_float64(self, x: torch.Tensor) -> torch.Tensor:
        """float64 inputs: the exactly dequantized weight, a float64 matmul — for evaluations that must
        give the same digits on every CPU (float32 sums depend on the BLAS and the thread count)."""
        return x @ self.dequantize_weight(torch.float64).T  # [tokens, out]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}" + ("" if self.bias is not None else ", bias=False")


class Int8WeightOnlyLinear(QuantizedLinear):
    """``y = x @ (w_int8 * scale).T + b`` with int8 weights ``[out, in]`` and fp32 scales ``[out]``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=torch.float32):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, device=device))

    @property
    def config(self) -> Int8WeightOnly:
        return Int8WeightOnly()

    @classmethod
    def empty_like(cls, linear: nn.Linear, config=None):
        """A module shaped for ``linear`` with placeholder buffers (to load a checkpoint into)."""
        return cls(linear.in_features, linear.out_features, linear.bias is not None,
                   linear.weight.device, linear.weight.dtype)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: Int8WeightOnly | None = None, fqn: str = ""):
        w = check_linear(linear, fqn)
        q = quantize(w, 8, symmetric=True, axis=0)  # per output channel
        mod = cls.empty_like(linear)
        mod.weight_int8.copy_(q.data)
        mod.weight_scale.copy_(q.scale)
        mod._copy_bias(linear)
        return mod

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.weight_int8.to(dtype) * self.weight_scale.to(dtype)[:, None]  # [out, in]

    def _matmul(self, x):
        return int8_weight_only_matmul(x, self.weight_int8, self.weight_scale)


class Int4WeightOnlyLinear(QuantizedLinear):
    """4-bit group-wise weights, packed two per byte ``[out, in // 2]``, with per-group scales and zeros."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 dtype=torch.float32, group_size: int = 128):
        group_size = Int4WeightOnly(group_size).group_size  # validates
        if in_features % group_size:
            raise ValueError(f"in_features: {in_features} is not divisible by group_size={group_size}")
        super().__init__(in_features, out_features, bias, device, dtype)
        self.group_size = group_size
        groups = in_features // group_size
        self.register_buffer("weight_packed",
                             torch.zeros(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, groups, device=device))
        self.register_buffer("weight_zero", torch.zeros(out_features, groups, dtype=torch.uint8, device=device))

    @property
    def config(self) -> Int4WeightOnly:
        return Int4WeightOnly(self.group_size)

    @classmethod
    def empty_like(cls, linear: nn.Linear, config: Int4WeightOnly = Int4WeightOnly()):
        return cls(linear.in_features, linear.out_features, linear.bias is not None,
                   linear.weight.device, linear.weight.dtype, group_size=config.group_size)

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: Int4WeightOnly = Int4WeightOnly(), fqn: str = ""):
        if isinstance(linear, nn.Linear) and linear.in_features % config.group_size:
            raise ValueError(f"in_features: {linear.in_features} of {fqn or 'linear'!r} is not divisible "
                             f"by group_size={config.group_size}")
        w = check_linear(linear, fqn)
        q = quantize(w, 4, symmetric=False, group_size=config.group_size)
        return cls.from_codes(linear, config, q.data, q.scale, q.zero_point)

    @classmethod
    def from_codes(cls, linear: nn.Linear, config: Int4WeightOnly, codes: torch.Tensor, scale: torch.Tensor,
                   zero_point: torch.Tensor):
        """Build from already-chosen 4-bit codes ``[out, in]`` (0..15), scales and zero points ``[out, groups]``.

        GPTQ uses this: it picks the codes itself, column by column.
        """
        mod = cls.empty_like(linear, config)
        mod.weight_packed.copy_(pack_int4(codes.to(torch.uint8)))
        mod.weight_scale.copy_(scale)
        mod.weight_zero.copy_(zero_point.to(torch.uint8))
        mod._copy_bias(linear)
        return mod

    def dequantize_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        q = unpack_int4(self.weight_packed).to(dtype)  # [out, in]
        z = self.weight_zero.to(dtype).repeat_interleave(self.group_size, 1)  # [out, in]
        return (q - z) * self.weight_scale.to(dtype).repeat_interleave(self.group_size, 1)

    def _matmul(self, x):
        return int4_weight_only_matmul(x, self.weight_packed, self.weight_scale, self.weight_zero, self.group_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes ``[T, K]`` and fp32 scales ``[T]``, one per row: W8A8's dynamic activations.

    Hot path: no validation (a NaN check would cost a GPU->CPU sync every call).
    """
    scale = (x.detach().abs().amax(dim=1).float() / 127).clamp(min=_EPS)  # [T]
    q = torch.round(x.float() * scale.reciprocal()[:, None]).clamp(-127, 127).to(torch.int8)  # [T, K]
    return q, scale


class Int8DynActInt8WeightLinear(Int8WeightOnlyLinear):
    """W8A8: per-token int8 activations x per-channel int8 weights, int32 accumulate, fused rescale."""

    @property
    def config(self) -> Int8DynamicActivationInt8Weight:
        return Int8DynamicActivationInt8Weight()

    def _matmul(self, x):
        x_int8, x_scale = quantize_per_token(x)
        return int8_matmul_rescale(x_int8, self.weight_int8, x_scale, self.weight_scale, out_dtype=x.dtype)

    def _matmul_float64(self, x):
        x_int8, x_scale = quantize_per_token(x)  # the same codes as the float32 path would choose
        acc = x_int8.double() @ self.weight_int8.double().T  # [tokens, out], exact integers
        return acc * x_scale.double()[:, None] * self.weight_scale.double()[None, :]


QUANTIZED_LINEARS = (Int8WeightOnlyLinear, Int4WeightOnlyLinear, Int8DynActInt8WeightLinear)
MODULE_FOR_CONFIG = {
    Int8WeightOnly: Int8WeightOnlyLinear,
    Int4WeightOnly: Int4WeightOnlyLinear,
    Int8DynamicActivationInt8Weight: Int8DynActInt8WeightLinear,
}


def model_weight_bytes(model: nn.Module, linear_only: bool = False) -> int:
    """Bytes held by ``model``'s parameters and buffers (shared tensors counted once).

    ``linear_only=True`` counts only ``nn.Linear`` and quantized-linear modules (weights, scales,
    zero points, biases): the part that quantization shrinks.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    mods = [m for m in model.modules() if isinstance(m, (nn.Linear, *QUANTIZED_LINEARS))] if linear_only else [model]
    seen, total = set(), 0
    for mod in mods:
        for t in list(mod.parameters()) + list(mod.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                total += t.numel() * t.element_size()
    return total
