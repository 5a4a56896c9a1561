"""A dense, preallocated KV cache that stores only the ``Hkv`` key/value heads.

Generation computes each token's keys and values once and keeps them: the prompt's in one
*prefill* step, then one more position per *decode* step. Per layer the cache holds
``keys`` and ``values`` as ``[B, Hkv, S_max, D]`` — the layout
:func:`tutx.kernels.decode.decode_attention` reads — plus ``lengths [B]`` (int32), the number of
valid positions. With grouped-query attention ``Hkv`` is smaller than the number of query heads,
and the cache is that much smaller: the heads are never expanded.

One step = every layer appends the same number of tokens, in order ``0 .. L-1``; the step is
committed (``lengths`` grows) when the last layer has appended. All sequences of the batch share
one length (equal-length prompts); Chapter 6's paged cache handles ragged batches.
"""
from __future__ import annotations

import torch

from tutx._validate import check_int, check_positive_int


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


class KVCache:
    """Keys and values of ``num_layers`` layers, preallocated for ``max_seq_len`` positions."""

    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device | None = None):
        for name, value in (("num_layers", num_layers), ("batch", batch), ("num_kv_heads", num_kv_heads),
                            ("max_seq_len", max_seq_len), ("head_dim", head_dim)):
            check_positive_int(name, value)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype: expected a floating-point torch.dtype, got {dtype!r}")
        self.num_layers, self.batch, self.num_kv_heads = num_layers, batch, num_kv_heads
        self.max_seq_len, self.head_dim, self.dtype = max_seq_len, head_dim, dtype
        shape = (batch, num_kv_heads, max_seq_len, head_dim)
        # one [B, Hkv, S_max, D] buffer per layer for keys, one for values
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.device = self.keys[0].device
        self.lengths = torch.zeros(batch, dtype=torch.int32, device=self.device)  # [B]
        self.seq_len = 0  # host copy of lengths (all equal): no GPU sync to check capacity
        self._next_layer = 0  # the layer whose append comes next in the current step
        self._step = 0  # tokens appended in the current step

    @classmethod
    def for_model(cls, config, batch: int, max_seq_len: int, dtype: torch.dtype = torch.float32,
                  device=None) -> "KVCache":
        """A cache shaped for a Hugging Face Llama-style ``config`` (layers, KV heads, head dim)."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        num_kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        return cls(config.num_hidden_layers, batch, num_kv_heads, max_seq_len, head_dim, dtype, device)

    @property
    def nbytes(self) -> int:
        """Bytes allocated for keys and values — all of ``S_max``, used or not.

        Equals :func:`tutx.scaling.kv_cache_bytes` ``2·L·Hkv·D·B·S_max·elem``: GQA divides it by
        ``num_heads / num_kv_heads`` compared with multi-head attention.
        """
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def reset(self) -> None:
        """Forget every cached position (the buffers are kept and reused)."""
        self.lengths.zero_()
        self.seq_len = self._next_layer = self._step = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write ``k``, ``v`` ``[B, Hkv, S, D]`` after the cached positions of ``layer``.

        ``S`` is the prompt (or chunk) length in prefill, 1 in decode. Returns
        ``(keys, values, lengths)``: the layer's whole ``[B, Hkv, S_max, D]`` buffers and the
        ``[B]`` valid lengths *including* the new tokens — what ``decode_attention`` takes.
        """
        s = self._check_append(layer, k, v)
        start = self.seq_len
        self.keys[layer][:, :, start:start + s] = k  # [B, Hkv, S, D] into [B, Hkv, S_max, D]
        self.values[layer][:, :, start:start + s] = v
        lengths = self.lengths + s  # [B]
        if layer == self.num_layers - 1:  # the last layer commits the step
            self.lengths.copy_(lengths)
            self.seq_len += s
            self._next_layer = self._step = 0
        else:
            self._next_layer, self._step = layer + 1, s
        return self.keys[layer], self.values[layer], lengths

    def _check_append(self, layer: int, k, v) -> int:
        check_int("layer", layer, minimum=0, maximum=self.num_layers - 1)
        if layer != self._next_layer:
            raise ValueError(f"layer: expected layer {self._next_layer} (layers append in order 0..L-1 "
                             f"each step; call reset() after an interrupted step), got {layer}")
        for name, x in (("k", k), ("v", v)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor [B, Hkv, S, D], got {type(x).__name__}")
            if x.ndim != 4:
                raise ValueError(f"{name}: expected 4 dimensions [B, Hkv, S, D], got shape {tuple(x.shape)}")
            b, h, s, d = x.shape
            if b != self.batch:
                raise ValueError(f"{name}: expected batch {self.batch} (the cache's), got {b}")
            if h != self.num_kv_heads:
                raise ValueError(f"{name}: expected {self.num_kv_heads} KV heads (the cache's), got {h}")
            if d != self.head_dim:
                raise ValueError(f"{name}: expected head_dim {self.head_dim} (the cache's), got {d}")
            if x.dtype != self.dtype:
                raise TypeError(f"{name}: expected dtype {self.dtype} (the cache's), got {x.dtype}")
            if x.device != self.device:
                raise ValueError(f"{name}: expected device {self.device} (the cache's), got {x.device}")
        if k.shape != v.shape:
            raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
        s = k.shape[2]
        if s < 1:
            raise ValueError(f"k: expected at least one new position, got shape {tuple(k.shape)}")
        if layer > 0 and s != self._step:
            raise ValueError(f"k: expected {self._step} new positions (as layer 0 appended this step), got {s}")
        if self.seq_len + s > self.max_seq_len:
            raise ValueError(f"k: appending {s} positions to {self.seq_len} cached ones exceeds "
                             f"max_seq_len={self.max_seq_len}; allocate a larger KVCache")
        return s

    def __repr__(self) -> str:
        return (f"KVCache(layers={self.num_layers}, batch={self.batch}, kv_heads={self.num_kv_heads}, "
                f"head_dim={self.head_dim}, layout=[B, Hkv, S_max, D], dtype={self.dtype}, "
                f"device={self.device}, used={self.seq_len}/{self.max_seq_len}, "
                f"nbytes={self.nbytes} ({_human_bytes(self.nbytes)}))")


__all__ = ["KVCache"]
