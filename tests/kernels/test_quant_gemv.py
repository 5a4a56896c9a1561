"""The decode-shaped (GEMV) kernels against the references: every row count 1-8, odd sizes, all groups."""
import pytest
import torch

from tutx.kernels import quant_gemv as gemv
from tutx.kernels import quant_matmul as qm
from tutx.kernels import quant_matmul_int4 as qm4

from test_quant_matmul import DEVICE, DTYPES, _close, _int4_case, _int8_case


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int8_gemv_matches_ref(m, dtype):
    x, w, s = _int8_case(m, 45, 200, dtype, seed=10 + m)  # N, K not multiples of any block
    _close(gemv.int8_gemv(x, w, s), qm.int8_weight_only_matmul_ref(x, w, s), dtype)


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_gemv_matches_ref(m, group, dtype):
    x, w, s, z = _int4_case(m, 37, 640, group, dtype, seed=m * group)  # 640/group groups: a ragged last step
    _close(gemv.int4_gemv(x, w, s, z, group), qm4.int4_weight_only_matmul_ref(x, w, s, z, group), dtype)


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


def test_gemv_refuses_more_than_eight_rows():
    x, w, s = _int8_case(9, 8, 32, torch.float32, seed=5)
    with pytest.raises(ValueError, match="x: the GEMV kernels take 1 to 8 rows, got 9"):
        gemv.int8_gemv(x, w, s)


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 2, 4, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gpu_gemv_real_size(m, dtype):
    x, w, s = _int8_case(m, 4096, 4096, dtype, seed=m, device="cuda")
    _close(gemv.int8_gemv(x, w, s), qm.int8_weight_only_matmul_ref(x, w, s), dtype)
    x, w, s, z = _int4_case(m, 4096, 4096, 128, dtype, seed=m, device="cuda")
    _close(gemv.int4_gemv(x, w, s, z, 128), qm4.int4_weight_only_matmul_ref(x, w, s, z, 128), dtype)
