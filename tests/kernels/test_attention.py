"""FlashAttention kernel (forward + backward) against the PyTorch reference.

On CPU the kernels run through Triton's interpreter (tests/conftest.py), in fp32, at small odd
shapes that exercise masked tails, GQA/MQA, causal alignment with S_q < S_k and the padded head
dims. The ``gpu`` tests run fp16/bf16 at realistic sizes on a CUDA machine.
"""
import importlib.util
import pathlib
import re
import zlib

import pytest
import torch

import tutx.kernels.attention as attention_mod
from tutx.kernels import _attention_common as common
from tutx.kernels.attention import flash_attention, flash_attention_ref

ROOT = pathlib.Path(__file__).resolve().parents[2]


def make_qkv(b, hq, hkv, s_q, s_k, d, dtype=torch.float32, device="cpu", grad=True):
    """Random q, k, v from a seed derived from the shape (a fresh seed per case, reproducible)."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr((b, hq, hkv, s_q, s_k, d)).encode()))
    q = torch.randn(b, hq, s_q, d, generator=gen)  # [B, Hq, S_q, D]
    k = torch.randn(b, hkv, s_k, d, generator=gen)  # [B, Hkv, S_k, D]
    v = torch.randn(b, hkv, s_k, d, generator=gen)  # [B, Hkv, S_k, D]
    return [x.to(device=device, dtype=dtype).requires_grad_(grad) for x in (q, k, v)]


def grads(out, inputs, seed=0):
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return torch.autograd.grad(out, inputs, do)


def assert_matches_ref(q, k, v, causal, sm_scale=None, atol=1e-5, grad_atol=1e-4):
    out = flash_attention(q, k, v, causal=causal, sm_scale=sm_scale)
    ref = flash_attention_ref(q, k, v, causal=causal, sm_scale=sm_scale)
    assert out.shape == ref.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    for name, g, g_ref in zip("qkv", grads(out, (q, k, v)), grads(ref, (q, k, v))):
        assert g.shape == g_ref.shape, name
        torch.testing.assert_close(g, g_ref, atol=grad_atol, rtol=0, msg=lambda m, n=name: f"d{n}: {m}")
    return out


CASES = [  # B, Hq, Hkv, S_q, S_k, D, causal
    (1, 2, 2, 1, 1, 32, False),
    (2, 2, 1, 17, 17, 32, True),  # MQA
    (1, 4, 2, 63, 63, 64, False),  # GQA 2
    (1, 4, 2, 63, 63, 64, True),
    (1, 2, 2, 130, 130, 32, True),  # many blocks, ragged tail
    (1, 4, 1, 20, 70, 32, True),  # chunked prefill: S_q < S_k, aligned to the end
    (1, 4, 4, 33, 50, 32, False),  # S_q < S_k, not causal
    (1, 2, 1, 1, 37, 64, True),  # one new token against a cache
    (1, 2, 2, 17, 40, 128, False),
    (1, 2, 1, 33, 33, 128, True),
    (1, 8, 1, 24, 24, 32, True),  # GQA ratio 8
]


@pytest.mark.parametrize("b,hq,hkv,s_q,s_k,d,causal", CASES)
def test_forward_and_backward_match_reference(b, hq, hkv, s_q, s_k, d, causal):
    assert_matches_ref(*make_qkv(b, hq, hkv, s_q, s_k, d), causal)


def _random_case(seed):
    """A random shape (odd lengths, any GQA ratio, causal with S_q <= S_k) from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    pick = lambda *options: options[torch.randint(len(options), (1,), generator=gen).item()]  # noqa: E731
    hkv, group, d, causal = pick(1, 2), pick(1, 2, 4), pick(32, 64, 128), pick(False, True)
    s_k = int(torch.randint(1, 150, (1,), generator=gen))
    s_q = int(torch.randint(1, (s_k if causal else 149) + 1, (1,), generator=gen))
    return pick(1, 2), hkv * group, hkv, s_q, s_k, d, causal


@pytest.mark.parametrize("seed", range(6))
def test_random_shapes_match_reference(seed):
    b, hq, hkv, s_q, s_k, d, causal = _random_case(1000 + seed)
    assert_matches_ref(*make_qkv(b, hq, hkv, s_q, s_k, d), causal)


def test_kernel_path_is_taken_under_the_interpreter():
    q, k, v = make_qkv(1, 2, 1, 9, 9, 32)
    assert "KernelAttention" in type(flash_attention(q, k, v).grad_fn).__name__


@pytest.mark.parametrize("d", [16, 48])
def test_other_head_dims_are_zero_padded(d):
    out = assert_matches_ref(*make_qkv(1, 2, 1, 19, 19, d), causal=True)
    assert out.shape[-1] == d


def test_custom_scale_and_strided_inputs():
    gen = torch.Generator().manual_seed(7)
    qkv = torch.randn(2, 21, 3, 4, 32, generator=gen)  # [B, S, 3, H, D], like a fused projection
    q, k, v = (qkv[:, :, i].transpose(1, 2).requires_grad_() for i in range(3))  # [B, H, S, D] views
    assert not q.is_contiguous()
    assert_matches_ref(q, k, v, causal=True, sm_scale=0.3)
    v_cols = torch.randn(1, 2, 32, 15, generator=gen).transpose(-1, -2).requires_grad_()  # stride(-1) != 1
    q2, k2, _ = make_qkv(1, 2, 2, 15, 15, 32)
    assert_matches_ref(q2, k2, v_cols, causal=False)


def test_large_scores_do_not_overflow():
    q, k, v = make_qkv(1, 1, 1, 40, 40, 32, grad=False)
    out = flash_attention(q * 30, k * 30, v, causal=True)
    torch.testing.assert_close(out, flash_attention_ref(q * 30, k * 30, v, causal=True), atol=1e-4, rtol=0)


def test_cpu_without_interpreter_runs_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = make_qkv(1, 4, 2, 10, 12, 32)
    out = flash_attention(q, k, v, causal=True)
    assert "KernelAttention" not in type(out.grad_fn).__name__
    assert torch.equal(out, flash_attention_ref(q, k, v, causal=True))


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_backend_has_the_same_semantics(causal):
    q, k, v = make_qkv(2, 4, 2, 11, 19, 32, grad=False)
    torch.testing.assert_close(flash_attention(q, k, v, causal=causal, backend="sdpa"),
                               flash_attention_ref(q, k, v, causal=causal), atol=1e-5, rtol=0)


def test_auto_backend_takes_the_kernel_where_it_runs_and_sdpa_elsewhere(monkeypatch):
    q, k, v = make_qkv(1, 4, 2, 9, 13, 32, grad=False)
    calls = []
    monkeypatch.setattr(attention_mod, "_sdpa", lambda *a: calls.append("sdpa") or attention_mod.flash_attention_ref(*a))
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # CPU without the interpreter: SDPA
    flash_attention(q, k, v, causal=True, backend="auto")
    assert calls == ["sdpa"]
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter runs the kernel
    torch.testing.assert_close(flash_attention(q, k, v, causal=True, backend="auto"),
                               flash_attention_ref(q, k, v, causal=True), atol=1e-5, rtol=0)
    assert calls == ["sdpa"]


def test_reference_takes_a_mask():
    from tutx.kernels.masks import causal_mask

    q, k, v = make_qkv(1, 2, 1, 7, 11, 32, grad=False)
    keep = torch.rand(7, 11, generator=torch.Generator().manual_seed(0)) < 0.5
    keep[:, -1] = True  # every query keeps a key
    out = flash_attention_ref(q, k, v, mask=keep)
    scores = (q @ k.transpose(-2, -1)) / 32 ** 0.5  # [1, 2, 7, 11]
    expected = torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ v
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert torch.equal(flash_attention_ref(q, k, v, causal=True),
                       flash_attention_ref(q, k, v, mask=causal_mask(7, 11)))
    with pytest.raises(ValueError, match=r"mask: expected None or a bool tensor of shape \(7, 11\)"):
        flash_attention_ref(q, k, v, mask=keep[:, :5])


def _bad(**changes):
    """Arguments of a valid call with some of them replaced."""
    q, k, v = make_qkv(1, 4, 2, 8, 8, 32, grad=False)
    args = dict(q=q, k=k, v=v, causal=False, sm_scale=None, backend="triton")
    args.update({name: fn(args) if callable(fn) else fn for name, fn in changes.items()})
    return args


BAD_INPUTS = [
    (dict(q=lambda a: a["q"].numpy()), TypeError, "q: expected a torch.Tensor"),
    (dict(q=lambda a: a["q"][0]), ValueError, "q: expected 4 dimensions"),
    (dict(k=lambda a: a["k"][:, :, :0]), ValueError, "k: expected every dimension >= 1"),
    (dict(q=lambda a: a["q"].long()), TypeError, "q: expected dtype float16"),
    (dict(k=lambda a: a["k"].double()), TypeError, "k: expected the dtype of q"),
    (dict(v=lambda a: a["v"].to("meta")), ValueError, "v: expected the device of q"),
    (dict(v=lambda a: a["v"][:, :, :5]), ValueError, "v: expected the shape of k"),
    (dict(k=lambda a: a["k"].expand(2, -1, -1, -1), v=lambda a: a["v"].expand(2, -1, -1, -1)),
     ValueError, "k: expected batch 1"),
    (dict(k=lambda a: a["k"][..., :16], v=lambda a: a["v"][..., :16]), ValueError, "k: expected head_dim 32"),
    (dict(k=lambda a: a["k"].repeat(1, 2, 1, 1)[:, :3], v=lambda a: a["v"].repeat(1, 2, 1, 1)[:, :3]),
     ValueError, "k: expected a number of heads dividing q's 4"),
    (dict(k=lambda a: a["k"][:, :, :5], v=lambda a: a["v"][:, :, :5], causal=True), ValueError, "S_q <= S_k"),
    (dict(q=lambda a: a["q"].repeat(1, 1, 1, 5), k=lambda a: a["k"].repeat(1, 1, 1, 5),
          v=lambda a: a["v"].repeat(1, 1, 1, 5)), ValueError, "head_dim: expected at most 128"),
    (dict(causal=1), TypeError, "causal: expected a bool"),
    (dict(sm_scale="0.1"), TypeError, "sm_scale: expected a number"),
    (dict(sm_scale=-1.0), ValueError, "sm_scale: expected a number > 0"),
    (dict(sm_scale=float("nan")), ValueError, "sm_scale: expected a finite number"),
    (dict(backend="xformers"), ValueError, "backend: expected one of ('auto', 'triton', 'sdpa', 'flash_attn')"),
]


def _flash_attn_installed():
    return importlib.util.find_spec("flash_attn") is not None


@pytest.mark.skipif(_flash_attn_installed(), reason="flash-attn is installed")
def test_flash_attn_backend_says_how_to_install_it():
    with pytest.raises(ImportError, match=re.escape("pip install 'tutx[flash]'")):
        flash_attention(**_bad(backend="flash_attn"))


@pytest.mark.skipif(not _flash_attn_installed(), reason="flash-attn is not installed (an optional extra)")
def test_flash_attn_backend_refuses_cpu_tensors():
    with pytest.raises(ValueError, match="CUDA tensors only"):
        flash_attention(**_bad(backend="flash_attn"))


@pytest.mark.parametrize("changes,error,message", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(changes, error, message):
    with pytest.raises(error, match=re.escape(message)):
        flash_attention(**_bad(**changes))


def test_reference_checks_its_inputs_too():
    q, k, v = make_qkv(1, 4, 2, 8, 5, 32, grad=False)
    with pytest.raises(ValueError, match="S_q <= S_k"):
        flash_attention_ref(q, k, v, causal=True)


def test_kernel_dtype_rules_per_device():
    common.check_kernel_dtype(torch.float32, "cpu", None)  # interpreter: fp32 is fine
    common.check_kernel_dtype(torch.bfloat16, "cuda", (8, 0))
    common.check_kernel_dtype(torch.float16, "cuda", (7, 5))
    with pytest.raises(TypeError, match="float16 or bfloat16, got torch.float32"):
        common.check_kernel_dtype(torch.float32, "cuda", (9, 0))
    with pytest.raises(TypeError, match="compute capability >= 8.0, this one is 7.5"):
        common.check_kernel_dtype(torch.bfloat16, "cuda", (7, 5))


def test_padded_head_dims():
    assert [common.padded_head_dim(d) for d in (8, 32, 33, 64, 80, 128)] == [32, 32, 64, 64, 128, 128]


# ---- on a real GPU ---------------------------------------------------------------------------

GPU_CASES = [  # B, Hq, Hkv, S_q, S_k, D, causal
    (2, 8, 8, 1024, 1024, 128, False),
    (2, 8, 8, 1024, 1024, 128, True),
    (2, 8, 2, 1000, 1000, 64, True),
    (1, 8, 1, 300, 1100, 128, True),
    (3, 4, 4, 77, 513, 32, False),
]


def _rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,hq,hkv,s_q,s_k,d,causal", GPU_CASES)
def test_gpu_matches_reference(b, hq, hkv, s_q, s_k, d, causal, dtype):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs sm_80+")
    q, k, v = make_qkv(b, hq, hkv, s_q, s_k, d, dtype=dtype, device="cuda")
    out = flash_attention(q, k, v, causal=causal)
    ref = flash_attention_ref(*(x.float() for x in (q, k, v)), causal=causal)
    assert out.dtype == dtype and _rel_err(out, ref) < 2e-2
    qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = flash_attention_ref(qf, kf, vf, causal=causal)
    for name, g, g_ref in zip("qkv", grads(out, (q, k, v)), grads(ref, (qf, kf, vf))):
        assert g.dtype == dtype and _rel_err(g, g_ref) < 2e-2, name


@pytest.mark.gpu
def test_gpu_refuses_fp32():
    q, k, v = make_qkv(1, 2, 2, 16, 16, 64, device="cuda", grad=False)
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        flash_attention(q, k, v)
