"""The few-rows linear kernel (tutx/kernels/csrc/linear_cpu.c) against F.linear."""
import pytest
import torch

from tutx.kernels import cpu_build
from tutx.kernels.linear_cpu import NR, few_rows_limit, linear_cpu, linear_ref, pack_weight, pad_bias

pytestmark = pytest.mark.skipif(cpu_build.compiler() is None, reason="no C compiler to build the CPU kernel")


def make(m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)


@pytest.mark.parametrize("m", [1, 5, 6, 7, 13, 48, 70])  # below, at and past a 6-row block
@pytest.mark.parametrize("n,k", [(64, 32), (384, 256), (100, 33), (1, 7), (130, 640)])  # full and partial tiles
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_matches_f_linear(m, n, k, with_bias):
    x, w, b = make(m, n, k)
    packed = pack_weight(w)
    assert packed.shape == (-(-n // NR), k, NR)
    bias = b if with_bias else None
    out = linear_cpu(x, packed, n, pad_bias(bias, packed))
    assert out.shape == (m, n) and out.dtype == torch.float32
    torch.testing.assert_close(out, linear_ref(x, w, bias), atol=1e-4, rtol=1e-5)


def test_rows_apart_and_threads():
    x, w, _ = make(20, 192, 64, seed=1)
    wide = torch.cat([x, torch.full((20, 10), float("nan"))], dim=1)[:, :64]  # rows 74 apart
    packed, ref = pack_weight(w), linear_ref(x, w)
    n = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.testing.assert_close(linear_cpu(wide, packed, 192), ref, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(linear_cpu(x.t().contiguous().t(), packed, 192), ref, atol=1e-4, rtol=1e-5)
    finally:
        torch.set_num_threads(n)


def test_bad_inputs_raise():
    x, w, b = make(4, 100, 32)
    packed = pack_weight(w)
    with pytest.raises(TypeError, match=r"^weight: "):
        pack_weight(w.double())
    with pytest.raises(TypeError, match=r"^x: "):
        linear_cpu(x[0], packed, 100)
    with pytest.raises(ValueError, match=r"^x: expected 32 input features"):
        linear_cpu(x[:, :31], packed, 100)
    with pytest.raises(ValueError, match=r"^out_features: "):
        linear_cpu(x, packed, 129)
    with pytest.raises(ValueError, match=r"^packed: "):
        linear_cpu(x, w.view(100, 32, 1), 100)
    with pytest.raises(ValueError, match=r"^bias: "):
        linear_cpu(x, packed, 100, b)  # not padded


def test_few_rows_limit():
    assert few_rows_limit(256) == 48 and few_rows_limit(768) == 12
