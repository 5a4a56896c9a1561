"""Chapter 3's stored outputs do not depend on the CPU's thread count or vector unit.

The notebooks are committed with outputs from a run with ``OMP_NUM_THREADS=2`` (see
CONTRIBUTING.md, "Notebooks"); nbval then compares every cell not marked ``# NBVAL_IGNORE_OUTPUT``.
Here nbval re-runs ``03_quantization`` in a subprocess with **one** thread and, on a CPU whose ATen
kernels use AVX-512, with the AVX2 versions instead (``ATEN_CPU_CAPABILITY=avx2``: other vector
widths, so float32 reductions add in another order — what another CPU model would do; it moves the
fp32 perplexity in its 8th digit). The chapter passes because every compared value is either
computed in float64 or printed with the digits its noise allows.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "03_quantization.ipynb"


@pytest.mark.slow
def test_quantization_notebook_matches_its_outputs_with_one_thread():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        env["ATEN_CPU_CAPABILITY"] = "avx2"
    env.pop("TRITON_INTERPRET", None)  # readers' notebooks never run the Triton interpreter
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval", "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"),
         str(NOTEBOOK), "-q", "-p", "no:cacheprovider", "-x"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
