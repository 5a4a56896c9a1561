"""Bytes per element, the KV-cache formula and a human-readable parameter count."""
from __future__ import annotations

from tutx._validate import check_choice, check_str

#: Bytes per element when stored. tf32 is fp32 data (tensor cores only round the math).
DTYPE_BYTES = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1, "int4": 0.5}


def dtype_bytes(dtype: str) -> float:
    """Bytes per element of ``dtype`` (a name from :data:`DTYPE_BYTES`)."""
    check_str("dtype", dtype)
    return DTYPE_BYTES[check_choice("dtype", dtype, DTYPE_BYTES)]


def kv_cache_bytes(num_layers, num_kv_heads, head_dim, batch, seq_len, bytes_per_elem) -> float:
    """K and V for every layer, KV head and position: ``2·L·kv·d·batch·seq·bytes``."""
    return 2 * num_layers * num_kv_heads * head_dim * batch * seq_len * bytes_per_elem


def human(n: float) -> str:
    """``8.03B`` or ``124.4M``: a parameter count as a model card writes it."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"
