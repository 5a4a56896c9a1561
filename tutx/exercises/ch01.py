"""Checks for Chapter 1's exercises (scaling challenges).

Each ``check_…(fn)`` runs your function on a handful of real model shapes and compares it with
the reference in :mod:`tutx.scaling`. It prints ``✅ …`` when all cases pass and raises an
``AssertionError`` that names the first failing case otherwise.
"""
from __future__ import annotations

from functools import lru_cache

from tutx.exercises._check import run_cases
from tutx.hardware import HARDWARE
from tutx.configs import get_spec
from tutx.scaling import ModelSpec, kv_cache_bytes, memory_bound_batch, memory_bound_tokens_per_s

__all__ = ["check_kv_cache_bytes", "check_decode_ceiling", "check_memory_bound_batch", "specs"]

@lru_cache(maxsize=None)
def specs() -> dict[str, ModelSpec]:
    """The model shapes the checks use, by name."""
    return {name: get_spec(name) for name in ("GPT-2", "Llama-2-7B", "Llama-3.1-8B", "Mistral-7B")}


def check_kv_cache_bytes(fn) -> None:
    """``fn(num_layers, num_kv_heads, head_dim, batch, seq_len, bytes_per_elem) -> bytes``.

    The KV cache stores a key and a value vector per layer, KV head and cached position.
    """
    cases = [
        (32, 8, 128, 1, 8192, 2),  # Llama-3-8B, 8k context, bf16: 1 GiB
        (32, 32, 128, 1, 4096, 2),  # Llama-2-7B (no GQA), 4k, fp16
        (32, 8, 128, 16, 32768, 1),  # Mistral-7B, batch 16 at 32k, fp8
        (12, 12, 64, 8, 1024, 4),  # GPT-2, fp32
        (3, 1, 40, 5, 11, 0.5),  # odd sizes, multi-query attention, int4
    ]
    run_cases("check_kv_cache_bytes", fn, kv_cache_bytes, cases, rel_tol=1e-9)


def check_decode_ceiling(fn) -> None:
    """``fn(param_bytes_read_per_token, bandwidth_bytes_per_s) -> tokens/s``.

    At batch 1 every generated token streams the weights from memory once, so memory
    bandwidth, not FLOP/s, sets the ceiling.
    """
    s = specs()
    combos = [("Llama-3.1-8B", "H100-SXM", "bf16"), ("Llama-3.1-8B", "A100-40GB", "int8"),
              ("Mistral-7B", "L4", "int4"), ("GPT-2", "T4", "fp16"), ("Llama-2-7B", "laptop-cpu", "bf16")]
    cases = [(s[m].decode_bytes_per_token(d), HARDWARE[h].memory_bandwidth) for m, h, d in combos]
    run_cases("check_decode_ceiling", fn, memory_bound_tokens_per_s, cases, rel_tol=1e-6)


def check_memory_bound_batch(fn) -> None:
    """``fn(spec, hardware, dtype, context_len) -> int``: the smallest decode batch that is no
    longer memory-bound, i.e. whose arithmetic intensity reaches ``hardware.ridge_point(dtype)``.

    Useful pieces: ``spec.decode_flops_per_token(context_len)``,
    ``spec.decode_bytes_per_step(dtype, context_len, batch)`` (or ``spec.decode_intensity``).
    """
    s = specs()
    cases = [
        (s["Llama-3.1-8B"], HARDWARE["H100-SXM"], "bf16", 0),
        (s["GPT-2"], HARDWARE["A100-40GB"], "bf16", 0),
        (s["Mistral-7B"], HARDWARE["L4"], "fp8", 0),
        (s["GPT-2"], HARDWARE["T4"], "fp32", 0),
        (s["Llama-3.1-8B"], HARDWARE["H100-SXM"], "bf16", 128),  # the KV cache raises the bar
        (s["Llama-2-7B"], HARDWARE["A100-80GB"], "fp16", 64),
    ]
    run_cases("check_memory_bound_batch", fn, memory_bound_batch, cases, rel_tol=0)
