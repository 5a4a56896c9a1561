"""Check ONNX Runtime outputs against PyTorch: logits, greedy tokens, encoder embeddings.

Tolerances (fp32): ORT fuses operators and changes the order of sums, so its fp32 logits differ
from PyTorch's by rounding only; ``LOGITS_ATOL`` (1e-3, on logits of size ~10) and
``HIDDEN_ATOL`` (1e-3) leave a 30x margin over the ~3e-5 we observe. INT8 outputs are compared
by cosine similarity (``INT8_MIN_COSINE``), since quantization error is not a rounding error.
"""
from __future__ import annotations

import numpy as np
import torch

from tutx._validate import check_positive_int
from tutx.cpu.onnx_export import CausalLMWithCache, cache_shape

LOGITS_ATOL = 1e-3
"""Largest absolute difference accepted between ORT fp32 and PyTorch fp32 logits of the tiny LM."""
HIDDEN_ATOL = 1e-3
"""Largest absolute difference accepted between ORT fp32 and PyTorch fp32 MiniLM hidden states (real tokens only)."""
INT8_MIN_COSINE = 0.97
"""Smallest cosine similarity accepted between INT8 and fp32 sentence embeddings."""


def _tensor(x) -> torch.Tensor:
    return x.detach().cpu().float() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x, np.float32))


def max_abs_diff(a, b) -> float:
    """``max |a - b|`` over all elements (tensors or arrays of the same shape)."""
    a, b = _tensor(a), _tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"a, b: expected the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a - b).abs().max())


def cosine_similarity(a, b) -> torch.Tensor:
    """Row-wise cosine similarity ``[N]`` of ``[N, ...]`` tensors or arrays (flattened after dim 0)."""
    a, b = _tensor(a), _tensor(b)
    if a.shape != b.shape:
        raise ValueError(f"a, b: expected the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.nn.functional.cosine_similarity(a.reshape(len(a), -1), b.reshape(len(b), -1), dim=-1)


@torch.no_grad()
def torch_greedy(model, input_ids: torch.Tensor, max_new_tokens: int, step=None) -> torch.Tensor:
    """PyTorch's greedy decoding with a KV cache, by the same loop as ``OrtCausalLM.generate``.

    ``step`` (default ``CausalLMWithCache(model)``) maps ``(ids, *past) -> (logits, *present)``;
    pass a ``torch.compile``-d one to time compiled decoding. No stop at end-of-text.
    """
    check_positive_int("max_new_tokens", max_new_tokens)
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2:
        raise ValueError(f"input_ids: expected a [batch, seq] tensor, got {type(input_ids).__name__}")
    step = CausalLMWithCache(model) if step is None else step
    layers, kv_heads, head_dim = cache_shape(model.config)
    past = [torch.zeros(input_ids.shape[0], kv_heads, 0, head_dim) for _ in range(2 * layers)]
    logits, *past = step(input_ids, *past)
    out = [input_ids]
    for i in range(max_new_tokens):
        token = logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
        out.append(token)
        if i + 1 < max_new_tokens:
            logits, *past = step(token, *past)
    return torch.cat(out, dim=1)


@torch.no_grad()
def compare_causal_lm(model, ort_lm, input_ids: torch.Tensor, max_new_tokens: int = 16) -> dict:
    """ORT against PyTorch on one prompt batch: prefill logits, one decode step through the cache,
    and greedy tokens. Returns ``{"prefill_max_abs", "decode_max_abs", "tokens_equal", "tokens_agree"}``."""
    wrapper = CausalLMWithCache(model).eval()
    layers, kv_heads, head_dim = cache_shape(model.config)
    empty = [torch.zeros(input_ids.shape[0], kv_heads, 0, head_dim) for _ in range(2 * layers)]
    ref_logits, *ref_past = wrapper(input_ids, *empty)
    ort_logits, ort_past = ort_lm.forward(input_ids)
    nxt = ref_logits[:, -1:].argmax(-1)  # [B, 1]: both sides decode the same token
    ref_step = wrapper(nxt, *ref_past)[0]
    ort_step = ort_lm.forward(nxt, ort_past)[0]
    ref_tokens = torch_greedy(model, input_ids, max_new_tokens)
    ort_tokens = ort_lm.generate(input_ids, max_new_tokens)
    return {
        "prefill_max_abs": max_abs_diff(ort_logits, ref_logits),
        "decode_max_abs": max_abs_diff(ort_step, ref_step),
        "tokens_equal": bool(torch.equal(ort_tokens, ref_tokens)),
        "tokens_agree": float((ort_tokens == ref_tokens)[:, input_ids.shape[1]:].float().mean()),
    }


@torch.no_grad()
def compare_encoder(model, ort_encoder, tokenizer, sentences: list[str]) -> dict:
    """ORT against PyTorch on ``sentences``: ``{"hidden_max_abs"`` (real tokens only), ``"min_cosine"``
    (sentence embeddings)``}``."""
    from tutx.models import sentence_embeddings

    batch = tokenizer(list(sentences), padding=True, truncation=True, max_length=256, return_tensors="pt")
    ref = model(**batch).last_hidden_state  # [N, T, H]
    got = torch.from_numpy(ort_encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
    real = batch["attention_mask"].bool()
    return {
        "hidden_max_abs": max_abs_diff(got[real], ref[real]),
        "min_cosine": float(cosine_similarity(ort_encoder.embed(tokenizer, sentences),
                                              sentence_embeddings(model, tokenizer, list(sentences))).min()),
    }


__all__ = ["LOGITS_ATOL", "HIDDEN_ATOL", "INT8_MIN_COSINE", "max_abs_diff", "cosine_similarity",
           "torch_greedy", "compare_causal_lm", "compare_encoder"]
