"""Quantized linear modules: accuracy, shapes, memory, repr, errors, and kernel == reference inside a module."""
import pytest
import torch
from torch import nn

from tutx.quant import (
    Int4WeightOnly,
    Int4WeightOnlyLinear,
    Int8DynActInt8WeightLinear,
    Int8WeightOnlyLinear,
    model_weight_bytes,
    quantize_per_token,
)


@pytest.fixture
def reference_path(monkeypatch):
    """Run modules through the PyTorch reference (no interpreter): fast model-level tests on CPU."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def _linear(k, n, bias=True, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(k, n, bias=bias)
    return lin


def _rel_err(y, ref):
    return ((y.float() - ref.float()).norm() / ref.float().norm()).item()


MAKERS = {
    "int8": lambda lin: Int8WeightOnlyLinear.from_linear(lin),
    "int4-g32": lambda lin: Int4WeightOnlyLinear.from_linear(lin, Int4WeightOnly(32)),
    "int4-g128": lambda lin: Int4WeightOnlyLinear.from_linear(lin, Int4WeightOnly(128)),
    "w8a8": lambda lin: Int8DynActInt8WeightLinear.from_linear(lin),
}
TOLERANCE = {"int8": 0.01, "int4-g32": 0.12, "int4-g128": 0.15, "w8a8": 0.02}  # relative L2 error of outputs


@pytest.mark.parametrize("kind", list(MAKERS))
def test_outputs_close_to_the_float_linear(kind, reference_path):
    lin = _linear(256, 96, seed=1)
    x = torch.randn(2, 5, 256)  # leading dims are flattened and restored
    q = MAKERS[kind](lin)
    y = q(x)
    assert y.shape == (2, 5, 96) and y.dtype == x.dtype
    assert _rel_err(y, lin(x).detach()) < TOLERANCE[kind]
    w_err = _rel_err(q.dequantize_weight(), lin.weight.detach())
    assert w_err < TOLERANCE[kind]


@pytest.mark.parametrize("kind", list(MAKERS))
def test_kernel_path_matches_reference_path_inside_the_module(kind, monkeypatch):
    lin = _linear(128, 40, seed=2)
    q = MAKERS[kind](lin)
    x = torch.randn(3, 128)
    y_kernel = q(x)  # TRITON_INTERPRET=1 from conftest (or CUDA): the Triton kernel
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    torch.testing.assert_close(y_kernel, q(x), rtol=1e-5, atol=1e-5)


def test_bias_is_kept_and_optional(reference_path):
    lin = _linear(64, 8, bias=True, seed=3)
    q = Int8WeightOnlyLinear.from_linear(lin)
    assert torch.equal(q.bias, lin.bias.detach())
    q0 = Int4WeightOnlyLinear.from_linear(_linear(64, 8, bias=False), Int4WeightOnly(32))
    assert q0.bias is None and q0(torch.randn(1, 64)).shape == (1, 8)


def test_bf16_module_runs_in_bf16(reference_path):
    lin = _linear(128, 16, seed=4).to(torch.bfloat16)
    q = Int4WeightOnlyLinear.from_linear(lin, Int4WeightOnly(64))
    x = torch.randn(4, 128, dtype=torch.bfloat16)
    y = q(x)
    assert y.dtype == torch.bfloat16 and q.bias.dtype == torch.bfloat16
    assert _rel_err(y, lin(x).detach()) < 0.15


def test_reprs():
    assert repr(Int4WeightOnlyLinear(256, 64, group_size=128)) == \
        "Int4WeightOnlyLinear(in=256, out=64, group_size=128)"
    assert repr(Int8WeightOnlyLinear(32, 16, bias=False)) == "Int8WeightOnlyLinear(in=32, out=16, bias=False)"
    assert repr(Int8DynActInt8WeightLinear(32, 16)) == "Int8DynActInt8WeightLinear(in=32, out=16)"


def test_memory_really_shrinks():
    model = nn.Sequential(*[nn.Linear(256, 256, bias=False) for _ in range(3)])
    fp32 = model_weight_bytes(model)
    int8 = nn.Sequential(*[Int8WeightOnlyLinear.from_linear(m) for m in model])
    int4 = nn.Sequential(*[Int4WeightOnlyLinear.from_linear(m, Int4WeightOnly(128)) for m in model])
    assert fp32 == 3 * 256 * 256 * 4
    assert fp32 / model_weight_bytes(int8) > 3.9  # int8 + one fp32 scale per row
    assert fp32 / model_weight_bytes(int4) > 7.0  # 4 bits + fp32 scale and uint8 zero per 128 weights
    assert model_weight_bytes(int4, linear_only=True) == model_weight_bytes(int4)


def test_model_weight_bytes_counts_shared_tensors_once_and_linear_only():
    emb = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied
    model = nn.ModuleDict({"emb": emb, "head": head, "norm": nn.LayerNorm(4)})
    assert model_weight_bytes(model) == (40 + 8) * 4
    assert model_weight_bytes(model, linear_only=True) == 40 * 4
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        model_weight_bytes(torch.zeros(3))


def test_per_token_activation_quantization():
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 0.0, 0.0], [100.0, 1.0, -50.0]])
    q, s = quantize_per_token(x)
    assert q.dtype == torch.int8 and s.shape == (3,)
    assert q[0].tolist() == [64, -127, 32] and q[1].tolist() == [0, 0, 0]
    assert torch.allclose(q.float() * s[:, None], x, atol=(s.max() / 2).item())


def test_errors():
    with pytest.raises(ValueError, match="in_features: 96 of 'linear' is not divisible by group_size=64"):
        Int4WeightOnlyLinear.from_linear(nn.Linear(96, 8), Int4WeightOnly(64))
    with pytest.raises(ValueError, match="in_features: 96 is not divisible by group_size=64"):
        Int4WeightOnlyLinear(96, 8, group_size=64)
    with pytest.raises(ValueError, match="group_size: expected one of"):
        Int4WeightOnlyLinear(128, 8, group_size=16)
    bad = nn.Linear(32, 4)
    with torch.no_grad():
        bad.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"linear\.weight: contains NaN or Inf"):
        Int8WeightOnlyLinear.from_linear(bad)
    with pytest.raises(TypeError, match="linear: expected an nn.Linear"):
        Int8WeightOnlyLinear.from_linear(nn.Conv1d(3, 3, 1))
    with pytest.raises(ValueError, match="meta device"):
        Int8WeightOnlyLinear.from_linear(nn.Linear(32, 4, device="meta"))
    with pytest.raises(ValueError, match=r"x: expected last dimension 32, got shape \(2, 16\)"):
        Int8WeightOnlyLinear.from_linear(nn.Linear(32, 4))(torch.randn(2, 16))
    with pytest.raises(ValueError, match="out_features: expected an int >= 1, got 0"):
        Int8WeightOnlyLinear(32, 0)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", list(MAKERS))
def test_gpu_modules_match_cpu_reference(kind, monkeypatch):
    lin = _linear(4096, 1024, seed=5)
    q = MAKERS[kind](lin)
    x = torch.randn(7, 4096)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    ref = q(x)
    qc = q.to("cuda")
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 3e-2)):  # bf16 x: rounded inputs and outputs
        assert _rel_err(qc(x.to("cuda", dtype)).cpu(), ref) < tol
