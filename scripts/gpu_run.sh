#!/usr/bin/env bash
# One device call: the GPU check (results JSON), the gpu-marked tests, then every chapter notebook
# top to bottom on the GPU (the notebooks' own asserts are the checks; stored outputs are CPU
# outputs, so they are not compared: `--nbval-lax` where nbval exists, else our plain runner).
# Usage on the lent GPU machine (repo root):
#   GPU_CHECK_ONLY="quant sparse_decode" GPU_TESTS="tests/kernels" NOTEBOOKS="04 06" \
#     bash scripts/gpu_run.sh [CHECK_S] [TEST_S] [NOTEBOOK_S]
# Everything lands in $OUT (or ./gpu_out): the results JSON and the logs.
set -u
out=${OUT:-gpu_out}; mkdir -p "$out"
export PYTHONPATH=. PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv | tee "$out/nvidia-smi.txt"
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
timeout "${1:-270}" python3 scripts/gpu_check.py --out "$out" ${GPU_CHECK_ONLY:+--only $GPU_CHECK_ONLY} 2>&1 | tee "$out/gpu_check.log"
timeout "${2:-120}" python3 -m pytest -q -p no:cacheprovider -m gpu -rfE ${GPU_TESTS:-tests/kernels tests/quant tests/engine} 2>&1 | tee "$out/pytest_gpu.log" | tail -40
if python3 -c "import nbval" 2>/dev/null; then
  timeout "${3:-300}" python3 -m pytest -q -p no:cacheprovider --nbval-lax notebooks 2>&1 | tee "$out/notebooks.log" | tail -20
else
  timeout "${3:-300}" python3 scripts/run_notebook_sources.py ${NOTEBOOKS:-} --out "$out" 2>&1 | tee "$out/notebooks.log"
fi
