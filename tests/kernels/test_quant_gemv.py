"""The decode-shaped (GEMV) kernels against the references: every row count 1-8, odd sizes, all groups."""
import pytest
import torch
import triton

from tutx.kernels import quant_gemv as gemv
from tutx.kernels import quant_matmul as qm
from tutx.kernels import quant_matmul_int4 as qm4

from test_quant_matmul import DEVICE, DTYPES, _close, _int4_case, _int8_case


def _launch_int8(x, w, s, magic):
    """The raw kernel with a chosen code conversion (the autotuner picks between them on GPUs)."""
    words = w.view(torch.int32)
    out = torch.empty((1, w.shape[0]), dtype=x.dtype, device=x.device)
    gemv.int8_gemv_kernel[(triton.cdiv(w.shape[0], 16),)](x, words, s, out, w.shape[0], words.shape[1],
                                                         words.stride(0), BLOCK_N=16, BLOCK_W=8, MAGIC=magic)
    return out


def _launch_int4(x, w, s, z, group, magic):
    words = w.view(torch.int32)
    out = torch.empty((1, w.shape[0]), dtype=x.dtype, device=x.device)
    gemv.int4_gemv_kernel[(triton.cdiv(w.shape[0], 16),)](x, words, s, z, out, w.shape[0], x.shape[1],
                                                         words.stride(0), s.stride(0), z.stride(0),
                                                         GROUP_SIZE=group, BLOCK_N=16, GROUPS=2, MAGIC=magic)
    return out


@pytest.mark.parametrize("magic", [True, False])
@pytest.mark.parametrize("k", [200, 36])  # 50 words: a ragged last step; 9 words: less than one step
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_gemv_matches_ref(k, dtype, magic):
    x, w, s = _int8_case(1, 45, k, dtype, seed=k)  # N not a multiple of the block
    w[0, :4] = torch.tensor([-128, -127, 127, 0], dtype=torch.int8)  # the extremes of both conversions
    ref = qm.int8_weight_only_matmul_ref(x, w, s)
    _close(gemv.int8_gemv(x, w, s), ref, dtype)
    _close(_launch_int8(x, w, s, magic), ref, dtype)


@pytest.mark.parametrize("magic", [True, False])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_gemv_matches_ref(group, dtype, magic):
    x, w, s, z = _int4_case(1, 37, 640, group, dtype, seed=group)  # 640/group groups: a ragged last step
    w[0, :2] = torch.tensor([0x0F, 0xF0], dtype=torch.uint8)  # codes 15, 0, 0, 15
    ref = qm4.int4_weight_only_matmul_ref(x, w, s, z, group)
    _close(gemv.int4_gemv(x, w, s, z, group), ref, dtype)
    _close(_launch_int4(x, w, s, z, group, magic), ref, dtype)


def test_gemv_refuses_what_it_cannot_read():
    x, w, s = _int8_case(2, 8, 32, torch.float32, seed=5)
    with pytest.raises(ValueError, match=r"x: the GEMV kernels take one row \[1, K\], got shape \(2, 32\)"):
        gemv.int8_gemv(x, w, s)
    x, w, s = _int8_case(1, 8, 30, torch.float32, seed=5)
    with pytest.raises(ValueError, match="w_int8: the GEMV kernel reads 4-byte words"):
        gemv.int8_gemv(x, w, s)
    assert not gemv.gemv_supported(x, w)  # so the wrapper takes the split-K path instead
    torch.testing.assert_close(qm.int8_weight_only_matmul(x, w, s), qm.int8_weight_only_matmul_ref(x, w, s))


def test_wrappers_route_decode_rows_to_the_gemv(monkeypatch):
    calls = []
    monkeypatch.setattr(qm, "int8_gemv", lambda *a: calls.append("int8") or gemv.int8_gemv(*a))
    monkeypatch.setattr(qm4, "int4_gemv", lambda *a: calls.append("int4") or gemv.int4_gemv(*a))
    x, w, s = _int8_case(gemv.GEMV_MAX_M, 20, 64, torch.float32, seed=2)
    qm.int8_weight_only_matmul(x, w, s)
    x4, w4, s4, z4 = _int4_case(1, 20, 64, 32, torch.float32, seed=3)
    qm4.int4_weight_only_matmul(x4, w4, s4, z4, 32)
    x5, w5, s5 = _int8_case(gemv.GEMV_MAX_M + 1, 20, 64, torch.float32, seed=4)
    qm.int8_weight_only_matmul(x5, w5, s5)  # one row too many: the split-K path
    assert calls == ["int8", "int4"]


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_gemv_real_size(m, dtype):
    x, w, s = _int8_case(m, 4096, 4096, dtype, seed=m, device="cuda")
    _close(gemv.int8_gemv(x, w, s), qm.int8_weight_only_matmul_ref(x, w, s), dtype)
    x, w, s, z = _int4_case(m, 4096, 4096, 128, dtype, seed=m, device="cuda")
    _close(gemv.int4_gemv(x, w, s, z, 128), qm4.int4_weight_only_matmul_ref(x, w, s, z, 128), dtype)
