"""Grouped-query attention (GQA) with RoPE and a KV cache, on tutx's attention kernels.

``num_heads`` query heads share ``num_kv_heads`` key/value heads in groups of
``num_heads // num_kv_heads``: multi-head attention (MHA) when the two are equal, multi-query
attention (MQA) when there is one KV head. Only the KV heads are projected, cached and read — the
kernels map query head ``h`` to KV head ``h // group`` instead of copying K and V.

- prefill (several new tokens): :func:`tutx.kernels.attention.flash_attention`, causal, aligned to
  the end of the keys, so a chunk appended after cached tokens (chunked prefill) is exact;
- decode (one new token): :func:`tutx.kernels.decode.decode_attention` over the cache.

Both launch Triton where the kernels run (CUDA fp16, or bf16 on sm_80+; the interpreter in the
tests). Elsewhere prefill runs PyTorch's SDPA (``backend="auto"``) and decode its PyTorch
reference: on a CPU, and for fp32 on CUDA, which the kernels refuse.
"""
from __future__ import annotations

import torch
from torch import nn

from tutx._validate import check_int, check_positive_int
from tutx.attention.kv_cache import KVCache
from tutx.attention.rope import RotaryEmbedding, apply_rope
from tutx.kernels._attention_common import kernel_takes
from tutx.kernels.attention import flash_attention
from tutx.kernels.decode import decode_attention, decode_attention_ref


class GQAAttention(nn.Module):
    """Causal self-attention with ``num_heads`` query heads and ``num_kv_heads`` KV heads."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int | None = None,
                 rope_theta: float = 10000.0, bias: bool = False, layer_idx: int = 0):
        super().__init__()
        for name, value in (("hidden_size", hidden_size), ("num_heads", num_heads),
                            ("num_kv_heads", num_kv_heads)):
            check_positive_int(name, value)
        if num_heads % num_kv_heads:
            raise ValueError(f"num_kv_heads: expected a divisor of num_heads={num_heads} "
                             f"(each KV head serves a group of query heads), got {num_kv_heads}")
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(f"head_dim: None needs hidden_size={hidden_size} divisible by "
                                 f"num_heads={num_heads}; pass head_dim")
            head_dim = hidden_size // num_heads
        check_positive_int("head_dim", head_dim)
        check_int("layer_idx", layer_idx, minimum=0)
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.head_dim, self.layer_idx = head_dim, layer_idx
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=bias)
        self.rotary = RotaryEmbedding(head_dim, rope_theta)

    @classmethod
    def from_hf(cls, hf_attn: nn.Module, config, layer_idx: int | None = None) -> "GQAAttention":
        """Wrap a Hugging Face ``LlamaAttention``: its q/k/v/o ``nn.Linear`` modules are shared, not copied."""
        rope = getattr(config, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
        attn = cls(config.hidden_size, config.num_attention_heads,
                   getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                   head_dim=getattr(config, "head_dim", None), rope_theta=theta,
                   layer_idx=getattr(hf_attn, "layer_idx", 0) if layer_idx is None else layer_idx)
        attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj = (
            hf_attn.q_proj, hf_attn.k_proj, hf_attn.v_proj, hf_attn.o_proj)
        return attn

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, position_embeddings=None) -> torch.Tensor:
        """``x [B, S, hidden]`` -> ``[B, S, hidden]``.

        With a ``cache``, the new keys/values are appended to layer ``layer_idx`` and the queries
        attend to everything cached; the new tokens sit at positions ``cache.seq_len ..``.
        ``position_embeddings`` is an optional ``(cos, sin)`` pair ``[B or 1, S, D]`` (a model
        computes it once for all layers); by default this module's own RoPE is used.
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 3 or x.shape[-1] != self.hidden_size:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected a tensor [B, S, {self.hidden_size}], got {got}")
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.num_heads, self.head_dim).transpose(1, 2)  # [B, Hq, S, D]
        k = self.k_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
        v = self.v_proj(x).view(b, s, self.num_kv_heads, self.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
        start = 0 if cache is None else cache.seq_len
        if position_embeddings is None:
            positions = torch.arange(start, start + s, device=x.device)[None]  # [1, S]
            position_embeddings = self.rotary(x, positions)
        q, k = apply_rope(q, k, *position_embeddings)
        o = self._attend(q, k, v, cache)  # [B, Hq, S, D]
        return self.o_proj(o.transpose(1, 2).reshape(b, s, self.num_heads * self.head_dim))

    def _attend(self, q, k, v, cache):
        if cache is None:
            return _prefill(q, k, v)
        if cache.num_kv_heads != self.num_kv_heads:
            raise ValueError(f"cache: expected {self.num_kv_heads} KV heads (this layer's), "
                             f"got a cache of {cache.num_kv_heads}")
        end = cache.seq_len + q.shape[2]  # cached positions once the new ones are in
        keys, values, lengths = cache.append(self.layer_idx, k, v)  # [B, Hkv, S_max, D] x2, [B]
        if q.shape[2] == 1:  # decode: one query per sequence against its cache
            if kernel_takes(q):  # the cache keeps its lengths in range itself: no per-layer host sync
                return decode_attention(q[:, :, 0], keys, values, lengths, validate_lengths=False)[:, :, None]
            return decode_attention_ref(q[:, :, 0], keys, values, lengths)[:, :, None]  # [B, Hq, 1, D]
        return _prefill(q, keys[:, :, :end], values[:, :, :end])  # causal, aligned to the end

    def extra_repr(self) -> str:
        return (f"num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
                f"layer_idx={self.layer_idx}")


def _prefill(q, k, v):
    return flash_attention(q, k, v, causal=True, backend="auto")  # our kernel where it runs, else SDPA


def pool_kv_heads(weight: torch.Tensor, num_kv_heads: int, new_kv_heads: int) -> torch.Tensor:
    """Convert a K or V projection's ``weight [Hkv·D, hidden]`` (or bias ``[Hkv·D]``) to ``new_kv_heads``.

    Fewer heads: mean-pool each group of ``num_kv_heads // new_kv_heads`` heads, the GQA paper's
    starting point for uptraining (``new_kv_heads=1`` gives MQA; quality drops until uptrained).
    More heads: repeat each head ``new_kv_heads // num_kv_heads`` times (MHA from GQA — exact).
    """
    if not isinstance(weight, torch.Tensor) or weight.ndim not in (1, 2):
        raise TypeError(f"weight: expected a tensor [Hkv*D, hidden] or [Hkv*D], got {weight!r:.60}")
    for name, value in (("num_kv_heads", num_kv_heads), ("new_kv_heads", new_kv_heads)):
        check_positive_int(name, value)
    if weight.shape[0] % num_kv_heads:
        raise ValueError(f"weight: expected a first dimension divisible by num_kv_heads={num_kv_heads}, "
                         f"got shape {tuple(weight.shape)}")
    if num_kv_heads % new_kv_heads and new_kv_heads % num_kv_heads:
        raise ValueError(f"new_kv_heads: expected a divisor or a multiple of num_kv_heads={num_kv_heads}, "
                         f"got {new_kv_heads}")
    heads = weight.reshape(num_kv_heads, -1, *weight.shape[1:])  # [Hkv, D, (hidden)]
    if new_kv_heads <= num_kv_heads:
        group = num_kv_heads // new_kv_heads
        pooled = heads.reshape(new_kv_heads, group, *heads.shape[1:]).mean(dim=1)  # [new, D, (hidden)]
    else:
        pooled = heads.repeat_interleave(new_kv_heads // num_kv_heads, dim=0)  # [new, D, (hidden)]
    return pooled.reshape(-1, *weight.shape[1:])  # [new*D, (hidden)]


def convert_kv_heads_(attn: GQAAttention, new_kv_heads: int) -> GQAAttention:
    """Give ``attn`` ``new_kv_heads`` KV heads in place (new k/v projections via :func:`pool_kv_heads`)."""
    if not isinstance(attn, GQAAttention):
        raise TypeError(f"attn: expected a GQAAttention, got {type(attn).__name__}")
    check_positive_int("new_kv_heads", new_kv_heads)
    if attn.num_heads % new_kv_heads:
        raise ValueError(f"new_kv_heads: expected a divisor of num_heads={attn.num_heads}, got {new_kv_heads}")
    for name in ("k_proj", "v_proj"):
        old = getattr(attn, name)
        new = nn.Linear(old.in_features, new_kv_heads * attn.head_dim, bias=old.bias is not None,
                        device=old.weight.device, dtype=old.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(pool_kv_heads(old.weight, attn.num_kv_heads, new_kv_heads))
            if old.bias is not None:
                new.bias.copy_(pool_kv_heads(old.bias, attn.num_kv_heads, new_kv_heads))
        setattr(attn, name, new)
    attn.num_kv_heads = new_kv_heads
    return attn


__all__ = ["GQAAttention", "pool_kv_heads", "convert_kv_heads_"]
