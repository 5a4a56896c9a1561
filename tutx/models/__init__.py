"""The tiny Shakespeare LM shipped with tutx, model loading, perplexity and KV-cache size.

``load_tiny()`` gives ``(model, tokenizer)`` offline in well under a second;
``load(name_or_path)`` also takes a local folder or a Hugging Face Hub name;
``perplexity(model, tokenizer, heldout_text())`` is the quality score the chapters track;
``load_minilm()`` is a real pretrained BERT encoder (all-MiniLM-L6-v2), also offline.
"""
from tutx.models.encoder import load_minilm, sentence_embeddings
from tutx.models.kv import kv_cache_nbytes
from tutx.models.loading import load
from tutx.models.perplexity import HELDOUT_CHARS, HELDOUT_WINDOW, heldout_perplexity, perplexity
from tutx.models.tiny import (SPECIAL_TOKEN, TINY_DIR, heldout_text, load_tiny, load_tiny_tokenizer,
                              tiny_config)

__all__ = ["load", "load_tiny", "load_tiny_tokenizer", "tiny_config", "heldout_text", "perplexity", "heldout_perplexity", "HELDOUT_CHARS", "HELDOUT_WINDOW",
           "kv_cache_nbytes", "TINY_DIR", "SPECIAL_TOKEN", "load_minilm", "sentence_embeddings"]
