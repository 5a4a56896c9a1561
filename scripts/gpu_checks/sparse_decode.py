"""GPU check for Chapter 4's sliding-window and decode kernels: speed against the dense kernel and SDPA.

``run(results)`` appends rows to ``results["sparse_decode"]``. Sliding window: forward at
S=16k, 16 heads, D=128, windows 256/1024/4096, against our own dense causal kernel (the issue's
yardstick: cost should fall as S·W). Decode: flash-decoding over a ``[B, Hkv, S_max, D]`` cache
with per-sequence lengths, against SDPA given the same cache and a padding mask (what one would
write without a decode kernel) and against our PyTorch reference.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from tutx.bench import run_steps, timeit
from tutx.kernels.decode import decode_attention, decode_attention_ref
from tutx.kernels.sliding_window import sliding_window_attention, sliding_window_attention_ref

_spec = importlib.util.spec_from_file_location("gpu_checks_attention", Path(__file__).with_name("attention.py"))
_attention = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_attention)
_ours, _time_ms = _attention._ours, _attention._time_ms
WINDOWS = (256, 1024, 4096)
DECODE_CASES = [(8, 32, 8, 8192, 128), (1, 32, 8, 32768, 128), (64, 32, 8, 1024, 128)]  # B, Hq, Hkv, S_max, D


def window_pairs(s, window):
    """Attended (query, key) pairs of causal sliding-window attention: ``sum_i min(i + 1, window)``."""
    w = min(window, s)
    return w * (w + 1) // 2 + (s - w) * w


def bench_sliding_window(results: list, dtype=torch.bfloat16) -> None:
    """Forward at S=16k, H=16, D=128: sliding window vs our dense causal kernel (same process)."""
    b, h, s, d = 1, 16, 16384, 128
    q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=dtype) for _ in range(3))  # [B, H, S, D]
    qs, ks, vs = (x[:, :2, :4096] for x in (q, k, v))  # error check on a slice: the ref is O(S²)
    dense_ms = _time_ms(_ours, q, k, v, True, False)
    for window in WINDOWS:
        err = (sliding_window_attention(qs, ks, vs, window).float()
               - sliding_window_attention_ref(qs, ks, vs, window).float()).abs().max().item()
        attend = lambda q_, k_, v_, causal, w=window: sliding_window_attention(q_, k_, v_, w)  # noqa: E731
        ms = _time_ms(attend, q, k, v, True, False)
        flops = 4 * b * h * window_pairs(s, window) * d
        results.append({"op": "sliding window fwd", "shape": f"B{b} H{h} S{s} D{d} W{window}",
                        "dtype": str(dtype), "causal": True, "ms": ms, "tflops": flops / ms / 1e9,
                        "baseline": "ours dense causal", "baseline_ms": dense_ms, "ratio": dense_ms / ms,
                        "max_abs_err": err})


def _sdpa_decode(q, k_cache, v_cache, lengths):
    """What one writes without a decode kernel: SDPA over the whole padded cache with a length mask."""
    s_max = k_cache.shape[2]
    keep = torch.arange(s_max, device=q.device)[None, :] < lengths[:, None]  # [B, S_max]
    return torch.nn.functional.scaled_dot_product_attention(
        q[:, :, None], k_cache, v_cache, attn_mask=keep[:, None, None, :], enable_gqa=True)[:, :, 0]


def bench_decode(results: list, dtype=torch.bfloat16, case=DECODE_CASES[0]) -> None:
    """Decode over per-sequence lengths in ``[S_max/2, S_max]``: ours vs masked SDPA and the reference."""
    b, hq, hkv, s_max, d = case
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(b, hq, d, device="cuda", dtype=dtype)  # [B, Hq, D]
    k_cache = torch.randn(b, hkv, s_max, d, device="cuda", dtype=dtype)  # [B, Hkv, S_max, D]
    v_cache = torch.randn(b, hkv, s_max, d, device="cuda", dtype=dtype)
    lengths = torch.randint(s_max // 2, s_max + 1, (b,), device="cuda", generator=gen, dtype=torch.int32)
    ref = decode_attention_ref(q, k_cache, v_cache, lengths).float()
    err = (decode_attention(q, k_cache, v_cache, lengths).float() - ref).abs().max().item()
    sdpa_err = (_sdpa_decode(q, k_cache, v_cache, lengths).float() - ref).abs().max().item()
    ours_ms = timeit(lambda: decode_attention(q, k_cache, v_cache, lengths), warmup=3, repeat=20).median * 1e3
    trusted_ms = timeit(lambda: decode_attention(q, k_cache, v_cache, lengths, validate_lengths=False),
                        warmup=3, repeat=20).median * 1e3  # no host sync: what a KV cache or an engine calls
    tokens = int(lengths.sum())
    flops = 4 * hq * tokens * d
    kv_bytes = 2 * hkv * tokens * d * k_cache.element_size()
    base = {"op": "decode attention", "shape": f"B{b} Hq{hq} Hkv{hkv} S_max{s_max} D{d}", "dtype": str(dtype),
            "causal": False, "ms": ours_ms, "tflops": flops / ours_ms / 1e9, "kv_gbps": kv_bytes / ours_ms / 1e6,
            "max_abs_err": err, "tokens": tokens, "ms_trusted_lengths": trusted_ms}
    for name, fn, repeat in (("sdpa_masked", _sdpa_decode, 20), ("decode_attention_ref", decode_attention_ref, 5)):
        ms = timeit(lambda: fn(q, k_cache, v_cache, lengths), warmup=2, repeat=repeat).median * 1e3
        results.append({**base, "baseline": name, "baseline_ms": ms, "ratio": ms / ours_ms,
                        **({"baseline_max_abs_err": sdpa_err} if name == "sdpa_masked" else {})})


def run(results: dict) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("scripts/gpu_checks/sparse_decode.py needs a CUDA GPU")
    rows = results.setdefault("sparse_decode", [])
    steps = [lambda: bench_sliding_window(rows)] + [lambda c=c: bench_decode(rows, case=c) for c in DECODE_CASES]
    run_steps(rows, steps, "sparse/decode")
