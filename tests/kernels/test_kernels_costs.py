"""Bytes and FLOPs of the Chapter 5 kernels: hand-counted cases, rates, and bad input."""
import pytest
import torch

from tutx.hardware import get_hardware
from tutx.kernels.costs import KernelCost, layer_norm_cost, matmul_cost, rms_norm_cost, softmax_cost, swiglu_cost


def test_counts_by_hand():
    assert softmax_cost(4, 10, torch.float16) == KernelCost(bytes=2 * 40 * 2, flops=5 * 40)
    assert swiglu_cost(100, torch.float32) == KernelCost(bytes=3 * 100 * 4, flops=500)
    assert swiglu_cost(100, torch.float32, backward=True).bytes == 5 * 100 * 4
    assert rms_norm_cost(2, 8, torch.bfloat16) == KernelCost(bytes=2 * 16 * 2 + 8 * 2 + 4 * 2, flops=4 * 16)
    assert layer_norm_cost(2, 8, torch.bfloat16).bytes == 2 * 16 * 2 + 2 * 8 * 2 + 8 * 2
    assert layer_norm_cost(2, 8, torch.bfloat16, backward=True).flops == 10 * 16
    assert matmul_cost(2, 3, 4, torch.bfloat16) == KernelCost(bytes=(8 + 12 + 6) * 2, flops=48)


def test_rates_and_the_roofline():
    cost = matmul_cost(4096, 4096, 4096, torch.bfloat16)
    assert cost.tflops(1e-3) == pytest.approx(2 * 4096**3 / 1e-3 / 1e12)
    assert softmax_cost(1024, 1024, torch.float32).gbps(1e-3) == pytest.approx(8 * 2**20 / 1e-3 / 1e9)
    ridge = get_hardware("H100-SXM").ridge_point("bf16")
    assert cost.intensity > ridge  # a big matmul is compute-bound
    for small in (softmax_cost(4096, 4096, torch.bfloat16), rms_norm_cost(4096, 4096, torch.bfloat16),
                  swiglu_cost(2**24, torch.bfloat16)):
        assert small.intensity < 5 < ridge  # the fused elementwise/row kernels are memory-bound


def test_costs_bad_input():
    with pytest.raises(TypeError, match="dtype: expected a torch.dtype"):
        softmax_cost(2, 3, "bf16")
    with pytest.raises(ValueError, match="rows: expected an int >= 1, got 0"):
        rms_norm_cost(0, 3, torch.float32)
    with pytest.raises(TypeError, match="backward"):
        layer_norm_cost(2, 3, torch.float32, backward="yes")
    with pytest.raises(TypeError, match="k: expected an int"):
        matmul_cost(2, 3, 4.0, torch.float32)
