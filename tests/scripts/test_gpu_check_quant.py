"""The Chapter 3 GPU-check script: its helpers on CPU, and a smoke run at tiny shapes (no GPU needed)."""
import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_checks" / "quant.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("gpu_check_quant", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_tinygemm_scales_and_zeros_reproduce_our_dequantization(script):
    """torch's CPU twin of tinygemm takes the same scale/zero layout; our conversion must match our format."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=g)
    q = script.quantize_weights(w)
    x = torch.randn(3, 256, generator=g)
    ours = script.int4_weight_only_matmul_ref(x, q["w4"], q["s4"], q["z4"], 128)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q["codes4"].to(torch.int32), 8)
    tg = torch.ops.aten._weight_int4pack_mm_for_cpu(x.bfloat16(), packed, 128,
                                                    script.tinygemm_scales_and_zeros(q["s4"], q["z4"]))
    assert script._rel_err(tg, ours) < 1e-2
    assert script.tinygemm_scales_and_zeros(q["s4"], q["z4"]).shape == (2, 64, 2)


def test_quantize_weights_layouts(script):
    q = script.quantize_weights(torch.randn(32, 256))
    assert q["w8"].dtype == torch.int8 and q["s8"].shape == (32,)
    assert q["w4"].shape == (32, 128) and q["w4"].dtype == torch.uint8
    assert q["s4"].shape == (32, 2) and q["z4"].dtype == torch.uint8


def test_run_without_cuda_records_a_skip(script, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results = {}
    script.run(results)
    assert results == {"quant_matmul": "skipped: no CUDA device"}


def test_smoke_run_on_cpu_at_tiny_shapes(script):
    results = {}
    script.run(results, device="cpu", shapes=[(256, 48)], batches=[1, 17], check_batches=(1, 17))
    check = [r for r in results["quant_matmul_check"] if "rel_err" in r]
    assert {r["op"] for r in check} >= {"int8_weight_only", "int4_weight_only_g128", "w8a8"}
    assert all(r["ok"] for r in check), check
    rows = results["quant_matmul"]
    timed = [r for r in rows if "us" in r]
    assert {(r["op"], r["M"]) for r in timed} >= {(op, m) for op in ("bf16_cublas", "int8_weight_only",
                                                                     "int4_weight_only_g128") for m in (1, 17)}
    for r in timed:
        assert r["us"] > 0 and r["N"] == 48 and r["K"] == 256
        assert r["speedup_vs_cublas"] == pytest.approx(r["baseline_us"] / r["us"], rel=1e-2)
    assert results["quant_matmul_meta"]["device"] == "cpu"
