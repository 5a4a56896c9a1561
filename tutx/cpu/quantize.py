"""Dynamic INT8 quantization on the CPU: ONNX Runtime's and PyTorch's.

*Dynamic* means the weights are stored as int8 ahead of time while each activation is
quantized on the fly, with a scale computed from its own range at run time: no calibration
data, and the integer matrix products (``MatMulInteger`` in ORT, FBGEMM/oneDNN in PyTorch) use
the CPU's int8 dot-product instructions (AVX-512 VNNI, AMX). This is what ONNX Runtime's BERT
notebook applies to get its 1.73x over PyTorch fp32.

PyTorch's eager ``torch.ao.quantization.quantize_dynamic`` is deprecated in torch 2.x (the
warning points to torchao's ``quantize_``) but still works in torch 2.13; it is the baseline
ORT's notebooks compare with, so we keep it and silence the warning.
"""
from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import torch

from tutx._validate import check_bool
from tutx.cpu.runtime import require_onnx, require_onnxruntime


def quantize_onnx_int8(src: str | Path, dst: str | Path, *, per_channel: bool = True,
                       reduce_range: bool = False) -> Path:
    """Write an INT8 copy of the ONNX model ``src`` to ``dst`` (weights int8, activations quantized at run time).

    ``per_channel``: one scale per output column instead of one per tensor (the default: on MiniLM,
    per-tensor scales drop the embeddings' cosine to fp32 to ~0.93, per-channel keeps it ~0.98-0.99);
    ``reduce_range``: 7-bit weights, for CPUs without VNNI whose int8 products can overflow.
    """
    require_onnx()
    require_onnxruntime()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name, value in (("src", src), ("dst", dst)):
        if not isinstance(value, (str, Path)):
            raise TypeError(f"{name}: expected a str or Path, got {type(value).__name__}")
    if not Path(src).is_file():
        raise FileNotFoundError(f"src: no ONNX model at {src}")
    check_bool("per_channel", per_channel)
    check_bool("reduce_range", reduce_range)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    root, handlers, level = logging.getLogger(), list(logging.getLogger().handlers), logging.getLogger().level
    root.setLevel(logging.ERROR)  # the quantizer logs "consider pre-processing" on the root logger
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel,
                             reduce_range=reduce_range)
    finally:  # and logging.warning() installs a root handler as a side effect: take it away again
        root.handlers[:] = handlers
        root.setLevel(level)
    return Path(dst)


def torch_dynamic_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers are PyTorch dynamic-INT8 (``quantize_dynamic``, qint8).

    Per-channel weight scales, as :func:`quantize_onnx_int8` uses by default. The input model is left
    untouched (fp32).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("model: PyTorch dynamic INT8 runs on the CPU; move the model with .cpu() first")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        spec = {torch.nn.Linear: per_channel_dynamic_qconfig}
        return quantize_dynamic(copy.deepcopy(model), spec, dtype=torch.qint8).eval()


__all__ = ["quantize_onnx_int8", "torch_dynamic_int8"]
