import pytest
import torch

# torch.quantize_per_* are deprecated upstream; they remain the reference we check against.
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")

from tutx.quant import primitives as P


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("gran", [dict(), dict(axis=0), dict(axis=1), dict(group_size=32), dict(group_size=64),
                                  dict(group_size=128)])
def test_roundtrip_error_is_at_most_half_a_step(bits, symmetric, gran):
    x = _rand(24, 256, seed=bits + 2 * symmetric)
    q = P.quantize(x, bits, symmetric=symmetric, **gran)
    assert q.data.shape == x.shape
    assert q.data.dtype == (torch.int8 if symmetric else torch.uint8)
    qmin, qmax = P.qrange(bits, symmetric)
    assert int(q.data.min()) >= qmin and int(q.data.max()) <= qmax
    scale_full = P.broadcast_qparams(q.scale, x, q.axis, q.group_size)
    err = (q.dequantize() - x).abs()
    assert bool((err <= scale_full / 2 + 1e-6).all())  # min-max range: nothing is clipped


def test_scale_shapes_and_repr():
    x = _rand(8, 64)
    assert P.quantize(x).scale.shape == ()
    assert P.quantize(x, axis=0).scale.shape == (8,)
    q = P.quantize(x, 4, symmetric=False, group_size=32)
    assert q.scale.shape == (8, 2) and q.zero_point.shape == (8, 2) and q.zero_point.dtype == torch.int32
    assert repr(q) == "QTensor(shape=(8, 64), int4, asymmetric, per-group(group_size=32), scale=(8, 2))"
    assert "per-channel(axis=0)" in repr(P.quantize(x, axis=0)) and "int8, symmetric" in repr(P.quantize(x))


def test_symmetric_uses_restricted_range_so_max_and_minus_max_are_exact():
    x = torch.tensor([[-2.0, 0.5, 2.0, 1.2]])
    q = P.quantize(x, 4, axis=0)
    assert q.data.tolist() == [[-7, 2, 7, 4]]
    assert q.dequantize()[0, [0, 2]].tolist() == [-2.0, 2.0]


def test_zero_is_exact_for_asymmetric_and_positive_only_data():
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, 0.3]])
    q = P.quantize(x, 8, symmetric=False, axis=0)
    assert q.zero_point.tolist() == [0]
    assert q.dequantize()[0, 0].item() == 0.0


@pytest.mark.parametrize("bits", [4, 8])
def test_per_channel_codes_match_torch_quantize_per_channel(bits):
    x = _rand(16, 200, seed=3) * torch.linspace(0.1, 5, 16)[:, None]
    q = P.quantize(x, bits, symmetric=False, axis=0)
    ref = torch.quantize_per_channel(x, q.scale.double(), q.zero_point.long(), 0, torch.quint8)
    assert torch.equal(ref.int_repr(), q.data)
    qs = P.quantize(x, bits, symmetric=True, axis=1)
    ref = torch.quantize_per_channel(x, qs.scale.double(), torch.zeros(200, dtype=torch.long), 1, torch.qint8)
    assert torch.equal(ref.int_repr(), qs.data)
    assert torch.allclose(ref.dequantize(), qs.dequantize())


def test_per_tensor_matches_torch_quantize_per_tensor():
    x = _rand(33, 17, seed=4)
    q = P.quantize(x, 8, symmetric=False)
    ref = torch.quantize_per_tensor(x, q.scale.item(), int(q.zero_point), torch.quint8)
    assert torch.equal(ref.int_repr(), q.data)


def test_groups_beat_channels_with_an_outlier():
    x = _rand(4, 256, seed=5)
    x[:, 7] = 40.0  # one outlier column
    err_ch = (P.fake_quantize(x, 4, axis=0) - x).pow(2).mean()
    err_g = (P.fake_quantize(x, 4, group_size=32) - x).pow(2).mean()
    assert err_g < err_ch / 4


def test_given_qparams_are_used_and_values_outside_are_clipped():
    x = torch.tensor([[-1.0, 0.0, 0.5, 10.0]])
    q = P.quantize(x, 8, axis=0, scale=torch.tensor([1 / 127]))
    assert q.data.tolist() == [[-127, 0, 64, 127]]
    with pytest.raises(ValueError, match="scale: expected shape"):
        P.quantize(x, 8, axis=0, scale=torch.tensor([1.0, 1.0]))
    with pytest.raises(ValueError, match="zero_point: must be None"):
        P.quantize(x, 8, axis=0, scale=torch.tensor([1.0]), zero_point=torch.tensor([0]))
    with pytest.raises(ValueError, match="zero_point: asymmetric"):
        P.quantize(x, 8, symmetric=False, axis=0, scale=torch.tensor([1.0]))
    with pytest.raises(ValueError, match=r"zero_point: values must lie in \[0, 15\]"):
        P.quantize(x, 4, symmetric=False, axis=0, scale=torch.tensor([1.0]), zero_point=torch.tensor([16]))
    with pytest.raises(ValueError, match="scale: every scale must be > 0"):
        P.quantize(x, 8, axis=0, scale=torch.tensor([0.0]))


@pytest.mark.parametrize("kwargs, match", [
    (dict(bits=3), r"bits: expected one of \(4, 8\), got 3"),
    (dict(group_size=48), r"group_size: 48 does not divide the last dimension \(64\)"),
    (dict(group_size=0), "group_size: expected an int >= 1, got 0"),
    (dict(axis=2), "axis: expected None or an int"),
    (dict(axis=0, group_size=32), "axis: per-group"),
])
def test_bad_scheme_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        P.quantize(torch.randn(4, 64), **kwargs)


def test_a_wrong_type_is_a_type_error():
    with pytest.raises(TypeError, match=r"bits: expected an int, got True \(bool\)"):
        P.quantize(torch.randn(4, 64), bits=True)
    with pytest.raises(TypeError, match="group_size: expected an int"):
        P.quantize(torch.randn(4, 64), group_size=32.0)


def test_bad_inputs():
    with pytest.raises(ValueError, match="x: expected a floating-point tensor, got dtype torch.int64"):
        P.quantize(torch.arange(8))
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        P.quantize([1.0, 2.0])
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        P.quantize(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        P.quantize(torch.tensor([1.0, float("inf")]))
    with pytest.raises(ValueError, match="x: cannot choose a scale for an empty tensor"):
        P.quantize(torch.empty(0, 4))
    with pytest.raises(TypeError, match="q: expected a QTensor"):
        P.dequantize(torch.zeros(2))


def test_qtensor_validates_its_fields():
    with pytest.raises(ValueError, match="data: symmetric codes are int8"):
        P.QTensor(torch.zeros(2, 4, dtype=torch.uint8), torch.ones(2), None, 8, axis=0)
    with pytest.raises(ValueError, match="data: asymmetric codes are uint8"):
        P.QTensor(torch.zeros(2, 4, dtype=torch.int8), torch.ones(2), torch.zeros(2, dtype=torch.int32), 8, axis=0)
    with pytest.raises(ValueError, match=r"scale: expected shape \(2,\)"):
        P.QTensor(torch.zeros(2, 4, dtype=torch.int8), torch.ones(3), None, 8, axis=0)
    with pytest.raises(ValueError, match=r"bits: expected one of \(4, 8\), got 2"):
        P.QTensor(torch.zeros(2, 4, dtype=torch.int8), torch.ones(()), None, 2)


def test_pack_unpack_roundtrip_and_nibble_order():
    codes = torch.tensor([[1, 2, 15, 0]], dtype=torch.uint8)
    packed = P.pack_int4(codes)
    assert packed.tolist() == [[0x21, 0x0F]]  # element 0 low nibble, element 1 high nibble
    assert torch.equal(P.unpack_int4(packed), codes)
    g = torch.Generator().manual_seed(6)
    u = torch.randint(0, 16, (5, 3, 64), generator=g, dtype=torch.uint8)
    assert P.pack_int4(u).shape == (5, 3, 32)
    assert torch.equal(P.unpack_int4(P.pack_int4(u)), u)
    s = torch.randint(-8, 8, (7, 32), generator=g, dtype=torch.int8)
    assert torch.equal(P.unpack_int4(P.pack_int4(s), signed=True), s)
    assert P.pack_int4(torch.tensor([-1, -8], dtype=torch.int8)).tolist() == [0x8F]


def test_pack_matches_torch_quint4x2_storage():
    x = _rand(4, 16, seed=7)
    q = P.quantize(x, 4, symmetric=False, axis=0)
    ref = torch.quantize_per_channel(x, q.scale.double(), q.zero_point.long(), 0, torch.quint8)
    assert torch.equal(ref.int_repr(), q.data)
    t = torch.quantize_per_tensor(torch.arange(8.0), 1.0, 0, torch.quint4x2)
    assert torch.equal(t.int_repr(), P.pack_int4(torch.arange(8, dtype=torch.uint8)))


def test_pack_unpack_errors():
    with pytest.raises(ValueError, match="codes: the last dimension must be even"):
        P.pack_int4(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"codes: torch.uint8 4-bit codes must lie in \[0, 15\]"):
        P.pack_int4(torch.tensor([16, 0], dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"codes: torch.int8 4-bit codes must lie in \[-8, 7\]"):
        P.pack_int4(torch.tensor([8, 0], dtype=torch.int8))
    with pytest.raises(ValueError, match="codes: expected int8 or uint8"):
        P.pack_int4(torch.zeros(2))
    with pytest.raises(ValueError, match="packed: expected dtype torch.uint8"):
        P.unpack_int4(torch.zeros(2, dtype=torch.int8))
