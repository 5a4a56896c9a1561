"""Triton kernels. Each module holds a triple: ``<op>_kernel`` (``@triton.jit``), ``<op>(...)`` —
the wrapper users call, which checks its inputs and launches the kernel on CUDA tensors (or on
CPU tensors through Triton's interpreter when ``TRITON_INTERPRET=1``) and otherwise runs the
reference — and ``<op>_ref(...)``, the same operation in plain PyTorch. Without Triton installed
every wrapper runs its reference (see ``_triton.py``).

The names below are the public wrappers and references (no module is named like a function in
it, so importing a module never hides a function of this package); ``from tutx.kernels import
flash_attention`` imports only the module that holds it (the modules load on first use).
"""
from __future__ import annotations

import importlib

_HOME = {  # public name -> module of tutx.kernels that defines it
    "flash_attention": "attention", "flash_attention_ref": "attention",
    "sliding_window_attention": "sliding_window", "sliding_window_attention_ref": "sliding_window",
    "causal_mask": "masks", "sliding_window_mask": "masks",
    "decode_attention": "decode", "decode_attention_ref": "decode",
    "paged_decode_attention": "paged_decode", "paged_decode_attention_ref": "paged_decode",
    "int8_weight_only_matmul": "quant_matmul", "int8_weight_only_matmul_ref": "quant_matmul",
    "int8_matmul_rescale": "quant_matmul", "int8_matmul_rescale_ref": "quant_matmul",
    "int4_weight_only_matmul": "quant_matmul_int4", "int4_weight_only_matmul_ref": "quant_matmul_int4",
    # Chapter 5: Triton from first principles
    "softmax": "fused_softmax", "softmax_ref": "fused_softmax",
    "rms_norm": "norms", "rms_norm_ref": "norms", "layer_norm": "norms", "layer_norm_ref": "norms",
    "swiglu": "fused_swiglu", "swiglu_ref": "fused_swiglu",
    "matmul": "tiled_matmul", "matmul_ref": "tiled_matmul",
    "naive_fused_attention": "seed_attention", "naive_fused_attention_ref": "seed_attention",
    "KernelCost": "costs", "softmax_cost": "costs", "rms_norm_cost": "costs", "layer_norm_cost": "costs",
    "swiglu_cost": "costs", "matmul_cost": "costs",
}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'tutx.kernels' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tutx.kernels.{_HOME[name]}"), name)


def __dir__():
    return sorted(set(globals()) | set(__all__))
