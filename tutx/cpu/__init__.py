"""CPU inference through ONNX Runtime (Chapter 5): export, run, quantize, check, measure.

``export_causal_lm`` writes the tiny LM with its KV cache as graph inputs and outputs (one graph
for prefill and decode), ``export_encoder`` the MiniLM encoder; ``OrtCausalLM`` / ``OrtEncoder``
run them with ORT's graph optimisations and one intra-op thread per physical core;
``quantize_onnx_int8`` applies ORT dynamic INT8; ``compare_*`` check the outputs against
PyTorch; ``measure_cpu_inference`` times everything against PyTorch eager, ``torch.compile``
and PyTorch dynamic INT8. Needs the ``cpu`` extra: ``pip install "tutx[cpu]"``; onnxruntime is
imported only when a session or a quantization is made, so ``import tutx.cpu`` works without it.
"""
from tutx.cpu.compare import (HIDDEN_ATOL, INT8_MIN_COSINE, LOGITS_ATOL, compare_causal_lm, compare_encoder,
                              cosine_similarity, max_abs_diff, torch_greedy)
from tutx.cpu.measure import BACKENDS, LABELS, export_models, measure_cpu_inference, measure_minilm, measure_tiny_lm
from tutx.cpu.onnx_export import (EXPORTERS, CausalLMWithCache, EncoderOutput, OnnxExportError, export_causal_lm,
                                  export_encoder)
from tutx.cpu.ort_models import OrtCausalLM, OrtEncoder
from tutx.cpu.quantize import quantize_onnx_int8, torch_dynamic_int8
from tutx.cpu.runtime import INSTALL_HINT, make_session, physical_cores, require_onnxruntime, session_options

__all__ = [
    "export_causal_lm", "export_encoder", "EXPORTERS", "OnnxExportError", "CausalLMWithCache", "EncoderOutput",
    "make_session", "session_options", "physical_cores", "require_onnxruntime", "INSTALL_HINT",
    "OrtCausalLM", "OrtEncoder",
    "quantize_onnx_int8", "torch_dynamic_int8",
    "max_abs_diff", "cosine_similarity", "torch_greedy", "compare_causal_lm", "compare_encoder",
    "LOGITS_ATOL", "HIDDEN_ATOL", "INT8_MIN_COSINE",
    "export_models", "measure_cpu_inference", "measure_tiny_lm", "measure_minilm", "BACKENDS", "LABELS",
]
