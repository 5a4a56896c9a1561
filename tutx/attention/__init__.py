"""Attention modules for Chapter 4: grouped-query attention (GQA/MQA) with a KV cache.

Run a Hugging Face Llama on tutx's attention kernels and a dense cache that keeps only the
key/value heads::

    from tutx.models import load_tiny
    from tutx.attention import TutxLlama, KVCache

    hf, tok = load_tiny()
    model = TutxLlama.from_hf(hf)  # shares HF's weights; only attention is replaced
    ids = tok("ROMEO:", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=40, eos_token_id=tok.eos_token_id)  # greedy
    print(tok.decode(out[0]))

    cache = model.new_cache(batch=1, max_seq_len=256)  # [B, Hkv, S_max, D] per layer
    logits = model(ids, cache)  # prefill; then model(next_ids, cache) decodes
    print(cache)  # shape, dtype, bytes, positions used

``GQAAttention`` is the layer on its own; ``pool_kv_heads`` / ``TutxLlama.convert_kv_heads_``
turn GQA into MQA (mean-pooled KV heads, as in the GQA paper) or MHA (repeated heads).
"""
from tutx.attention.gqa import GQAAttention, convert_kv_heads_, pool_kv_heads
from tutx.attention.kv_cache import KVCache
from tutx.attention.llama import LlamaBlock, TutxLlama
from tutx.attention.rope import RotaryEmbedding, apply_rope

__all__ = ["KVCache", "GQAAttention", "TutxLlama", "LlamaBlock", "RotaryEmbedding", "apply_rope",
           "pool_kv_heads", "convert_kv_heads_"]
