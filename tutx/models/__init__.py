"""The tiny Shakespeare LM shipped with tutx, model loading, perplexity and KV-cache size.

``load_tiny()`` gives ``(model, tokenizer)`` offline in well under a second;
``load(name_or_path)`` also takes a local folder or a Hugging Face Hub name;
``heldout_perplexity(model, tokenizer)`` is the course's one perplexity protocol (the quality
score every chapter compares), ``perplexity(model, tokenizer, text)`` the general function;
``load_minilm()`` is a real pretrained BERT encoder (all-MiniLM-L6-v2), also offline.

Names load on first use (PEP 562), and ``transformers`` only when a loader runs, so
``import tutx.models`` costs little.
"""
from __future__ import annotations

import importlib

# Imported now, not on first use: the function ``perplexity`` shares its name with its module, and
# a later ``import tutx.models.perplexity`` must not replace the function by the module.
from tutx.models.perplexity import HELDOUT_CHARS, HELDOUT_WINDOW, heldout_perplexity, perplexity

_WHERE = {  # public name -> the submodule that defines it
    "load_minilm": "encoder", "sentence_embeddings": "encoder",
    "kv_cache_nbytes": "kv",
    "load": "loading",
    "load_tiny": "tiny", "load_tiny_tokenizer": "tiny", "tiny_config": "tiny", "heldout_text": "tiny",
    "TINY_DIR": "tiny", "SPECIAL_TOKEN": "tiny",
}

__all__ = ["load", "load_tiny", "load_tiny_tokenizer", "tiny_config", "heldout_text",
           "heldout_perplexity", "perplexity", "HELDOUT_CHARS", "HELDOUT_WINDOW",
           "kv_cache_nbytes", "TINY_DIR", "SPECIAL_TOKEN", "load_minilm", "sentence_embeddings"]


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
