import pytest
import torch
from torch.ao.quantization import MinMaxObserver as TorchMinMax
from torch.ao.quantization import PerChannelMinMaxObserver as TorchPerChannel

from tutx.quant import primitives as P
from tutx.quant.observers import MinMaxObserver, MSEObserver, PercentileObserver

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _batches(n, *shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) * (i + 1) for i in range(n)]


@pytest.mark.parametrize("bits", [4, 8])
def test_minmax_asymmetric_matches_torch_observer(bits):
    ours, ref = MinMaxObserver(bits, symmetric=False), TorchMinMax(
        dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=2**bits - 1)
    for b in _batches(3, 50, seed=bits):
        ours.update(b)
        ref(b)
    scale, zp = ours.qparams()
    r_scale, r_zp = ref.calculate_qparams()
    assert torch.allclose(scale, r_scale.reshape(()), rtol=1e-6) and int(zp) == int(r_zp)


@pytest.mark.parametrize("bits", [4, 8])
def test_minmax_symmetric_matches_torch_with_the_restricted_range(bits):
    qmax = 2 ** (bits - 1) - 1
    ours = MinMaxObserver(bits, symmetric=True)
    ref = TorchMinMax(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric, quant_min=-qmax, quant_max=qmax)
    for b in _batches(2, 40, seed=10 + bits):
        ours(b)
        ref(b)
    scale, zp = ours.qparams()
    assert zp is None
    assert torch.allclose(scale, ref.calculate_qparams()[0].reshape(()), rtol=1e-6)


@pytest.mark.parametrize("bits", [4, 8])
def test_per_channel_matches_torch_per_channel_observer(bits):
    ours = MinMaxObserver(bits, symmetric=False, axis=1)
    ref = TorchPerChannel(ch_axis=1, dtype=torch.quint8, qscheme=torch.per_channel_affine,
                          quant_min=0, quant_max=2**bits - 1)
    for b in _batches(3, 7, 12, seed=20 + bits):
        ours(b)
        ref(b)
    scale, zp = ours.qparams()
    r_scale, r_zp = ref.calculate_qparams()
    assert scale.shape == (12,)
    assert torch.allclose(scale, r_scale, rtol=1e-6) and torch.equal(zp, r_zp.to(torch.int32))
    x = _batches(1, 7, 12, seed=30)[0]
    q = ours.quantize(x)
    r = torch.quantize_per_channel(x, r_scale.double(), r_zp.long(), 1, torch.quint8)
    assert torch.equal(q.data, r.int_repr().clamp(max=2**bits - 1))  # torch's quint8 clips at 255 only


def test_per_group_observer_gives_group_scales():
    obs = MinMaxObserver(4, symmetric=False, group_size=32)
    w = _batches(1, 6, 128, seed=3)[0]
    obs(w)
    scale, zp = obs.qparams()
    assert scale.shape == (6, 4) and zp.shape == (6, 4)
    direct = P.quantize(w, 4, symmetric=False, group_size=32)
    assert torch.equal(obs.quantize(w).data, direct.data)


def test_percentile_clips_outliers_and_beats_minmax_on_the_bulk():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20000, generator=g)
    x[:5] = 80.0  # rare outliers
    pct = PercentileObserver(8, percentile=99.9).update(x)
    mm = MinMaxObserver(8).update(x)
    assert pct.qparams()[0] < mm.qparams()[0] / 10
    bulk = x[5:]
    err_pct = (pct.quantize(bulk).dequantize() - bulk).pow(2).mean()
    err_mm = (mm.quantize(bulk).dequantize() - bulk).pow(2).mean()
    assert err_pct < err_mm / 10


def test_percentile_asymmetric_averages_over_batches():
    b1, b2 = torch.linspace(0, 1, 1001), torch.linspace(0, 3, 1001)
    obs = PercentileObserver(8, percentile=100, symmetric=False).update(b1).update(b2)
    scale, zp = obs.qparams()
    assert torch.allclose(scale, torch.tensor(2.0 / 255)) and int(zp) == 0


@pytest.mark.parametrize("bits", [4, 8])
def test_mse_observer_minimises_error_and_never_loses_to_minmax(bits):
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(8, 256, generator=g) ** 3  # heavy tails: clipping helps
    mse = MSEObserver(bits, axis=0).update(w)
    mm = MinMaxObserver(bits, axis=0).update(w)
    e_mse = (mse.quantize(w).dequantize() - w).pow(2).mean(1)
    e_mm = (mm.quantize(w).dequantize() - w).pow(2).mean(1)
    assert bool((e_mse <= e_mm + 1e-9).all())
    if bits == 4:  # at 8 bits min-max is already close to optimal on 256 values
        assert e_mse.mean() < 0.9 * e_mm.mean()
        assert bool((mse.qparams()[0] <= mm.qparams()[0]).all()) and bool((mse.qparams()[0] < mm.qparams()[0]).any())


def test_mse_observer_asymmetric_per_group():
    w = _batches(1, 4, 64, seed=8)[0]
    obs = MSEObserver(4, symmetric=False, group_size=32, grid=20).update(w)
    scale, zp = obs.qparams()
    assert scale.shape == (4, 2) and zp.dtype == torch.int32
    e = (obs.quantize(w).dequantize() - w).pow(2).mean()
    e_mm = (P.fake_quantize(w, 4, symmetric=False, group_size=32) - w).pow(2).mean()
    assert e <= e_mm + 1e-9


def test_observer_errors():
    with pytest.raises(ValueError, match="observer: no data observed yet"):
        MinMaxObserver().qparams()
    with pytest.raises(ValueError, match=r"bits: expected one of \(4, 8\), got 16"):
        MinMaxObserver(16)
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        MinMaxObserver().update(torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="x: cannot observe an empty tensor"):
        MinMaxObserver().update(torch.empty(0))
    with pytest.raises(ValueError, match="x: expected a floating-point tensor"):
        MinMaxObserver().update(torch.ones(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="x: shape .* does not match"):
        MinMaxObserver(axis=0).update(torch.ones(3, 4)).update(torch.ones(5, 4))
    with pytest.raises(ValueError, match="group_size: 48 does not divide"):
        MinMaxObserver(group_size=48).update(torch.ones(2, 64))
    with pytest.raises(ValueError, match="percentile: expected a number <= 100, got 120"):
        PercentileObserver(percentile=120)
    with pytest.raises(ValueError, match="grid: expected an int >= 2"):
        MSEObserver(grid=1)
    with pytest.raises(ValueError, match=r"min_ratio: expected a probability in \(0, 1\)"):
        MSEObserver(min_ratio=1.5)
    with pytest.raises(TypeError, match="symmetric: expected a bool"):
        MinMaxObserver(symmetric="yes")


def test_observer_repr():
    assert repr(MSEObserver(4, axis=0)) == "MSEObserver(bits=4, symmetric, axis=0, group_size=None)"
