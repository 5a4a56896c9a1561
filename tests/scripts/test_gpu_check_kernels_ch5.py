"""The Chapter 5 kernel GPU check: every code path at toy shapes on CPU, through the interpreter (no GPU needed)."""
import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_checks" / "kernels_ch5.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_check_kernels_ch5", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU dry run; a GPU runs the real check")
def test_dry_run_fills_every_area(script):
    results = {}
    script.run(results, device="cpu", dry_run=True, use_compile=False)
    assert results["kernels_check"] and all(r["ok"] for r in results["kernels_check"]), results["kernels_check"]
    assert {r["op"] for r in results["kernels_softmax"]} == {"softmax"}
    assert {r["op"] for r in results["kernels_norms"]} == {"rms_norm", "layer_norm", "layer_norm fwd+bwd"}
    for area in ("kernels_softmax", "kernels_norms", "kernels_swiglu"):
        for row in results[area]:
            assert row["triton_us"] > 0 and row["copy_gbps"] > 0 and row["compile_us"] is None
            assert row["pct_of_copy"] == pytest.approx(100 * row["triton_gbps"] / row["copy_gbps"], rel=1e-2)
    mm = results["kernels_matmul"]
    assert [r["activation"] for r in mm] == ["none", "gelu"]
    assert all(r["vs_cublas"] == pytest.approx(r["cublas_us"] / r["triton_us"], rel=1e-2) for r in mm)
    assert results["kernels_errors"] == [] and results["kernels_meta"]["device"] == "cpu"


def test_refuses_cuda_without_a_gpu(script, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        script.run({})
