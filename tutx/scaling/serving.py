"""Serving arithmetic on a :class:`~tutx.scaling.ModelSpec`: decode ceilings, the batch at which
decoding stops being memory-bound, and the price of a million tokens."""
from __future__ import annotations

from tutx._validate import check_int, check_number, check_positive
from tutx.hardware import get_hardware
from tutx.scaling.spec import ModelSpec


def _check_spec(spec) -> None:
    if not isinstance(spec, ModelSpec):
        raise TypeError(f"spec: expected a ModelSpec (ModelSpec.from_config(cfg)), got {type(spec).__name__}")


def memory_bound_tokens_per_s(bytes_read_per_token: float, bandwidth_bytes_per_s: float) -> float:
    """If every token needs its bytes streamed from memory, bandwidth ÷ bytes is the ceiling."""
    check_positive("bytes_read_per_token", bytes_read_per_token)
    check_positive("bandwidth_bytes_per_s", bandwidth_bytes_per_s)
    return bandwidth_bytes_per_s / bytes_read_per_token


def decode_ceiling(spec: ModelSpec, hardware, dtype="bf16", batch=1, context_len=0,
                   kv_dtype=None, compute_dtype=None) -> float:
    """Upper bound on decode throughput (tokens/s summed over the batch).

    The memory bound is ``bandwidth ÷ bytes per step × batch``, the compute bound
    ``peak FLOP/s ÷ FLOPs per token``; the smaller one wins. ``compute_dtype`` (default
    ``dtype``) picks the peak rate — pass e.g. ``"fp16"`` for int4 weight-only kernels. For a
    mixture of experts both use the experts the batch's tokens are routed to.
    """
    _check_spec(spec)
    hw = get_hardware(hardware)
    per_token = spec.decode_bytes_per_token(dtype, context_len, batch, kv_dtype)
    memory = memory_bound_tokens_per_s(per_token, hw.memory_bandwidth)
    compute = hw.peak(compute_dtype or dtype) / spec.decode_flops_per_token(context_len)
    return min(memory, compute)


def memory_bound_batch(spec: ModelSpec, hardware, dtype="bf16", context_len=0) -> int:
    """Smallest batch at which decode reaches the ridge point (stops being memory-bound).

    Intensity ``B·F / (W(B) + B·K)`` grows with B towards ``F/K`` (F: FLOPs per token, W(B):
    weight bytes a step reads, constant for a dense model; K: KV bytes per sequence). If that
    limit is below the ridge, no batch gets there. Found by doubling, then bisection.
    """
    _check_spec(spec)
    hw = get_hardware(hardware)
    check_int("context_len", context_len, minimum=0)
    ridge = hw.ridge_point(dtype)
    flops = spec.decode_flops_per_token(context_len)
    kv = spec.kv_cache_bytes_per_token(dtype) * context_len
    if flops <= ridge * kv:
        raise ValueError(
            f"context_len={context_len}: decode of {spec.name} on {hw.name} stays memory-bound at "
            f"every batch (intensity tends to {flops / kv:.0f} < ridge {ridge:.0f} FLOP/byte)"
        )

    def past_ridge(batch: int) -> bool:
        return spec.decode_intensity(dtype, batch, context_len) >= ridge

    high = 1
    while not past_ridge(high):
        high *= 2
    low = high // 2  # not past the ridge (or 0)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if past_ridge(mid) else (mid, high)
    return high


def cost_per_million_tokens(tokens_per_s: float, dollars_per_hour: float) -> float:
    """Dollars per million tokens for a machine rented at ``dollars_per_hour``."""
    check_positive("tokens_per_s", tokens_per_s)
    check_number("dollars_per_hour", dollars_per_hour, minimum=0)
    return dollars_per_hour / (tokens_per_s * 3600) * 1e6


__all__ = ["memory_bound_tokens_per_s", "decode_ceiling", "memory_bound_batch", "cost_per_million_tokens"]
