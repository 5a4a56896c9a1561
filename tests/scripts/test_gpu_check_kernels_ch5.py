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


COMPILE = r'''
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("k", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
from tutx.kernels.tiled_matmul import GPU_TILES
rows = mod.compile_check(targets=((80, "bf16"),), tiles=[GPU_TILES[0]])
print("RESULT", json.dumps(rows))
'''


def test_every_kernel_lowers_for_a_gpu_without_one():
    """The interpreter checks the maths, not that the kernels compile: lower them for sm_80 with Triton's ptxas."""
    import json
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")  # Linux wheels ship the NVIDIA backend and its ptxas
    env = {**os.environ, "TRITON_INTERPRET": "0"}  # real JIT functions (the interpreter's cannot be compiled)
    done = subprocess.run([sys.executable, "-c", COMPILE, str(SCRIPT)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert len(rows) == 8 and not [r for r in rows if "error" in r], rows
    big = [r for r in rows if r["kernel"].startswith("matmul")][0]
    assert 0 < big["shared_kb"] <= 164  # an A100's shared memory per block
