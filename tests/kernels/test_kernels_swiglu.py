"""Fused SwiGLU forward and backward against the reference; bad input."""
import pytest
import torch

from tutx.kernels.fused_swiglu import BLOCK, swiglu, swiglu_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=1e-2),
       torch.bfloat16: dict(atol=2e-2, rtol=1e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 5, 7), (BLOCK + 13,)])  # one partial block; a full block and a tail
def test_swiglu_forward_and_backward(shape, dtype):
    g = torch.Generator().manual_seed(len(shape))
    gate = (torch.randn(*shape, generator=g) * 3).to(DEVICE, dtype).requires_grad_()
    up = torch.randn(*shape, generator=g).to(DEVICE, dtype).requires_grad_()
    dy = torch.randn(*shape, generator=g).to(DEVICE, dtype)
    out, ref = swiglu(gate, up), swiglu_ref(gate, up)
    assert out.shape == gate.shape and out.dtype == dtype
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])
    for got, want in zip(torch.autograd.grad(out, (gate, up), dy), torch.autograd.grad(ref, (gate, up), dy)):
        torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


def test_swiglu_ref_is_silu_times_up():
    gate, up = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(swiglu_ref(gate, up), torch.nn.functional.silu(gate) * up)


def test_swiglu_bad_input():
    x = torch.randn(4, 6)
    with pytest.raises(ValueError, match=r"up: expected the shape of gate \(4, 6\), got \(4, 5\)"):
        swiglu(x, torch.randn(4, 5))
    with pytest.raises(TypeError, match="up: expected the dtype of gate"):
        swiglu(x, x.half())
    with pytest.raises(ValueError, match="gate: the kernel reads a flat contiguous tensor"):
        swiglu(torch.randn(6, 4).t(), x)
    with pytest.raises(TypeError, match="gate: expected a torch.Tensor, got float"):
        swiglu(1.0, x)
    with pytest.raises(TypeError, match="gate: expected dtype float16, bfloat16 or float32, got torch.int32"):
        swiglu(x.int(), x.int())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_swiglu_large(dtype):
    gate = torch.randn(4096, 14336, device="cuda", dtype=dtype, requires_grad=True)
    up = torch.randn(4096, 14336, device="cuda", dtype=dtype, requires_grad=True)
    out, ref = swiglu(gate, up), swiglu_ref(gate, up)
    torch.testing.assert_close(out.float(), ref.float(), **TOL[dtype])
    dy = torch.randn_like(out)
    for got, want in zip(torch.autograd.grad(out, (gate, up), dy), torch.autograd.grad(ref, (gate, up), dy)):
        torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])
