"""Chapter 3, quantization: primitives, observers, ``quantize_`` with its configs, and quantized modules::

    from tutx.quant import quantize_, gptq_quantize_, Int4WeightOnly
    quantize_(model, Int4WeightOnly(group_size=128))   # every nn.Linear but the LM head, in place
    gptq_quantize_(model, calibration_batches, Int4WeightOnly(128))   # or: GPTQ instead of rounding

The Triton kernels behind the modules live in ``tutx.kernels.quant_matmul`` and
``tutx.kernels.quant_matmul_int4``.
"""
from tutx.quant.api import (
    apply_plan_,
    default_filter,
    load_quantized,
    quantization_plan,
    quantize_,
    save_quantized,
    select_linears,
)
from tutx.quant.configs import Int4WeightOnly, Int8DynamicActivationInt8Weight, Int8WeightOnly
from tutx.quant.gptq import HessianAccumulator, gptq_quantize_, gptq_quantize_weight
from tutx.quant.mixed import (
    Sensitivity,
    apply_mixed_precision_,
    assign_bits,
    frontier,
    layer_bytes,
    layer_sensitivity,
    output_kl_fn,
    plan_bytes,
    upgrade_path,
)
from tutx.quant.modules import (
    Int4WeightOnlyLinear,
    Int8DynActInt8WeightLinear,
    Int8WeightOnlyLinear,
    model_weight_bytes,
    quantize_per_token,
)
from tutx.quant.observers import MinMaxObserver, MSEObserver, Observer, PercentileObserver
from tutx.quant.qat import (
    FakeQuantLinear,
    Int4WeightOnlyQAT,
    Int8WeightOnlyQAT,
    convert_qat_,
    fake_quantize_ste,
    finetune_qat,
    prepare_qat_,
    qat_config,
    random_windows,
    unprepare_qat_,
)
from tutx.quant.primitives import (
    QTensor,
    choose_qparams,
    dequantize,
    fake_quantize,
    pack_int4,
    qrange,
    quantize,
    unpack_int4,
)

__all__ = [
    "quantize_", "default_filter", "select_linears", "save_quantized", "load_quantized", "quantization_plan",
    "apply_plan_", "gptq_quantize_", "gptq_quantize_weight", "HessianAccumulator",
    "Int8WeightOnly", "Int4WeightOnly", "Int8DynamicActivationInt8Weight",
    "Int8WeightOnlyLinear", "Int4WeightOnlyLinear", "Int8DynActInt8WeightLinear", "model_weight_bytes",
    "quantize_per_token",
    "Observer", "MinMaxObserver", "PercentileObserver", "MSEObserver",
    "QTensor", "quantize", "dequantize", "fake_quantize", "choose_qparams", "qrange", "pack_int4", "unpack_int4",
    "Int8WeightOnlyQAT", "Int4WeightOnlyQAT", "qat_config", "FakeQuantLinear", "fake_quantize_ste", "prepare_qat_",
    "convert_qat_", "unprepare_qat_", "finetune_qat", "random_windows",
    "layer_sensitivity", "Sensitivity", "output_kl_fn", "layer_bytes", "upgrade_path", "assign_bits", "plan_bytes",
    "apply_mixed_precision_", "frontier",
]
