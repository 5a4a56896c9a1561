"""Quantized-matmul kernels against their references: interpreter on CPU (small, odd shapes) and GPU."""
import pytest
import torch

from tutx.kernels import quant_matmul as qm
from tutx.kernels import quant_matmul_int4 as qm4

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _close(y, ref, dtype):
    """Tolerance follows the dtype, relative to the output's magnitude."""
    rel = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert y.dtype == ref.dtype and y.shape == ref.shape
    scale = ref.float().abs().max().clamp(min=1.0)
    torch.testing.assert_close(y.float(), ref.float(), rtol=rel, atol=rel * scale)


def _int8_case(m, n, k, dtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    w = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8).to(device)
    s = (torch.rand(n, generator=g) / 50 + 1e-3).to(device)
    return x, w, s


def _int4_case(m, n, k, group, dtype, seed, device=DEVICE):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).to(device, dtype)
    w = torch.randint(0, 256, (n, k // 2), generator=g, dtype=torch.uint8).to(device)
    s = (torch.rand(n, k // group, generator=g) / 20 + 1e-3).to(device)
    z = torch.randint(0, 16, (n, k // group), generator=g, dtype=torch.uint8).to(device)
    return x, w, s, z


@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_weight_only_matches_ref(m, dtype):
    x, w, s = _int8_case(m, 45, 100, dtype, seed=m)  # N, K not multiples of any block
    _close(qm.int8_weight_only_matmul(x, w, s), qm.int8_weight_only_matmul_ref(x, w, s), dtype)


@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_weight_only_matches_ref(m, group, dtype):
    x, w, s, z = _int4_case(m, 37, 256, group, dtype, seed=m * group)
    _close(qm4.int4_weight_only_matmul(x, w, s, z, group), qm4.int4_weight_only_matmul_ref(x, w, s, z, group), dtype)


@pytest.mark.parametrize("m", [1, 3, 17, 33])
@pytest.mark.parametrize("out_dtype", DTYPES)
def test_w8a8_matches_ref_exactly_in_int32(m, out_dtype):
    g = torch.Generator().manual_seed(m)
    x = torch.randint(-127, 128, (m, 70), generator=g, dtype=torch.int8).to(DEVICE)
    w = torch.randint(-127, 128, (41, 70), generator=g, dtype=torch.int8).to(DEVICE)
    xs, ws = torch.rand(m, generator=g).to(DEVICE), (torch.rand(41, generator=g) / 100).to(DEVICE)  # fits fp16
    y = qm.int8_matmul_rescale(x, w, xs, ws, out_dtype)
    _close(y, qm.int8_matmul_rescale_ref(x, w, xs, ws, out_dtype), out_dtype)
    ones = torch.ones(m, device=DEVICE), torch.ones(41, device=DEVICE)
    exact = qm.int8_matmul_rescale(x, w, *ones, torch.float32)
    assert torch.equal(exact, x.double().matmul(w.double().T).float())  # int32 accumulation is exact


def test_w8a8_pre_sm80_path_through_fp16_tensor_cores_is_exact(monkeypatch):
    """The T4 path (no int8 tl.dot before sm_80): int8 codes are exact in fp16, sums exact below 2**24."""
    monkeypatch.setattr(qm, "int8_dot_supported", lambda device: False)
    g = torch.Generator().manual_seed(9)
    x = torch.randint(-127, 128, (5, 96), generator=g, dtype=torch.int8).to(DEVICE)
    w = torch.randint(-127, 128, (33, 96), generator=g, dtype=torch.int8).to(DEVICE)
    ones = torch.ones(5, device=DEVICE), torch.ones(33, device=DEVICE)
    assert torch.equal(qm.int8_matmul_rescale(x, w, *ones, torch.float32), x.double().matmul(w.double().T).float())


def test_int4_ref_uses_the_documented_nibble_order():
    from tutx.quant.primitives import pack_int4

    q = torch.randint(0, 16, (3, 64), dtype=torch.uint8)
    x = torch.randn(2, 64)
    s, z = torch.ones(3, 2), torch.zeros(3, 2, dtype=torch.uint8)
    y = qm4.int4_weight_only_matmul(x, pack_int4(q), s, z, 32)
    torch.testing.assert_close(y, x @ q.float().T, rtol=1e-5, atol=1e-4)


def test_non_contiguous_activations_and_empty_batch():
    x, w, s = _int8_case(40, 24, 64, torch.float32, seed=1)
    xt = x.T.contiguous().T  # same values, column-major strides
    _close(qm.int8_weight_only_matmul(xt, w, s), qm.int8_weight_only_matmul_ref(x, w, s), torch.float32)
    x4, w4, s4, z4 = _int4_case(5, 24, 64, 32, torch.float32, seed=2)
    _close(qm4.int4_weight_only_matmul(x4[:, :].T.contiguous().T, w4, s4.T.contiguous().T, z4, 32),
           qm4.int4_weight_only_matmul_ref(x4, w4, s4, z4, 32), torch.float32)
    assert qm.int8_weight_only_matmul(x[:0], w, s).shape == (0, 24)
    assert qm4.int4_weight_only_matmul(x4[:0], w4, s4, z4, 32).shape == (0, 24)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU dispatch rule")
def test_wrappers_run_the_kernel_under_the_interpreter_and_the_ref_without(monkeypatch):
    x, w, s = _int8_case(3, 8, 32, torch.float32, seed=3)
    expected = qm.int8_weight_only_matmul_ref(x, w, s)

    def boom(*args, **kwargs):
        raise AssertionError("the reference ran instead of the kernel")

    monkeypatch.setattr(qm, "int8_weight_only_matmul_ref", boom)
    _close(qm.int8_weight_only_matmul(x, w, s), expected, torch.float32)  # interpreter: kernel
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(AssertionError, match="the reference ran"):
        qm.int8_weight_only_matmul(x, w, s)


def test_weight_only_errors_name_the_argument():
    x, w, s = _int8_case(2, 8, 32, torch.float32, seed=4)
    with pytest.raises(ValueError, match=r"x: expected dtype in .*got torch.int32"):
        qm.int8_weight_only_matmul(x.int(), w, s)
    with pytest.raises(ValueError, match="x: expected a 2-D tensor"):
        qm.int8_weight_only_matmul(x[None], w, s)
    with pytest.raises(ValueError, match="w_int8: expected 32 columns"):
        qm.int8_weight_only_matmul(x, w[:, :16].contiguous(), s)
    with pytest.raises(ValueError, match="w_int8: expected dtype"):
        qm.int8_weight_only_matmul(x, w.float(), s)
    with pytest.raises(ValueError, match="w_int8: expected a contiguous tensor"):
        qm.int8_weight_only_matmul(x, torch.cat([w, w], 1)[:, ::2], s)
    with pytest.raises(ValueError, match=r"scale: expected shape \(8,\)"):
        qm.int8_weight_only_matmul(x, w, s[:4])
    with pytest.raises(ValueError, match="scale: expected the device of x"):
        qm.int8_weight_only_matmul(x, w, s.to("meta"))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        qm.int8_weight_only_matmul([[1.0]], w, s)


def test_int4_errors_name_the_argument():
    x, w, s, z = _int4_case(2, 8, 128, 64, torch.float32, seed=5)
    with pytest.raises(ValueError, match=r"group_size: expected one of \(32, 64, 128\), got 16"):
        qm4.int4_weight_only_matmul(x, w, s, z, 16)
    with pytest.raises(ValueError, match="x: in-features K=96 must be a multiple of group_size=64"):
        qm4.int4_weight_only_matmul(x[:, :96], w, s, z, 64)
    with pytest.raises(ValueError, match="w_packed: expected 64 columns"):
        qm4.int4_weight_only_matmul(x, w[:, :32].contiguous(), s, z, 64)
    with pytest.raises(ValueError, match="scales: expected 2 columns"):
        qm4.int4_weight_only_matmul(x, w, s[:, :1], z, 64)
    with pytest.raises(ValueError, match="zeros: expected dtype"):
        qm4.int4_weight_only_matmul(x, w, s, z.int(), 64)
    with pytest.raises(ValueError, match="scales: expected 8 rows"):
        qm4.int4_weight_only_matmul(x, w, s[:4], z, 64)


def test_w8a8_errors_name_the_argument():
    x = torch.zeros(2, 32, dtype=torch.int8)
    w = torch.zeros(4, 32, dtype=torch.int8)
    with pytest.raises(ValueError, match="x_int8: expected dtype"):
        qm.int8_matmul_rescale(x.float(), w, torch.ones(2), torch.ones(4))
    with pytest.raises(ValueError, match=r"x_scale: expected shape \(2,\)"):
        qm.int8_matmul_rescale(x, w, torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match=r"w_scale: expected shape \(4,\)"):
        qm.int8_matmul_rescale(x, w, torch.ones(2), torch.ones(2))
    with pytest.raises(ValueError, match="out_dtype: expected one of"):
        qm.int8_matmul_rescale(x, w, torch.ones(2), torch.ones(4), torch.int32)


# ----------------------------------------------------------------------------- GPU, real sizes
@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_int8_weight_only_real_size(m, dtype):
    x, w, s = _int8_case(m, 4096, 4096, dtype, seed=m, device="cuda")
    _close(qm.int8_weight_only_matmul(x, w, s), qm.int8_weight_only_matmul_ref(x, w, s), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 64])
@pytest.mark.parametrize("group", [32, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_int4_weight_only_real_size(m, group, dtype):
    x, w, s, z = _int4_case(m, 4096, 4096, group, dtype, seed=m, device="cuda")
    _close(qm4.int4_weight_only_matmul(x, w, s, z, group), qm4.int4_weight_only_matmul_ref(x, w, s, z, group), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 64, 512])
def test_gpu_w8a8_real_size(m):
    g = torch.Generator().manual_seed(m)
    x = torch.randint(-127, 128, (m, 4096), generator=g, dtype=torch.int8).cuda()
    w = torch.randint(-127, 128, (4096, 4096), generator=g, dtype=torch.int8).cuda()
    xs, ws = torch.rand(m, device="cuda"), torch.rand(4096, device="cuda") / 100
    _close(qm.int8_matmul_rescale(x, w, xs, ws), qm.int8_matmul_rescale_ref(x, w, xs, ws), torch.bfloat16)
