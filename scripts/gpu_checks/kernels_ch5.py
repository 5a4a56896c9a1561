"""GPU check for Chapter 5's Triton kernels: correctness at real sizes, then effective GB/s and TFLOP/s.

``run(results)`` (called by the shared GPU-check driver ``scripts/gpu_check.py``) adds:

- ``results["kernels_check"]``: per op and shape, the max error against the ``_ref`` (and ``ok``);
- ``results["kernels_softmax"]``, ``["kernels_norms"]``, ``["kernels_swiglu"]``: one row per op and
  shape, ``{op, rows, cols, dtype, triton_us, eager_us, compile_us, copy_us, triton_gbps,
  eager_gbps, compile_gbps, copy_gbps, pct_of_copy, vs_eager, vs_compile}``. GB/s are *effective*:
  the bytes an ideal fused kernel moves (:mod:`tutx.kernels.costs`) over the time. ``copy`` is
  ``dst.copy_(src)`` of the same number of bytes — the bandwidth this GPU really reaches — and
  ``pct_of_copy`` is our kernel against it. Eager is what a user writes (``torch.softmax``,
  ``F.rms_norm``, ``F.layer_norm``, ``F.silu(g) * u``); ``compile`` is ``torch.compile`` of the same
  function (inductor's fused Triton kernel), both timed in the same process;
- ``results["kernels_matmul"]``: ``{op, M, N, K, dtype, activation, triton_us, cublas_us, compile_us,
  triton_tflops, cublas_tflops, compile_tflops, vs_cublas}`` — cuBLAS is ``torch.matmul`` (then the
  activation in eager), ``compile`` is ``torch.compile`` of that.

Timing uses ``triton.testing.do_bench`` (median; it flushes L2 between calls) on GPUs, and
:func:`tutx.bench.timeit` elsewhere. ``--dry-run`` runs every code path on CPU through Triton's
interpreter at toy shapes (no timings worth reading) — what ``tests/scripts`` does:

    PYTHONPATH=. python scripts/gpu_checks/kernels_ch5.py [out.json]       # on a GPU
    PYTHONPATH=. python scripts/gpu_checks/kernels_ch5.py --dry-run        # anywhere
    PYTHONPATH=. python scripts/gpu_checks/kernels_ch5.py --compile-only   # lower for sm_75/80/90, no GPU
"""
from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn.functional as F

GPU_SHAPES = {
    "softmax": [(4096, 1024), (4096, 8192), (2048, 32768)],  # 32768 columns > MAX_BLOCK: the looped path
    "norms": [(4096, 1024), (16384, 4096), (4096, 8192)],
    "swiglu": [(4096, 11008), (16384, 14336)],
    "matmul": [(4096, 4096, 4096, "none"), (4096, 4096, 4096, "gelu"), (8192, 8192, 8192, "none"),
               (2048, 11008, 4096, "silu"), (16, 4096, 4096, "none")],
}
DRY_SHAPES = {"softmax": [(4, 37), (3, 70)], "norms": [(5, 37)], "swiglu": [(3, 50)],
              "matmul": [(20, 33, 17, "none"), (20, 33, 17, "gelu")]}


def _kernels():
    """Import the kernels late: ``--dry-run`` must set ``TRITON_INTERPRET`` before they are defined."""
    from tutx.kernels import costs, fused_softmax, fused_swiglu, norms, tiled_matmul

    return costs, fused_softmax, fused_swiglu, norms, tiled_matmul


def _timer(device: str):
    """Microseconds per call of ``fn()``: ``do_bench`` median on CUDA, ``tutx.bench.timeit`` elsewhere."""
    if device == "cuda":
        import triton.testing

        return lambda fn: 1e3 * triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
    from tutx.bench import timeit

    return lambda fn: timeit(fn, warmup=1, repeat=3, device=device).median_us


def _rms_eager(x, w, eps=1e-6):
    return F.rms_norm(x, (x.shape[-1],), w, eps) if hasattr(F, "rms_norm") else \
        x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype) * w


def _swiglu_eager(g, u):
    return F.silu(g) * u


def _compiled(fn, use_compile: bool):
    return torch.compile(fn, dynamic=False) if use_compile else None


def _time_or_none(time_us, fn):
    if fn is None:
        return None
    try:
        fn()  # compile / autotune outside the timing
        return time_us(fn)
    except Exception as err:  # noqa: BLE001 - a missing baseline must not lose our row
        print(f"baseline failed: {type(err).__name__}: {err}"[:300], flush=True)
        return None


def _sig(v):
    return None if v is None else float(f"{v:.4g}")


def _bandwidth_row(op, shape, dtype, cost, time_us, ours, eager, compiled, copy_bytes, device):
    """Time ours / eager / compiled / a copy of ``copy_bytes``; effective GB/s from ``cost.bytes``."""
    src = torch.empty(copy_bytes // 2, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = {"triton": _time_or_none(time_us, ours), "eager": _time_or_none(time_us, eager),
             "compile": _time_or_none(time_us, compiled), "copy": _time_or_none(time_us, lambda: dst.copy_(src))}
    row = {"op": op, "rows": shape[0], "cols": shape[1], "dtype": str(dtype).replace("torch.", "")}
    for name, us in times.items():
        row[f"{name}_us"] = _sig(us)
        nbytes = copy_bytes if name == "copy" else cost.bytes  # a copy reads and writes copy_bytes / 2 each
        row[f"{name}_gbps"] = None if us is None else _sig(nbytes / us / 1e3)
    t = times["triton"]
    row["pct_of_copy"] = _sig(100 * row["triton_gbps"] / row["copy_gbps"]) if t and times["copy"] else None
    row["vs_eager"] = _sig(times["eager"] / t) if t and times["eager"] else None
    row["vs_compile"] = _sig(times["compile"] / t) if t and times["compile"] else None
    return row


def _err_row(op, shape, dtype, got, want, tol):
    err = (got.float() - want.float()).abs().max().item()
    return {"op": op, "shape": list(shape), "dtype": str(dtype).replace("torch.", ""), "max_abs_err": _sig(err),
            "ok": err <= tol}


def bench_memory_bound(results, device, shapes, dtype, use_compile):
    costs, sm, sw, nm, _ = _kernels()
    time_us = _timer(device)
    check, out = results.setdefault("kernels_check", []), results  # rows land as they are measured
    eager_sm, comp_sm = (lambda x: torch.softmax(x, -1)), _compiled(lambda x: torch.softmax(x, -1), use_compile)
    comp_rms, comp_ln = _compiled(_rms_eager, use_compile), _compiled(F.layer_norm, use_compile)
    comp_sw = _compiled(_swiglu_eager, use_compile)
    rows = out.setdefault("kernels_softmax", [])
    for m, n in shapes["softmax"]:
        x = torch.randn(m, n, device=device, dtype=dtype) * 3
        check.append(_err_row("softmax", (m, n), dtype, sm.softmax(x), sm.softmax_ref(x), 1e-2))
        cost = costs.softmax_cost(m, n, dtype)
        rows.append(_bandwidth_row("softmax", (m, n), dtype, cost, time_us, lambda: sm.softmax(x),
                                   lambda: eager_sm(x), comp_sm and (lambda: comp_sm(x)), cost.bytes, device))
    rows = out.setdefault("kernels_norms", [])
    for m, n in shapes["norms"]:
        x = torch.randn(m, n, device=device, dtype=dtype)
        w, b = torch.randn(n, device=device, dtype=dtype), torch.randn(n, device=device, dtype=dtype)
        check.append(_err_row("rms_norm", (m, n), dtype, nm.rms_norm(x, w), nm.rms_norm_ref(x, w), 5e-2))
        check.append(_err_row("layer_norm", (m, n), dtype, nm.layer_norm(x, w, b), nm.layer_norm_ref(x, w, b), 5e-2))
        for op, cost, ours, eager, comp in [
            ("rms_norm", costs.rms_norm_cost(m, n, dtype), lambda: nm.rms_norm(x, w), lambda: _rms_eager(x, w),
             comp_rms and (lambda: comp_rms(x, w))),
            ("layer_norm", costs.layer_norm_cost(m, n, dtype), lambda: nm.layer_norm(x, w, b),
             lambda: F.layer_norm(x, (n,), w, b), comp_ln and (lambda: comp_ln(x, (n,), w, b)))]:
            rows.append(_bandwidth_row(op, (m, n), dtype, cost, time_us, ours, eager, comp, 2 * m * n * x.element_size(),
                                       device))
        rows.append(_backward_row(nm, costs, x, w, b, time_us, device))
    rows = out.setdefault("kernels_swiglu", [])
    for m, n in shapes["swiglu"]:
        g, u = (torch.randn(m, n, device=device, dtype=dtype) for _ in range(2))
        check.append(_err_row("swiglu", (m, n), dtype, sw.swiglu(g, u), sw.swiglu_ref(g, u), 5e-2))
        cost = costs.swiglu_cost(m * n, dtype)
        rows.append(_bandwidth_row("swiglu", (m, n), dtype, cost, time_us, lambda: sw.swiglu(g, u),
                                   lambda: _swiglu_eager(g, u), comp_sw and (lambda: comp_sw(g, u)), cost.bytes, device))


def _backward_row(nm, costs, x, w, b, time_us, device):
    """LayerNorm forward+backward (x, w, b gradients): ours against eager autograd, as effective GB/s."""
    m, n = x.shape
    xs, ws, bs = (t.detach().requires_grad_() for t in (x, w, b))
    dy = torch.randn_like(x)

    def run(fn):
        return lambda: torch.autograd.grad(fn(xs, ws, bs), (xs, ws, bs), dy)

    fwd, bwd = costs.layer_norm_cost(m, n, x.dtype), costs.layer_norm_cost(m, n, x.dtype, backward=True)
    cost = costs.KernelCost(fwd.bytes + bwd.bytes, fwd.flops + bwd.flops)
    return _bandwidth_row("layer_norm fwd+bwd", (m, n), x.dtype, cost, time_us, run(nm.layer_norm),
                          run(lambda a, c, d: F.layer_norm(a, (n,), c, d)), None, 5 * m * n * x.element_size(), device)


def bench_matmul(results, device, shapes, dtype, use_compile):
    costs, *_, mm = _kernels()
    time_us = _timer(device)
    check, rows = results.setdefault("kernels_check", []), results.setdefault("kernels_matmul", [])
    acts = {"none": lambda t: t, "relu": torch.relu, "silu": F.silu, "gelu": F.gelu}
    for m, n, k, act in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype) / k**0.25
        b = torch.randn(k, n, device=device, dtype=dtype) / k**0.25
        ref = mm.matmul_ref(a, b, act).float()
        rel = ((mm.matmul(a, b, act).float() - ref).norm() / ref.norm()).item()
        check.append({"op": f"matmul {act}", "shape": [m, n, k], "dtype": str(dtype).replace("torch.", ""),
                      "rel_err": _sig(rel), "ok": rel < 1e-2})
        def eager(a=a, b=b, f=acts[act]):  # noqa: E306
            return f(a @ b)
        comp = _compiled(eager, use_compile)
        times = {"triton": _time_or_none(time_us, lambda: mm.matmul(a, b, act)),
                 "cublas": _time_or_none(time_us, eager), "compile": _time_or_none(time_us, comp)}
        cost = costs.matmul_cost(m, n, k, dtype)
        row = {"op": "matmul", "M": m, "N": n, "K": k, "dtype": str(dtype).replace("torch.", ""), "activation": act}
        for name, us in times.items():
            row[f"{name}_us"] = _sig(us)
            row[f"{name}_tflops"] = None if us is None else _sig(cost.flops / us / 1e6)
        row["vs_cublas"] = _sig(times["cublas"] / times["triton"]) if times["triton"] and times["cublas"] else None
        rows.append(row)


def run(results: dict, device: str = "cuda", dry_run: bool = False, use_compile: bool | None = None) -> None:
    """Fill ``results`` (see the module docstring). ``dry_run``: toy shapes on ``device`` (CPU: the interpreter)."""
    import triton

    from tutx.bench import run_steps

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("scripts/gpu_checks/kernels_ch5.py needs a CUDA GPU (or --dry-run)")
    shapes = DRY_SHAPES if dry_run else GPU_SHAPES
    use_compile = (device == "cuda") if use_compile is None else use_compile
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.get_device_capability()[0] >= 8 else \
        torch.float16 if device == "cuda" else torch.float32
    results["kernels_meta"] = {"device": torch.cuda.get_device_name() if device == "cuda" else device,
                               "triton": triton.__version__, "torch": torch.__version__, "dtype": str(dtype),
                               "timing": "triton.testing.do_bench median (L2 flushed)" if device == "cuda"
                               else "tutx.bench.timeit median (interpreter: not a speed)",
                               "torch_compile": bool(use_compile)}
    steps = [lambda: bench_memory_bound(results, device, shapes, dtype, use_compile),
             lambda: bench_matmul(results, device, shapes["matmul"], dtype, use_compile)]
    errors = results.setdefault("kernels_errors", [])
    run_steps(errors, steps, "kernels_ch5")
    bad = [r for r in results.get("kernels_check", []) if not r["ok"]]
    if bad:
        raise RuntimeError(f"{len(bad)} Chapter 5 kernel check(s) off: {bad[:3]}")


def compile_check(targets=((75, "fp16"), (80, "bf16"), (90, "bf16")), tiles=None) -> list[dict]:
    """Compile every matmul config (and the other kernels once) for each ``(sm, dtype)``; no GPU needed.

    Triton ships ``ptxas``, so this checks that each kernel lowers for a T4, an A100 and an H100
    and records the shared memory it takes. Strides of 1 are passed as constants and the rest as
    multiples of 16, as Triton specialises them at run time (otherwise no pipelining happens).
    ``tiles``: the matmul configs to compile (default all of ``GPU_TILES``). Rows
    ``{sm, dtype, kernel, shared_kb}`` or ``{..., error}``. A few minutes on one CPU core.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    _, sm, sw, nm, mm = _kernels()
    rows = []
    for cc, dt in targets:
        ptr = "*" + dt
        jobs = [("softmax", sm.softmax_kernel, {"x_ptr": ptr, "y_ptr": ptr}, dict(BLOCK=8192, ONE_BLOCK=True), 16),
                ("softmax looped", sm.softmax_kernel, {"x_ptr": ptr, "y_ptr": ptr},
                 dict(BLOCK=16384, ONE_BLOCK=False), 16),
                ("swiglu bwd", sw.swiglu_bwd_kernel, dict.fromkeys(["g_ptr", "u_ptr", "dy_ptr", "dg_ptr", "du_ptr"], ptr),
                 dict(BLOCK=1024), 4)]
        for rms in (True, False):
            norm_ptrs = {**dict.fromkeys(["x_ptr", "y_ptr", "dy_ptr", "dx_ptr", "w_ptr", "b_ptr"], ptr), "eps": "fp32",
                         **dict.fromkeys(["mean_ptr", "rstd_ptr", "dw_part_ptr", "db_part_ptr"], "*fp32")}
            for step, kernel in (("fwd", nm.norm_fwd_kernel), ("bwd", nm.norm_bwd_kernel)):
                jobs.append((f"{'rms' if rms else 'layer'}_norm {step}", kernel, norm_ptrs, dict(RMS=rms, HAS_BIAS=not rms, BLOCK=4096),
                             8))
        for bm, bn, bk, warps, stages in (mm.GPU_TILES if tiles is None else tiles):
            jobs.append((f"matmul {bm}x{bn}x{bk} w{warps} s{stages}", mm.matmul_kernel.fn,
                         {"a_ptr": ptr, "b_ptr": ptr, "c_ptr": ptr},
                         dict(ACT=3, DOT_F32=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8,
                              stride_ak=1, stride_bn=1, stride_cn=1), (warps, stages)))
        for name, kernel, types, consts, launch in jobs:
            warps, stages = launch if isinstance(launch, tuple) else (launch, 3)
            names = kernel.arg_names
            sig = {n: "constexpr" if n in consts else types.get(n, "i32") for n in names}
            attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in names if n not in consts and n != "eps"}
            row = {"sm": cc, "dtype": dt, "kernel": name}
            try:
                compiled = triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs=attrs),
                                          target=GPUTarget("cuda", cc, 32), options=dict(num_warps=warps, num_stages=stages))
                row["shared_kb"] = compiled.metadata.shared / 1024
            except Exception as err:  # noqa: BLE001 - recorded per config
                row["error"] = f"{type(err).__name__}: {err}"[:300]
            rows.append(row)
            print(row, flush=True)
    return rows


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    dry = "--dry-run" in sys.argv
    if dry and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"  # before any kernel module is imported
    out: dict = {}
    if "--compile-only" in sys.argv:
        out["kernels_compile"] = compile_check()
    else:
        run(out, device="cuda" if torch.cuda.is_available() else "cpu", dry_run=dry)
    text = json.dumps(out, indent=1)
    if args:
        with open(args[0], "w") as f:
            f.write(text + "\n")
    print(text)
