"""Fused RMSNorm and LayerNorm, forward and backward, against the references; bad input."""
import pytest
import torch

from tutx.kernels.norms import layer_norm, layer_norm_ref, rms_norm, rms_norm_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float16: dict(atol=2e-2, rtol=1e-2),
       torch.bfloat16: dict(atol=6e-2, rtol=2e-2)}


def _case(shape, dtype, seed, bias=True):
    g = torch.Generator().manual_seed(seed)
    n = shape[-1]
    x = (torch.randn(*shape, generator=g) * 2 + 0.5).to(DEVICE, dtype).requires_grad_()
    w = (1 + 0.3 * torch.randn(n, generator=g)).to(DEVICE, dtype).requires_grad_()
    b = (0.2 * torch.randn(n, generator=g)).to(DEVICE, dtype).requires_grad_() if bias else None
    dy = torch.randn(*shape, generator=g).to(DEVICE, dtype)
    return x, w, b, dy


def _grads(out, inputs, dy):
    inputs = [t for t in inputs if t is not None]
    return torch.autograd.grad(out, inputs, dy)


def _compare(ours, ref, inputs, dy, dtype):
    torch.testing.assert_close(ours.float(), ref.float(), **TOL[dtype])
    for got, want in zip(_grads(ours, inputs, dy), _grads(ref, inputs, dy)):
        assert got.dtype == dtype
        # dw/db sum over all rows: compare relative to their size
        torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype]["atol"] * (1 + want.abs().max().item()),
                                   rtol=TOL[dtype]["rtol"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(3, 7, 37), (9, 1), (5, 64)])  # 37: a masked tail; 9 rows over 4 programs
def test_rms_norm_forward_and_backward(shape, dtype):
    x, w, _, dy = _case(shape, dtype, seed=shape[-1], bias=False)
    _compare(rms_norm(x, w), rms_norm_ref(x, w), (x, w), dy, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(3, 7, 37), (10, 20)])
def test_layer_norm_forward_and_backward(shape, bias, dtype):
    x, w, b, dy = _case(shape, dtype, seed=shape[-1] + bias, bias=bias)
    _compare(layer_norm(x, w, b), layer_norm_ref(x, w, b), (x, w, b), dy, dtype)


def test_layer_norm_ref_is_torch_layer_norm():
    x, w, b, _ = _case((4, 16), torch.float32, seed=1)
    torch.testing.assert_close(layer_norm_ref(x, w, b), torch.nn.functional.layer_norm(x, (16,), w, b))


def test_norms_bad_input():
    x, w = torch.randn(4, 8), torch.ones(8)
    with pytest.raises(ValueError, match=r"weight: expected shape \(8,\) \(the last dim of x\), got \(7,\)"):
        rms_norm(x, torch.ones(7))
    with pytest.raises(TypeError, match="weight: expected the dtype of x"):
        rms_norm(x, w.half())
    with pytest.raises(TypeError, match="x: expected dtype float16, bfloat16 or float32"):
        layer_norm(x.long(), w)
    with pytest.raises(ValueError, match="x: the kernels read rows with unit stride"):
        layer_norm(torch.randn(8, 4).t(), torch.ones(8))
    with pytest.raises(ValueError, match="eps: expected a number > 0, got 0"):
        rms_norm(x, w, eps=0)
    with pytest.raises(TypeError, match="bias: expected a torch.Tensor, got list"):
        layer_norm(x, w, [0.0] * 8)
    with pytest.raises(ValueError, match="exceed the 65536-byte row"):
        rms_norm(torch.randn(1, 20000), torch.ones(20000))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n", [768, 4096, 8192])
def test_gpu_norms_large(n, dtype):
    x, w, b, dy = _case((2048, n), dtype, seed=n)
    _compare(layer_norm(x, w, b), layer_norm_ref(x, w, b), (x, w, b), dy, dtype)
    _compare(rms_norm(x, w), rms_norm_ref(x, w), (x, w), dy, dtype)
