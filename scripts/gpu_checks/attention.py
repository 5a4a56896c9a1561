"""GPU check for Chapter 4's attention kernels: correctness at one bf16 shape, then speed.

``run(results)`` appends rows to ``results["attention"]``; the lead's GPU check script collects
them into a results file under ``book/results/``. Run alone with ``python scripts/gpu_checks/attention.py``.

Benchmarks (bf16, batch x sequence = 16k tokens, hidden 2048 — the FlashAttention papers'
convention): our Triton kernel against PyTorch SDPA restricted to its FlashAttention-2 backend and
to its cuDNN backend, forward and forward+backward, head dim 64 and 128, sequence 1k/4k/16k,
causal and not. (Sliding-window and decode attention are in ``sparse_decode.py``.) Each baseline
runs in the same process, so ratios are comparable even on a shared machine.

FLOPs: forward ``4·B·H·S_q·S_k·D`` (two matmuls), halved when causal; forward+backward counts
the backward as 2.5x the forward (five matmuls, one of them the recomputed ``q kᵀ``), so
``3.5x`` in all — the convention of FlashAttention's own benchmark scripts.
"""
from __future__ import annotations


import torch

from tutx.bench import run_steps, timeit
from tutx.kernels.attention import flash_attention, flash_attention_ref

FWD_BWD_FLOP_FACTOR = 3.5  # forward (1) + backward (2.5)
TOKENS, HIDDEN, SEQS = 16384, 2048, (1024, 4096, 16384)
WINDOWS = (256, 1024, 4096)
REPEAT = 5


def attention_flops(batch, heads, s_q, s_k, head_dim, causal, backward=False) -> float:
    """FLOPs of attention: forward ``4·B·H·S_q·S_k·D`` (half when causal), x3.5 with the backward."""
    flops = 4 * batch * heads * s_q * s_k * head_dim
    if causal:
        flops //= 2
    return flops * FWD_BWD_FLOP_FACTOR if backward else flops


def bench_shapes(head_dim, tokens=TOKENS, hidden=HIDDEN, seqs=SEQS):
    """``(B, H, S, D)`` with ``B·S = tokens`` and ``H·D = hidden``."""
    return [(tokens // s, hidden // head_dim, s, head_dim) for s in seqs]


def check_correctness(dtype=torch.bfloat16) -> dict:
    """Max errors of our forward and gradients against the fp32 reference at one GQA causal shape."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 8, 1000, 128, device="cuda", generator=gen)  # [B, Hq, S, D]
    k = torch.randn(2, 2, 1000, 128, device="cuda", generator=gen)  # [B, Hkv, S, D]
    v = torch.randn(2, 2, 1000, 128, device="cuda", generator=gen)
    do = torch.randn(2, 8, 1000, 128, device="cuda", generator=gen)
    ours = [x.to(dtype).requires_grad_() for x in (q, k, v)]
    refs = [x.detach().float().requires_grad_() for x in ours]  # same (rounded) inputs, fp32 math
    out = flash_attention(*ours, causal=True)
    ref = flash_attention_ref(*refs, causal=True)
    grads = torch.autograd.grad(out, ours, do.to(dtype))
    ref_grads = torch.autograd.grad(ref, refs, do.to(dtype).float())
    row = {"op": "attention correctness", "shape": "B2 Hq8 Hkv2 S1000 D128", "dtype": str(dtype),
           "causal": True, "max_abs_err_out": (out.float() - ref).abs().max().item()}
    for name, g, r in zip("qkv", grads, ref_grads):
        row[f"max_abs_err_d{name}"] = (g.float() - r).abs().max().item()
        row[f"max_abs_d{name}"] = r.abs().max().item()
    return row


def _sdpa(backend_name):
    """An attention callable restricted to one SDPA backend (raises if that backend is missing)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, backend_name)

    def attend(q, k, v, causal):
        with sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return attend


def _ours(q, k, v, causal):
    return flash_attention(q, k, v, causal=causal)


def _time_ms(attend, q, k, v, causal, backward):
    if backward:
        do = torch.randn_like(q)
        inputs = [x.detach().requires_grad_() for x in (q, k, v)]
        fn = lambda: torch.autograd.grad(attend(*inputs, causal), inputs, do)  # noqa: E731
    else:
        fn = lambda: attend(q, k, v, causal)  # noqa: E731
    fn()  # compile / autotune outside the timing
    return timeit(fn, warmup=2, repeat=REPEAT).median * 1e3


def bench_dense(results: list, dtype=torch.bfloat16) -> None:
    baselines = {"sdpa_flash": _sdpa("FLASH_ATTENTION"), "sdpa_cudnn": _sdpa("CUDNN_ATTENTION")}
    for head_dim in (64, 128):
        for b, h, s, d in bench_shapes(head_dim):
            q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=dtype) for _ in range(3))  # [B, H, S, D]
            for causal in (False, True):
                for backward in (False, True):
                    flops = attention_flops(b, h, s, s, d, causal, backward)
                    ours_ms = _time_ms(_ours, q, k, v, causal, backward)
                    for name, attend in baselines.items():
                        row = {"op": "attention fwd+bwd" if backward else "attention fwd",
                               "shape": f"B{b} H{h} S{s} D{d}", "dtype": str(dtype), "causal": causal,
                               "ms": ours_ms, "tflops": flops / ours_ms / 1e9, "baseline": name}
                        try:
                            base_ms = _time_ms(attend, q, k, v, causal, backward)
                        except Exception as err:  # a backend missing on this GPU/build
                            row.update(baseline_ms="unavailable", ratio=None,
                                       error=f"{type(err).__name__}: {err}"[:200])
                        else:
                            row.update(baseline_ms=base_ms, baseline_tflops=flops / base_ms / 1e9,
                                       ratio=base_ms / ours_ms)
                        results.append(row)
            del q, k, v
            torch.cuda.empty_cache()


def run(results: dict) -> None:
    """Correctness first, then the benchmarks; rows go to ``results["attention"]``."""
    if not torch.cuda.is_available():
        raise RuntimeError("scripts/gpu_checks/attention.py needs a CUDA GPU")
    rows = results.setdefault("attention", [])
    run_steps(rows, (lambda: rows.append(check_correctness()), lambda: bench_dense(rows)), "attention")


if __name__ == "__main__":
    import json

    out: dict = {}
    run(out)
    print(json.dumps(out, indent=1))
