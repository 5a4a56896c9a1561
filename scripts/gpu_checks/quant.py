"""GPU check for Chapter 3: the quantized-matmul kernels against their references, then their speed.

``run(results)`` (called by the shared GPU-check driver) adds
``results["quant_matmul_check"]`` — max errors at one real shape, per kernel and launch path — and
``results["quant_matmul"]`` — rows ``{op, M, N, K, us, baseline_us, speedup_vs_cublas}`` for
bf16 ``F.linear`` (cuBLAS, the baseline), torch's int4 tinygemm (``_weight_int4pack_mm``) and our
INT8 and INT4 (group 128) weight-only kernels, at batch 1, 4, 16, 64 on three Llama-sized shapes.

How it times: each op is captured ``calls`` times in a CUDA graph (so Python launch overhead is
not measured — a serving engine would graph-capture decode too) and each call reads a *different
copy* of the weights, enough copies to overflow L2, because in a real model each layer's weights
come from HBM. ``tutx.bench.timeit`` times the graph replays with CUDA events.

Run alone: ``python scripts/gpu_checks/quant.py [results.json]``.
"""
from __future__ import annotations

import json
import math
import sys
import time

import torch
import torch.nn.functional as F
import triton

import tutx
from tutx.bench import timeit
from tutx.kernels.quant_matmul import (
    int8_matmul_rescale,
    int8_matmul_rescale_ref,
    int8_weight_only_matmul,
    int8_weight_only_matmul_ref,
)
from tutx.kernels import quant_matmul as qm
from tutx.kernels import quant_matmul_int4 as qm4
from tutx.kernels.quant_gemv import int4_gemv, int8_gemv
from tutx.kernels.quant_matmul_int4 import int4_weight_only_matmul, int4_weight_only_matmul_ref
from tutx.quant import pack_int4, quantize, quantize_per_token

SHAPES = [(4096, 4096), (4096, 14336), (8192, 8192)]  # (K in-features, N out-features)
BATCHES = [1, 4, 8, 16, 64]
GROUP = 128
L2_FLUSH_BYTES = 256 * 2**20  # weight copies per op add up to at least this (H100 L2: 50 MB)


def quantize_weights(w: torch.Tensor, group: int = GROUP) -> dict:
    """INT8 per-channel and INT4 group-wise versions of ``w [N, K]``, in the layouts our kernels take."""
    q8 = quantize(w.float(), 8, symmetric=True, axis=0)
    q4 = quantize(w.float(), 4, symmetric=False, group_size=group)
    return {"w8": q8.data, "s8": q8.scale, "codes4": q4.data, "w4": pack_int4(q4.data), "s4": q4.scale,
            "z4": q4.zero_point.to(torch.uint8)}


def tinygemm_scales_and_zeros(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """Our ``(q - z) * s`` as tinygemm's ``(q - 8) * s + zero``: bf16 ``[K // g, N, 2]`` of (s, (8 - z) * s)."""
    s = scales.float()  # [N, G]
    return torch.stack([s, (8 - zeros.float()) * s], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)


def tinygemm_pack(codes: torch.Tensor, inner_k_tiles: int = 8) -> torch.Tensor:
    """Pack codes ``[N, K]`` (0..15) for ``_weight_int4pack_mm``; the input format changed across torch versions."""
    errors = []
    packed_u8 = ((codes[:, ::2] << 4) | codes[:, 1::2]).to(torch.uint8)  # torch >= 2.5: even column high
    for arg in (packed_u8, codes.to(torch.int32)):  # older torch: int32 [N, K]
        try:
            return torch.ops.aten._convert_weight_to_int4pack(arg, inner_k_tiles)
        except Exception as e:  # noqa: BLE001 - record why, try the next format
            errors.append(f"{arg.dtype}: {type(e).__name__}: {str(e).splitlines()[0][:160]}")
    raise RuntimeError("; ".join(errors))


def _rel_err(y: torch.Tensor, ref: torch.Tensor) -> float:
    return ((y.float() - ref.float()).norm() / ref.float().norm().clamp(min=1e-12)).item()


def check_kernels(device: str, k: int = 4096, n: int = 4096, batches=(1, 16, 64)) -> list[dict]:
    """Each kernel against its reference at one real shape, for the split-K (M <= 16) and tiled paths."""
    g = torch.Generator(device=device).manual_seed(0)
    w = torch.randn(n, k, device=device, generator=g) / math.sqrt(k)
    q = quantize_weights(w)
    rows = []
    for m in batches:
        x = torch.randn(m, k, device=device, generator=g).to(torch.bfloat16)
        pairs = {
            "int8_weight_only": (int8_weight_only_matmul(x, q["w8"], q["s8"]),
                                 int8_weight_only_matmul_ref(x, q["w8"], q["s8"])),
            "int4_weight_only_g128": (int4_weight_only_matmul(x, q["w4"], q["s4"], q["z4"], GROUP),
                                      int4_weight_only_matmul_ref(x, q["w4"], q["s4"], q["z4"], GROUP)),
        }
        xq, xs = quantize_per_token(x)
        pairs["w8a8"] = (int8_matmul_rescale(xq, q["w8"], xs, q["s8"]),
                         int8_matmul_rescale_ref(xq, q["w8"], xs, q["s8"]))
        try:
            tg = torch.ops.aten._weight_int4pack_mm(x, tinygemm_pack(q["codes4"]), GROUP,
                                                    tinygemm_scales_and_zeros(q["s4"], q["z4"]))
            pairs["torch_tinygemm_vs_our_int4_ref"] = (tg, pairs["int4_weight_only_g128"][1])
        except Exception as e:  # noqa: BLE001
            rows.append({"op": "torch_tinygemm_g128", "M": m, "N": n, "K": k, "error": f"unavailable: {e}"})
        for op, (y, ref) in pairs.items():
            rel = _rel_err(y, ref)
            rows.append({"op": op, "M": m, "N": n, "K": k, "max_abs_err": (y.float() - ref.float()).abs().max().item(),
                         "rel_err": rel, "ok": rel < 1e-2})
    return rows


def _time_per_call(make_call, weight_bytes: int, device: str) -> float:
    """Microseconds per call, with a different weight copy per call; CUDA-graphed on GPUs.

    Elsewhere (the CPU smoke test, where kernels are interpreted) one call, three samples.
    """
    cuda = device == "cuda"
    copies = max(2, math.ceil(L2_FLUSH_BYTES / max(weight_bytes, 1))) if cuda else 1
    fns = [make_call() for _ in range(copies)]  # each closure holds its own weight copy
    calls = max(copies, 8) if cuda else 1
    seq = [fns[i % copies] for i in range(calls)]

    def eager():
        for f in seq:
            f()

    eager()  # autotune and allocate outside any graph
    run = eager
    if device == "cuda":
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            eager()
        run = graph.replay
    return timeit(run, warmup=2 if cuda else 0, repeat=10 if cuda else 3, device=device).median_us / calls


def bench(device: str, shapes=SHAPES, batches=BATCHES) -> list[dict]:
    """Rows ``{op, M, N, K, us, baseline_us, speedup_vs_cublas}``; unavailable ops get ``error`` instead of times."""
    rows = []
    dtype = torch.bfloat16
    for k, n in shapes:
        g = torch.Generator(device=device).manual_seed(k + n)
        w = (torch.randn(n, k, device=device, generator=g) / math.sqrt(k)).to(dtype)  # [N, K]
        q = quantize_weights(w)
        try:
            tg = (tinygemm_pack(q["codes4"]), tinygemm_scales_and_zeros(q["s4"], q["z4"]))
            tg_error = None
        except Exception as e:  # noqa: BLE001
            tg, tg_error = None, f"unavailable: {e}"
        for m in batches:
            x = torch.randn(m, k, device=device, generator=g).to(dtype)  # [M, K]
            ops = {
                "bf16_cublas": (lambda: _bind(F.linear, x, w.clone()), w.numel() * 2),
                "int8_weight_only": (lambda: _bind(int8_weight_only_matmul, x, q["w8"].clone(), q["s8"]),
                                     q["w8"].numel()),
                "int4_weight_only_g128": (lambda: _bind(int4_weight_only_matmul, x, q["w4"].clone(), q["s4"].clone(),
                                                        q["z4"].clone(), GROUP), q["w4"].numel() + q["s4"].numel() * 5),
            }
            if m == 1:  # both decode paths, to see what the GEMV buys at batch 1
                ops["int8_gemv_path"] = (lambda: _bind(int8_gemv, x, q["w8"].clone(), q["s8"]), q["w8"].numel())
                ops["int4_gemv_path"] = (lambda: _bind(int4_gemv, x, q["w4"].clone(), q["s4"].clone(),
                                                       q["z4"].clone(), GROUP), q["w4"].numel() + q["s4"].numel() * 5)
            if m <= qm.SMALL_M:
                ops["int8_splitk_path"] = (lambda: _bind(_splitk_int8, x, q["w8"].clone(), q["s8"]), q["w8"].numel())
                ops["int4_splitk_path"] = (lambda: _bind(_splitk_int4, x, q["w4"].clone(), q["s4"].clone(),
                                                         q["z4"].clone()), q["w4"].numel() + q["s4"].numel() * 5)
            if tg is not None:
                ops["torch_tinygemm_g128"] = (
                    lambda: _bind(torch.ops.aten._weight_int4pack_mm, x, tg[0].clone(), GROUP, tg[1].clone()),
                    q["w4"].numel() + q["s4"].numel() * 4)
            base = None
            for op, (make, nbytes) in ops.items():
                try:
                    us = _time_per_call(make, nbytes, device)
                except Exception as e:  # noqa: BLE001 - one failing op must not lose the other rows
                    rows.append({"op": op, "M": m, "N": n, "K": k, "error": f"failed: {type(e).__name__}: {e}"})
                    continue
                base = us if op == "bf16_cublas" else base
                rows.append({"op": op, "M": m, "N": n, "K": k, "us": _sig(us),
                             "baseline_us": None if base is None else _sig(base),
                             "speedup_vs_cublas": None if base is None else _sig(base / us)})
            if tg_error:
                rows.append({"op": "torch_tinygemm_g128", "M": m, "N": n, "K": k, "error": tg_error})
    return rows


def _splitk_int8(x, w, s):
    return qm.launch_weight_only(qm._int8_small, qm._int8_large, x, w.shape[0], (x, w, s),
                                 (x.stride(0), x.stride(1), w.stride(0), w.stride(1)))


def _splitk_int4(x, w, s, z):
    return qm.launch_weight_only(qm4._int4_small, qm4._int4_large, x, w.shape[0], (x, w, s, z),
                                 (x.stride(0), x.stride(1), w.stride(0), w.stride(1), s.stride(0), s.stride(1),
                                  z.stride(0), z.stride(1)), GROUP_SIZE=GROUP)


def _sig(v: float) -> float:
    return float(f"{v:.4g}")


def _bind(fn, *args):
    return lambda: fn(*args)


def run(results: dict, device: str = "cuda", shapes=SHAPES, batches=BATCHES, check_batches=(1, 16, 64)) -> None:
    """Fill ``results`` (see the module docstring). On a machine without CUDA it records why it skipped."""
    if device == "cuda" and not torch.cuda.is_available():
        results["quant_matmul"] = "skipped: no CUDA device"
        return
    t0 = time.perf_counter()
    check_k, check_n = shapes[0]
    results["quant_matmul_meta"] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else device,
        "torch": torch.__version__, "triton": triton.__version__, "tutx": tutx.__version__,
        "dtype": "bfloat16", "group_size": GROUP,
        "method": "CUDA graph of back-to-back calls, a fresh weight copy per call (L2 flushed), median of 10",
    }
    try:  # a failing check must not stop the benchmark (its rows record per-op failures)
        results["quant_matmul_check"] = check_kernels(device, check_k, check_n, check_batches)
    except Exception as err:  # noqa: BLE001
        results["quant_matmul_check"] = [{"op": "error", "error": f"{type(err).__name__}: {err}"[:500]}]
    results["quant_matmul"] = bench(device, shapes, batches)
    results["quant_matmul_meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    bad = [r for r in results["quant_matmul_check"] + results["quant_matmul"] if r.get("ok") is False
           or not str(r.get("error", "unavailable")).startswith("unavailable")]  # a missing baseline is no failure
    if bad:
        raise RuntimeError(f"{len(bad)} quantized-matmul row(s) failed or were off: {bad[:3]}")


if __name__ == "__main__":
    out: dict = {}
    run(out)
    text = json.dumps(out, indent=1)
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(text + "\n")
    print(text)
