"""Rotary position embeddings (RoPE), written to match Hugging Face Llama bit for bit.

RoPE rotates each pair of channels ``(x_i, x_{i+D/2})`` of a query or key by the angle
``position · θ^(-2i/D)``. Because the rotation is applied to q and k *before* they meet, the score
``q·k`` depends only on the distance between the two positions, and a cached key never needs to
be touched again: it was rotated once, for its own position, when it was appended.
"""
from __future__ import annotations

import torch
from torch import nn

from tutx._validate import check_number, check_positive_int


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension (the "half-split" pairing HF Llama uses)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotate q ``[B, Hq, S, D]`` and k ``[B, Hkv, S, D]`` by cos/sin ``[B or 1, S, D]``."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # [B or 1, 1, S, D]: broadcast over heads
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class RotaryEmbedding(nn.Module):
    """cos/sin tables of the default RoPE (``rope_type="default"``) for given positions."""

    def __init__(self, head_dim: int, rope_theta: float = 10000.0):
        super().__init__()
        check_positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim: expected an even int (RoPE rotates pairs of dims), got {head_dim}")
        check_number("rope_theta", rope_theta, minimum=1, strict_min=True)
        self.head_dim, self.rope_theta = head_dim, float(rope_theta)
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # [D/2]

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        """``(cos, sin)``, each ``[B or 1, S, D]`` in ``x.dtype``, for ``position_ids [B or 1, S]``."""
        freqs = position_ids[..., None].float() * self.inv_freq.to(x.device)  # [B, S, D/2], in fp32
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, S, D]
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rope_theta={self.rope_theta:g}"


__all__ = ["RotaryEmbedding", "apply_rope", "rotate_half"]
