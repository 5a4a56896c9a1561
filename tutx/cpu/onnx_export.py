"""Export the tiny LM (with its KV cache as inputs and outputs) and the MiniLM encoder to ONNX.

A decoder that runs token by token needs its KV cache outside the graph: each call takes the
keys and values of the tokens seen so far (``past_key_<i>``, ``past_value_<i>``, shape
``[batch, kv_heads, past, head_dim]``) and returns them extended by the new tokens
(``present_key_<i>``, ...). One graph serves both phases, because ``past`` may be 0: prefill is
a call with an empty cache and the whole prompt, decode a call with the cache and one token.
Batch, sequence and past lengths are dynamic axes. Positions are ``past + arange(seq)``, so
all rows of a batch have the same length (no padding).

Two exporters: ``"dynamo"`` (``torch.export`` then onnxscript; the default, the one PyTorch
develops) and ``"torchscript"`` (the older tracer; deprecated, but about 5x faster to export,
which matters in tests and notebook cells). Both give graphs whose outputs match PyTorch's.
"""
from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from pathlib import Path

import torch

from tutx._validate import check_choice
from tutx.cpu.runtime import require_onnx

EXPORTERS = ("dynamo", "torchscript")
"""The two ``torch.onnx.export`` paths: ``torch.export`` + onnxscript (default), or the older TorchScript tracer."""


class OnnxExportError(RuntimeError):
    """``torch.onnx.export`` failed for a model (an operator with no ONNX translation, data-dependent control flow, ...)."""


class CausalLMWithCache(torch.nn.Module):
    """Tensors in, tensors out: ``(input_ids, *past) -> (logits, *present)`` around a Hugging Face causal LM."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(self, input_ids, *past):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for i in range(self.num_layers):
            cache.update(past[2 * i], past[2 * i + 1], i)
        past_len = past[0].shape[2]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0) + past_len  # [1, S]
        out = self.model(input_ids=input_ids, cache=cache, position_ids=positions, use_cache=True)
        present = []
        for layer in out.cache.layers:
            present += [layer.keys, layer.values]  # [B, KV, P+S, D] each
        return (out.logits, *present)


class EncoderOutput(torch.nn.Module):
    """``(input_ids, attention_mask, token_type_ids) -> last_hidden_state`` around a BERT-style encoder."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state  # [B, S, H]


def cache_shape(config) -> tuple[int, int, int]:
    """``(layers, kv_heads, head_dim)`` of a Llama-style config."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def lm_input_names(num_layers: int) -> list[str]:
    return ["input_ids"] + [f"past_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]


def lm_output_names(num_layers: int) -> list[str]:
    return ["logits"] + [f"present_{kind}_{i}" for i in range(num_layers) for kind in ("key", "value")]


ENCODER_INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
"""Input names of an exported encoder, all ``[batch, seq]`` int64."""


def _model_name(model) -> str:
    config = getattr(model, "config", None)
    path = getattr(config, "_name_or_path", "") or ""
    return f"{type(model).__name__}" + (f" ({Path(path).name})" if path else "")


def _check_model(model, needs: tuple[str, ...]) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module (a Hugging Face model), got {type(model).__name__}")
    config = getattr(model, "config", None)
    missing = [n for n in needs if not hasattr(config, n)]
    if missing:
        raise TypeError(f"model: expected a Hugging Face model whose config has {needs}; "
                        f"{_model_name(model)} lacks {missing}")


def _reason(err: Exception) -> str:
    """The informative line of an exporter error (the dynamo exporter puts it under "Exception summary")."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(err).splitlines()]
    summary = [ln for ln in lines if ln.startswith("<class")]
    detail = summary[0] if summary else next((ln for ln in lines if ln), "")
    return f"{type(err).__name__}: {detail[:300]}"


def _export(module, args, path, *, exporter, input_names, output_names, dynamic_shapes, dynamic_axes, name):
    require_onnx()
    check_choice("exporter", exporter, EXPORTERS)
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path: expected a str or Path for the .onnx file, got {type(path).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    quiet = logging.getLogger("torch.onnx")  # "torchvision is not installed" notes, progress lines
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if exporter == "dynamo":
                torch.onnx.export(module, args, str(path), dynamo=True, dynamic_shapes=dynamic_shapes,
                                  input_names=input_names, output_names=output_names, optimize=True,
                                  external_data=False, verbose=False)
            else:
                torch.onnx.export(module, args, str(path), dynamo=False, input_names=input_names,
                                  output_names=output_names, dynamic_axes=dynamic_axes, opset_version=17)
    except Exception as err:  # noqa: BLE001 -- any failure of the exporter becomes one clear error
        raise OnnxExportError(
            f"could not export {name} to ONNX with the {exporter!r} exporter: {_reason(err)} "
            f"(an operator without an ONNX translation is the usual cause; the other exporter may handle it)"
        ) from err
    finally:
        quiet.setLevel(level)
    return path


def export_causal_lm(model, path: str | Path, *, exporter: str = "dynamo") -> Path:
    """Write a Llama-style Hugging Face causal LM (e.g. ``load_tiny()[0]``) with its KV cache to ``path``.

    Inputs ``input_ids [batch, seq]`` and ``past_key_<i>``/``past_value_<i>``
    ``[batch, kv_heads, past, head_dim]`` (``past`` may be 0); outputs ``logits [batch, seq, vocab]``
    and ``present_key_<i>``/``present_value_<i>`` ``[batch, kv_heads, past + seq, head_dim]``.
    Raises :class:`OnnxExportError` naming the model when the exporter fails.
    """
    _check_model(model, ("num_hidden_layers", "num_attention_heads", "hidden_size"))
    layers, kv_heads, head_dim = cache_shape(model.config)
    wrapper = CausalLMWithCache(model).eval()
    param = next(model.parameters())
    batch, seq, past = 2, 3, 4  # not 0 or 1: torch.export would specialise those sizes
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), device=param.device)
    cache = [torch.zeros(batch, kv_heads, past, head_dim, dtype=param.dtype, device=param.device)
             for _ in range(2 * layers)]
    ins, outs = lm_input_names(layers), lm_output_names(layers)
    b, s, p = torch.export.Dim("batch"), torch.export.Dim("seq"), torch.export.Dim("past")
    dynamic_shapes = {"input_ids": {0: b, 1: s}, "past": tuple({0: b, 2: p} for _ in range(2 * layers))}
    dynamic_axes = {"input_ids": {0: "batch", 1: "seq"}, "logits": {0: "batch", 1: "seq"},
                    **{n: {0: "batch", 2: "past"} for n in ins[1:]},
                    **{n: {0: "batch", 2: "total"} for n in outs[1:]}}
    return _export(wrapper, (ids, *cache), path, exporter=exporter, input_names=ins, output_names=outs,
                   dynamic_shapes=dynamic_shapes, dynamic_axes=dynamic_axes, name=_model_name(model))


def export_encoder(model, path: str | Path, *, exporter: str = "dynamo") -> Path:
    """Write a BERT-style encoder (e.g. ``load_minilm()[0]``) to ``path``: ``last_hidden_state [batch, seq, hidden]``
    from ``input_ids``, ``attention_mask``, ``token_type_ids`` ``[batch, seq]`` (both axes dynamic)."""
    _check_model(model, ("hidden_size", "max_position_embeddings"))
    wrapper = EncoderOutput(model).eval()
    device = next(model.parameters()).device
    ids = torch.randint(0, model.config.vocab_size, (2, 8), device=device)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    args = (ids, mask, torch.zeros_like(ids))
    b = torch.export.Dim("batch")
    s = torch.export.Dim("seq", max=model.config.max_position_embeddings)
    dynamic_shapes = {n: {0: b, 1: s} for n in ENCODER_INPUTS}
    dynamic_axes = {n: {0: "batch", 1: "seq"} for n in ENCODER_INPUTS + ["last_hidden_state"]}
    return _export(wrapper, args, path, exporter=exporter, input_names=ENCODER_INPUTS,
                   output_names=["last_hidden_state"], dynamic_shapes=dynamic_shapes,
                   dynamic_axes=dynamic_axes, name=_model_name(model))


__all__ = ["EXPORTERS", "OnnxExportError", "CausalLMWithCache", "EncoderOutput", "cache_shape",
           "lm_input_names", "lm_output_names", "ENCODER_INPUTS", "export_causal_lm", "export_encoder"]
