"""Measure a Hugging Face KV cache in bytes, whichever cache object this transformers version uses."""
from __future__ import annotations

import torch


def _cache_of(obj):
    """The cache inside a model output (``.cache`` in transformers 5, ``.past_key_values`` before)."""
    if hasattr(obj, "keys") and callable(obj.keys) and not hasattr(obj, "layers"):
        for name in ("cache", "past_key_values"):
            if name in obj.keys():
                return obj[name]
    return obj


def _tensors(cache):
    if isinstance(cache, torch.Tensor):
        yield cache
    elif hasattr(cache, "layers"):  # transformers >= 4.56: DynamicCache.layers[i].keys / .values
        for layer in cache.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    yield t
    elif hasattr(cache, "key_cache"):  # older DynamicCache
        yield from cache.key_cache
        yield from cache.value_cache
    elif isinstance(cache, (tuple, list)):  # the legacy tuple of (key, value) per layer
        for item in cache:
            yield from _tensors(item)
    else:
        raise TypeError(
            f"cache: expected a model output with a cache, a transformers Cache or a tuple of tensors, "
            f"got {type(cache).__name__}"
        )


def kv_cache_nbytes(cache_or_output) -> int:
    """Bytes held by the keys and values of a KV cache (or of the cache in a model's output)."""
    cache = _cache_of(cache_or_output)
    if cache is None:
        raise ValueError("cache_or_output: the model output holds no cache; call the model with use_cache=True")
    return sum(t.numel() * t.element_size() for t in _tensors(cache))
