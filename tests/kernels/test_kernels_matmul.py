"""Tiled Triton matmul against the reference: masked tails, strides, epilogues, dtypes, grouped order; bad input."""
import pytest
import torch
import triton
import triton.language as tl

from tutx.kernels import tiled_matmul as mm
from tutx.kernels.quant_matmul import tile_ids
from tutx.kernels.tiled_matmul import ACTIVATIONS, matmul, matmul_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.float16: dict(atol=2e-2, rtol=1e-2),
       torch.bfloat16: dict(atol=1.5e-1, rtol=1e-2)}


def _ab(m, k, n, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(m, k, generator=g).to(DEVICE, dtype), torch.randn(k, n, generator=g).to(DEVICE, dtype))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_matmul_matches_ref(dtype, activation):
    # 37 x 45 x 70: ragged M, N and K tiles; 3 x 3 tiles with GROUP_M=2 under the interpreter: a partial group
    a, b = _ab(37, 45, 70, dtype, seed=len(activation))
    c = matmul(a, b, activation)
    assert c.shape == (37, 70) and c.dtype == dtype
    torch.testing.assert_close(c.float(), matmul_ref(a, b, activation).float(), **TOL[dtype])


def test_matmul_takes_transposed_and_strided_operands():
    a, b = _ab(45, 29, 33, torch.float32, seed=3)
    at = a.t()  # [29, 45], column-major
    strided = torch.randn(45, 40, device=DEVICE)[:, ::2]  # [45, 20], column stride 2
    torch.testing.assert_close(matmul(at, strided), matmul_ref(at, strided), **TOL[torch.float32])
    torch.testing.assert_close(matmul(b.t(), a.t()), matmul_ref(b.t(), a.t()), **TOL[torch.float32])


def test_one_by_one_and_skinny():
    for m, k, n in [(1, 1, 1), (1, 50, 3), (40, 1, 17)]:
        a, b = _ab(m, k, n, torch.float32, seed=m + k + n)
        torch.testing.assert_close(matmul(a, b, "gelu"), matmul_ref(a, b, "gelu"), **TOL[torch.float32])


def test_interpreter_tries_one_config_only():
    """Autotuning under the interpreter would run every config; the module keeps one there."""
    if DEVICE == "cpu":
        assert len(mm.CONFIGS) == 1
    else:
        assert len(mm.CONFIGS) > 4


def test_matmul_bad_input():
    a, b = _ab(4, 6, 5, torch.float32, seed=0)
    with pytest.raises(ValueError, match=r"b: expected 6 rows \(the columns of a, shape \(4, 6\)\), got shape \(5, 5\)"):
        matmul(a, torch.randn(5, 5, device=DEVICE))
    with pytest.raises(TypeError, match="b: expected the dtype of a"):
        matmul(a, b.half())
    with pytest.raises(ValueError, match="activation"):
        matmul(a, b, "tanh")
    with pytest.raises(ValueError, match=r"a: expected a 2-D tensor, got shape \(2, 4, 6\)"):
        matmul(a.expand(2, 4, 6), b)
    with pytest.raises(ValueError, match="a: expected dtype in"):
        matmul(a.long(), b.long())


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(4096, 4096, 4096), (1000, 3000, 777), (16, 4096, 11008)])
def test_gpu_matmul_large(shape, dtype):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bf16 needs sm_80+")
    m, k, n = shape
    a, b = _ab(m, k, n, dtype, seed=m)
    a, b = a / k**0.25, b / k**0.25
    for act in ("none", "gelu"):
        ours, ref = matmul(a, b, act).float(), matmul_ref(a, b, act).float()
        assert ((ours - ref).norm() / ref.norm()).item() < 1e-2


def test_launch_order_is_grouped_and_a_permutation():
    assert mm.launch_order(2, 3, group_m=1) == [[0, 1, 2], [3, 4, 5]]  # row-major
    order = mm.launch_order(5, 4, group_m=2)
    assert sorted(p for row in order for p in row) == list(range(20))
    assert order[0][:2] == [0, 2] and order[1][:2] == [1, 3]  # down a pair of rows, then the next column
    assert order[4] == [16, 17, 18, 19]  # the last, partial group: one row
    with pytest.raises(ValueError, match="group_m: expected an int >= 1, got 0"):
        mm.launch_order(2, 2, 0)


@triton.jit
def _record_tile_ids(out_ptr, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    tl.store(out_ptr + pid_m * tl.cdiv(N, BLOCK_N) + pid_n, tl.program_id(0))


def test_launch_order_mirrors_the_kernel_tile_ids():
    out = torch.full((5, 4), -1, dtype=torch.int32, device=DEVICE)
    _record_tile_ids[(20,)](out, 5 * 16, 4 * 16, BLOCK_M=16, BLOCK_N=16, GROUP_M=2)
    assert out.tolist() == mm.launch_order(5, 4, group_m=2)
