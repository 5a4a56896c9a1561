"""Fused softmax against its reference: one-block and looped paths, odd widths, all dtypes, bad input."""
import pytest
import torch

from tutx.kernels.fused_softmax import softmax, softmax_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(atol=1e-6, rtol=1e-5), torch.float16: dict(atol=1e-3, rtol=1e-2),
       torch.bfloat16: dict(atol=8e-3, rtol=1e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("block_size", [None, 16])  # None: whole row in one block; 16: the looped two-pass path
@pytest.mark.parametrize("shape", [(5, 37), (2, 3, 1), (1, 100)])
def test_softmax_matches_ref(shape, block_size, dtype):
    g = torch.Generator().manual_seed(sum(shape))
    x = (torch.randn(*shape, generator=g) * 4).to(DEVICE, dtype)
    y = softmax(x, block_size=block_size)
    assert y.shape == x.shape and y.dtype == dtype
    torch.testing.assert_close(y.float(), softmax_ref(x).float(), **TOL[dtype])


def test_looped_path_survives_a_growing_max_and_inf():
    """The online max/sum must rescale when a later block holds the max, and -inf entries give 0."""
    x = torch.arange(70, dtype=torch.float32, device=DEVICE).repeat(3, 1) * 0.5  # max in the last block
    x[1, :40] = float("-inf")
    x[2, 60:] = float("-inf")
    y = softmax(x, block_size=16)
    torch.testing.assert_close(y, softmax_ref(x))
    assert (y[1, :40] == 0).all() and torch.allclose(y.sum(-1), torch.ones(3, device=DEVICE))


def test_softmax_takes_a_row_strided_view():
    x = torch.randn(6, 50, device=DEVICE)[::2, 3:40]  # rows with stride 100, unit stride inside
    torch.testing.assert_close(softmax(x), softmax_ref(x))


def test_softmax_bad_input():
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        softmax([1.0, 2.0])
    with pytest.raises(TypeError, match="x: expected dtype float16, bfloat16 or float32, got torch.int64"):
        softmax(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"x: the kernel reads rows with unit stride; got strides \(1, 3\)"):
        softmax(torch.randn(4, 3).t())
    with pytest.raises(ValueError, match="block_size: expected a power of two, got 24"):
        softmax(torch.randn(2, 3), block_size=24)
    with pytest.raises(ValueError, match="block_size: expected an int >= 16, got 8"):
        softmax(torch.randn(2, 3), block_size=8)
    with pytest.raises(ValueError, match=r"got shape \(0, 3\)"):
        softmax(torch.randn(0, 3))


@pytest.mark.gpu
@pytest.mark.parametrize("cols", [1000, 8192, 40000])  # the last takes the looped path
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_gpu_softmax_large(cols, dtype):
    x = torch.randn(512, cols, device="cuda", dtype=dtype) * 3
    torch.testing.assert_close(softmax(x).float(), softmax_ref(x).float(), **TOL[dtype])
