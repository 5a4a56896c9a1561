"""The linear kernels of tutx/kernels/csrc/linear_cpu.c against F.linear (and SiLU-and-multiply)."""
import pytest
import torch

from tutx.kernels import cpu_build
from tutx.kernels.linear_cpu import (NR, few_rows_limit, linear_cpu, linear_ref, linear_silu_cpu, linear_silu_ref,
                                     pack_gated, pack_weight, pad_bias, vector_bits)

pytestmark = pytest.mark.skipif(cpu_build.compiler() is None, reason="no C compiler to build the CPU kernel")


def make(m, n, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)


@pytest.mark.parametrize("m", [1, 5, 6, 7, 13, 48, 70])  # below, at and past a 6-row block
@pytest.mark.parametrize("n,k", [(64, 32), (384, 256), (100, 33), (1, 7), (130, 640)])  # full and partial tiles
@pytest.mark.parametrize("with_bias", [False, True], ids=["no-bias", "bias"])
def test_matches_f_linear(m, n, k, with_bias):
    x, w, b = make(m, n, k)
    packed = pack_weight(w)
    assert packed.shape == (-(-n // NR), k, NR)
    bias = b if with_bias else None
    out = linear_cpu(x, packed, n, pad_bias(bias, packed))
    assert out.shape == (m, n) and out.dtype == torch.float32
    torch.testing.assert_close(out, linear_ref(x, w, bias), atol=1e-4, rtol=1e-5)


def test_rows_apart_and_threads():
    x, w, _ = make(20, 192, 64, seed=1)
    wide = torch.cat([x, torch.full((20, 10), float("nan"))], dim=1)[:, :64]  # rows 74 apart
    packed, ref = pack_weight(w), linear_ref(x, w)
    n = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.testing.assert_close(linear_cpu(wide, packed, 192), ref, atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(linear_cpu(x.t().contiguous().t(), packed, 192), ref, atol=1e-4, rtol=1e-5)
    finally:
        torch.set_num_threads(n)


def test_bad_inputs_raise():
    x, w, b = make(4, 100, 32)
    packed = pack_weight(w)
    with pytest.raises(TypeError, match=r"^weight: "):
        pack_weight(w.double())
    with pytest.raises(TypeError, match=r"^x: "):
        linear_cpu(x[0], packed, 100)
    with pytest.raises(ValueError, match=r"^x: expected 32 input features"):
        linear_cpu(x[:, :31], packed, 100)
    with pytest.raises(ValueError, match=r"^out_features: "):
        linear_cpu(x, packed, 129)
    with pytest.raises(ValueError, match=r"^packed: "):
        linear_cpu(x, w.view(100, 32, 1), 100)
    with pytest.raises(ValueError, match=r"^bias: "):
        linear_cpu(x, packed, 100, b)  # not padded


def test_few_rows_limit_follows_the_vector_width():
    if vector_bits() >= 512:
        assert few_rows_limit(256) is None and few_rows_limit(768) is None
    else:
        assert few_rows_limit(256) == 48 and few_rows_limit(768) == 12


def _cpu_flags() -> set:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


@pytest.mark.parametrize("march,flag", [("haswell", "avx2"), ("x86-64", "sse2")], ids=["avx2", "sse"])
def test_narrower_vector_builds_match_f_linear(tmp_path, march, flag):
    """The kernel as built for CPUs without AVX-512 (6 x 2 blocks of 8 or 4 floats) gives F.linear's
    products too; built here by hand for an older x86 target and run on this CPU."""
    import ctypes
    import subprocess

    if flag not in _cpu_flags():
        pytest.skip(f"needs an x86 CPU with {flag}")
    obj, lib_path = tmp_path / f"linear_{march}.o", tmp_path / f"linear_{march}.so"
    cc, flags = cpu_build.compiler(), [f for f in cpu_build.COMPILE_FLAGS if f != "-march=native"]
    # compiled and linked apart, as cpu_build does: linked with -ffast-math, the library would set
    # flush-to-zero for the whole process when loaded (crtfastmath.o)
    subprocess.run([cc, *flags, f"-march={march}", "-c", str(cpu_build.CSRC / "linear_cpu.c"), "-o", str(obj)],
                   check=True, capture_output=True)
    subprocess.run([cc, str(obj), "-o", str(lib_path), *cpu_build.LINK_FLAGS], check=True, capture_output=True)
    lib = ctypes.CDLL(str(lib_path))
    assert lib.tutx_linear_vector_bits() == (256 if march == "haswell" else 128)
    P, I = ctypes.c_void_p, ctypes.c_int64
    lib.tutx_linear_f32.argtypes = [P, I, P, P, P, I, I, I, I, ctypes.c_int]
    for m, n, k in [(1, 64, 32), (7, 384, 256), (13, 100, 33), (50, 130, 640)]:
        x, w, b = make(m, n, k, seed=m)
        packed, bias = pack_weight(w), pad_bias(b, pack_weight(w))
        y = torch.empty(m, n)
        lib.tutx_linear_f32(x.data_ptr(), k, packed.data_ptr(), bias.data_ptr(), y.data_ptr(), n, m, n, k, 2)
        torch.testing.assert_close(y, linear_ref(x, w, b), atol=1e-4, rtol=1e-5)
    lib.tutx_linear_silu_f32.argtypes = [P, I, P, P, I, I, I, I, ctypes.c_int]
    for m, i, k in [(1, 32, 16), (7, 640, 256), (13, 70, 33)]:  # the gated kernel too
        x, w, _ = make(m, 2 * i, k, seed=m)
        y, packed = torch.empty(m, i), pack_gated(w)
        lib.tutx_linear_silu_f32(x.data_ptr(), k, packed.data_ptr(), y.data_ptr(), i, m, i, k, 2)
        ref = linear_silu_ref(x, w[:i], w[i:])
        torch.testing.assert_close(y, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)


@pytest.mark.parametrize("m", [1, 6, 7, 48, 70])
@pytest.mark.parametrize("i,k", [(32, 16), (640, 256), (100, 33), (1, 7), (70, 640)])  # full and partial tiles
def test_linear_silu_matches_the_reference(m, i, k):
    g = torch.Generator().manual_seed(i + k)
    x, wg, wu = torch.randn(m, k, generator=g), torch.randn(i, k, generator=g), torch.randn(i, k, generator=g)
    packed = pack_gated(torch.cat([wg, wu]))
    assert packed.shape == (-(-i // (NR // 2)), k, NR)
    out, ref = linear_silu_cpu(x, packed, i), linear_silu_ref(x, wg, wu)
    assert out.shape == (m, i)
    torch.testing.assert_close(out, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)  # sums of k products


def test_linear_silu_extremes_and_bad_inputs():
    x = torch.tensor([[1.0]])
    gate = torch.tensor([[-1e4], [-80.0], [0.0], [3.0], [1e4], [float("nan")]])
    up = torch.full((6, 1), 2.0)
    out = linear_silu_cpu(x, pack_gated(torch.cat([gate, up])), 6)
    ref = linear_silu_ref(x, gate, up)
    torch.testing.assert_close(out[:, :5], ref[:, :5], atol=1e-30, rtol=1e-5)  # no NaN from exp(-large)
    assert out[0, 5].isnan()
    packed = pack_gated(torch.randn(8, 4))
    with pytest.raises(ValueError, match=r"^weight: expected \[2 I, K\]"):
        pack_gated(torch.randn(7, 4))
    with pytest.raises(ValueError, match=r"^x: expected 4 input features"):
        linear_silu_cpu(torch.randn(2, 5), packed, 4)
    with pytest.raises(ValueError, match=r"^intermediate: "):
        linear_silu_cpu(torch.randn(2, 4), packed, 40)
    with pytest.raises(TypeError, match=r"^x: "):
        linear_silu_cpu(torch.randn(2, 4).double(), packed, 4)


def test_loading_the_kernels_keeps_subnormal_floats():
    """Built with -ffast-math but linked without it: loading a kernel library must not turn on
    flush-to-zero for the whole process (hypothesis, numpy and torch then see 0 for subnormals)."""
    from tutx.kernels import linear_cpu as lc, llama_cpu_ops, paged_decode_cpu

    lc._lib(), llama_cpu_ops._lib(), paged_decode_cpu._kernel(32)
    tiny = torch.finfo(torch.float32).tiny
    assert (torch.tensor(tiny) / 2).item() > 0
