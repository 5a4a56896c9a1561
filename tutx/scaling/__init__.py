"""Chapter 1's calculators: parameters, memory, KV cache, FLOPs, decode ceilings and cost.

Everything here is arithmetic on a :class:`ModelSpec` read from a Hugging Face config, so a
reader can size an 8B model — or a mixture of experts — on a laptop without downloading it.
Parameter counts are exact (the tests compare them with ``transformers`` models built on the
meta device, family by family); the memory and FLOP figures are the standard estimates, each
documented where it is computed.

- :mod:`~tutx.scaling.spec` — :class:`ModelSpec` and its parameter count;
- :mod:`~tutx.scaling.families` — reading each family's config (and :mod:`~tutx.scaling.meta`,
  counting on the meta device where no formula applies);
- :mod:`~tutx.scaling.costs` — memory, FLOPs and the bytes of a decode step;
- :mod:`~tutx.scaling.serving` — decode ceilings, the memory-bound batch and cost.
"""
from tutx.hardware import HARDWARE, Hardware, get_hardware
from tutx.scaling.families import FAMILIES
from tutx.scaling.serving import (
    cost_per_million_tokens, decode_ceiling, memory_bound_batch, memory_bound_tokens_per_s,
)
from tutx.scaling.spec import ModelSpec
from tutx.scaling.units import DTYPE_BYTES, dtype_bytes, kv_cache_bytes

__all__ = [
    "DTYPE_BYTES", "FAMILIES", "ModelSpec", "Hardware", "HARDWARE", "get_hardware", "dtype_bytes",
    "kv_cache_bytes", "memory_bound_tokens_per_s", "decode_ceiling", "memory_bound_batch",
    "cost_per_million_tokens",
]
