"""Chapter 3, quantization: ``quantize_`` with its configs, GPTQ, QAT and mixed precision::

    from tutx.quant import quantize_, gptq_quantize_, Int4WeightOnly
    quantize_(model, Int4WeightOnly(group_size=128))   # every nn.Linear but the LM head, in place
    quantize_(model, {"model.layers.0.mlp.down_proj": Int8WeightOnly()})   # or: one config per layer
    gptq_quantize_(model, calibration_batches, Int4WeightOnly(128))   # or: GPTQ instead of rounding

``__all__`` is the user API. The building blocks live in the submodules: ``primitives``
(quantize/dequantize arithmetic), ``observers``, ``configs``, ``modules`` (the quantized
``nn.Linear`` replacements), ``api``, ``gptq``, ``qat_configs``/``fake_quant``/``fake_quant_linear``/
``qat``, ``sensitivity`` and ``mixed_precision``. The Triton kernels behind the modules live in
``tutx.kernels.quant_matmul`` and ``tutx.kernels.quant_matmul_int4``; without Triton (or a GPU)
the modules run a PyTorch reference.
"""
from tutx.quant.api import load_quantized, quantize_, save_quantized
from tutx.quant.configs import Int4WeightOnly, Int8DynamicActivationInt8Weight, Int8WeightOnly
from tutx.quant.fake_quant import fake_quantize_ste
from tutx.quant.fake_quant_linear import FakeQuantLinear
from tutx.quant.gptq import gptq_quantize_
from tutx.quant.mixed_precision import apply_mixed_precision_, assign_bits, frontier, layer_bytes
from tutx.quant.modules import (
    Int4WeightOnlyLinear,
    Int8DynActInt8WeightLinear,
    Int8WeightOnlyLinear,
    model_weight_bytes,
    quantize_per_token,
)
from tutx.quant.observers import MinMaxObserver, MSEObserver, PercentileObserver
from tutx.quant.primitives import QTensor, dequantize, fake_quantize, pack_int4, quantize, unpack_int4
from tutx.quant.qat import convert_qat_, finetune_qat, prepare_qat_, unprepare_qat_
from tutx.quant.qat_configs import Int4WeightOnlyQAT, Int8WeightOnlyQAT
from tutx.quant.sensitivity import Sensitivity, layer_sensitivity

__all__ = [
    # post-training quantization
    "quantize_", "Int8WeightOnly", "Int4WeightOnly", "Int8DynamicActivationInt8Weight",
    "save_quantized", "load_quantized", "model_weight_bytes",
    "Int8WeightOnlyLinear", "Int4WeightOnlyLinear", "Int8DynActInt8WeightLinear",
    # GPTQ
    "gptq_quantize_",
    # quantization-aware training
    "Int8WeightOnlyQAT", "Int4WeightOnlyQAT", "prepare_qat_", "finetune_qat", "convert_qat_", "unprepare_qat_",
    "FakeQuantLinear", "fake_quantize_ste",
    # mixed precision
    "layer_sensitivity", "Sensitivity", "layer_bytes", "assign_bits", "apply_mixed_precision_", "frontier",
    # primitives and observers
    "QTensor", "quantize", "dequantize", "fake_quantize", "pack_int4", "unpack_int4", "quantize_per_token",
    "MinMaxObserver", "PercentileObserver", "MSEObserver",
]
