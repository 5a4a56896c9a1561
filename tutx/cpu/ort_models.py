"""Run the exported models in ONNX Runtime: a causal LM that decodes token by token, and an encoder.

``OrtCausalLM`` keeps the KV cache as NumPy arrays between calls: prefill feeds an empty cache
(``past`` = 0) and the prompt, each decode step feeds the cache and the last token, and the
graph returns the extended cache. ``generate`` is greedy (argmax), so its tokens can be
compared one for one with PyTorch's greedy decoding.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from tutx._validate import check_int, check_positive_int
from tutx.cpu.onnx_export import ENCODER_INPUTS
from tutx.cpu.runtime import make_session


def _ids(name: str, ids) -> np.ndarray:
    """Token ids ``[batch, seq]`` as int64 NumPy (from a tensor, an array or nested lists)."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[1] == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name}: expected integer token ids of shape [batch, seq] with seq >= 1, "
                         f"got dtype {ids.dtype} shape {tuple(ids.shape)}")
    return ids.astype(np.int64)


def _session(path_or_session, threads, optimization):
    if isinstance(path_or_session, (str, Path)):
        return make_session(path_or_session, threads=threads, optimization=optimization)
    if hasattr(path_or_session, "run") and hasattr(path_or_session, "get_inputs"):
        return path_or_session
    raise TypeError(f"model: expected a path to an .onnx file or an onnxruntime.InferenceSession, "
                    f"got {type(path_or_session).__name__}")


class OrtCausalLM:
    """A causal LM exported by :func:`~tutx.cpu.export_causal_lm`, run by ONNX Runtime on the CPU."""

    def __init__(self, model, *, threads: int | None = None, optimization: str = "all"):
        self.session = _session(model, threads, optimization)
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.input_names[:1] != ["input_ids"] or not all(n.startswith("past_") for n in self.input_names[1:]):
            raise ValueError(f"model: expected a causal LM exported with its KV cache (inputs input_ids, "
                             f"past_key_0, ...), got inputs {self.input_names}")
        self.num_layers = (len(inputs) - 1) // 2
        _, self.kv_heads, _, self.head_dim = inputs[1].shape
        self.vocab_size = self.session.get_outputs()[0].shape[-1]

    def empty_cache(self, batch: int) -> list[np.ndarray]:
        """A cache with no tokens: ``2 * layers`` arrays ``[batch, kv_heads, 0, head_dim]``."""
        return [np.zeros((batch, self.kv_heads, 0, self.head_dim), np.float32) for _ in range(2 * self.num_layers)]

    def forward(self, input_ids, past: list[np.ndarray] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(logits [batch, seq, vocab], present cache)`` for ``input_ids`` after the tokens in ``past``."""
        ids = _ids("input_ids", input_ids)
        past = self.empty_cache(ids.shape[0]) if past is None else past
        if len(past) != 2 * self.num_layers:
            raise ValueError(f"past: expected {2 * self.num_layers} arrays (key and value per layer), got {len(past)}")
        outputs = self.session.run(None, {"input_ids": ids, **dict(zip(self.input_names[1:], past))})
        return outputs[0], outputs[1:]

    def generate(self, input_ids, max_new_tokens: int) -> torch.Tensor:
        """Greedy decoding: ``input_ids`` followed by ``max_new_tokens`` argmax tokens, ``[batch, seq + new]``.

        One prefill call, then one call per new token with the cache; no stopping at end-of-text,
        so every row gets exactly ``max_new_tokens``.
        """
        ids = _ids("input_ids", input_ids)
        check_positive_int("max_new_tokens", max_new_tokens)
        logits, past = self.forward(ids)
        out = [ids]
        for step in range(max_new_tokens):
            token = logits[:, -1].argmax(-1).astype(np.int64)[:, None]  # [B, 1]
            out.append(token)
            if step + 1 < max_new_tokens:
                logits, past = self.forward(token, past)
        return torch.from_numpy(np.concatenate(out, axis=1))


class OrtEncoder:
    """A BERT-style encoder exported by :func:`~tutx.cpu.export_encoder`, run by ONNX Runtime."""

    def __init__(self, model, *, threads: int | None = None, optimization: str = "all"):
        self.session = _session(model, threads, optimization)
        names = [i.name for i in self.session.get_inputs()]
        if sorted(names) != sorted(ENCODER_INPUTS):
            raise ValueError(f"model: expected an encoder with inputs {ENCODER_INPUTS}, got {names}")

    def __call__(self, input_ids, attention_mask, token_type_ids=None) -> np.ndarray:
        """``last_hidden_state [batch, seq, hidden]``."""
        ids = _ids("input_ids", input_ids)
        mask = _ids("attention_mask", attention_mask)
        types = np.zeros_like(ids) if token_type_ids is None else _ids("token_type_ids", token_type_ids)
        if mask.shape != ids.shape or types.shape != ids.shape:
            raise ValueError(f"attention_mask, token_type_ids: expected the shape of input_ids {ids.shape}, "
                             f"got {mask.shape} and {types.shape}")
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask, "token_type_ids": types})[0]

    def embed(self, tokenizer, sentences: list[str], max_length: int = 256) -> torch.Tensor:
        """Mean-pooled, L2-normalised sentence embeddings ``[N, hidden]``, as ``tutx.models.sentence_embeddings``."""
        check_int("max_length", max_length, minimum=1)
        if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)) \
                or not sentences or not all(isinstance(s, str) for s in sentences):
            raise TypeError(f"sentences: expected a non-empty list of strings, got {sentences!r:.80}")
        batch = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="np")
        hidden = torch.from_numpy(self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")))
        mask = torch.from_numpy(batch["attention_mask"]).unsqueeze(-1).float()  # [N, T, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.nn.functional.normalize(pooled, dim=-1)


__all__ = ["OrtCausalLM", "OrtEncoder"]
