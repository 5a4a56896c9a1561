"""Sliding-window + global attention: kernel vs dense-mask reference, and the blocks it visits."""
import zlib

import pytest
import torch

from tutx.kernels.attention import flash_attention_ref
from tutx.kernels.masks import sliding_window_mask
from tutx.kernels.sliding_window import (
    sliding_window_attention,
    sliding_window_attention_kernel,
    sliding_window_attention_ref,
    sliding_window_forward,
)


def make_qkv(b, hq, hkv, s_q, s_k, d, dtype=torch.float32, device="cpu", grad=True):
    gen = torch.Generator().manual_seed(zlib.crc32(repr(("swa", b, hq, hkv, s_q, s_k, d)).encode()))
    shapes = [(b, hq, s_q, d), (b, hkv, s_k, d), (b, hkv, s_k, d)]  # q, k, v
    return [torch.randn(s, generator=gen).to(device=device, dtype=dtype).requires_grad_(grad) for s in shapes]


CASES = [  # (B, Hq, Hkv, S_q, S_k, D), window, num_global_tokens, causal
    ((1, 2, 1, 50, 50, 32), 1, 0, True),  # only the diagonal
    ((1, 2, 1, 50, 50, 32), 5, 3, True),
    ((1, 2, 1, 50, 50, 32), 7, 0, False),
    ((1, 2, 1, 50, 50, 32), 4, 20, False),  # global rows/keys span two blocks
    ((2, 4, 2, 23, 61, 32), 20, 3, True),  # S_q < S_k: queries aligned to the end
    ((1, 2, 2, 23, 61, 64), 9, 0, False),
    ((1, 2, 1, 37, 37, 128), 16, 1, True),
    ((1, 2, 2, 20, 20, 48), 100, 0, True),  # window wider than the sequence == dense causal
    ((1, 2, 1, 130, 130, 32), 60, 2, True),  # windows of several blocks: the unmasked middle stage runs
    ((1, 2, 2, 100, 120, 32), 48, 0, False),
]


@pytest.mark.parametrize("shape,window,n_global,causal", CASES)
def test_forward_and_backward_match_reference(shape, window, n_global, causal):
    q, k, v = make_qkv(*shape)
    out = sliding_window_attention(q, k, v, window, n_global, causal)
    ref = sliding_window_attention_ref(q, k, v, window, n_global, causal)
    fns = [out.grad_fn] + [f for f, _ in out.grad_fn.next_functions]  # past the head-dim slice, if any
    assert any("KernelAttention" in type(f).__name__ for f in fns)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    for g, g_ref in zip(torch.autograd.grad(out, (q, k, v), do), torch.autograd.grad(ref, (q, k, v), do)):
        torch.testing.assert_close(g, g_ref, atol=1e-4, rtol=0)


def test_wide_window_is_dense_causal_attention():
    q, k, v = make_qkv(1, 2, 1, 30, 30, 32, grad=False)
    torch.testing.assert_close(sliding_window_attention(q, k, v, window=30),
                               flash_attention_ref(q, k, v, causal=True), atol=1e-5, rtol=0)


def test_mask_pattern():
    mask = sliding_window_mask(6, 6, window=2, num_global_tokens=1, causal=True)
    expected = torch.tensor([[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [1, 0, 1, 1, 0, 0],
                             [1, 0, 0, 1, 1, 0],
                             [1, 0, 0, 0, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)
    both_ways = sliding_window_mask(4, 4, window=2, num_global_tokens=1, causal=False)
    assert both_ways[0].all() and both_ways[:, 0].all() and not both_ways[3, 1]


def _needed_blocks(mask, block_m, block_n):
    """Per query block, the number of key blocks holding at least one attended pair."""
    s_q, s_k = mask.shape
    n_m, n_n = -(-s_q // block_m), -(-s_k // block_n)
    padded = torch.zeros(n_m * block_m, n_n * block_n, dtype=torch.bool)
    padded[:s_q, :s_k] = mask
    return padded.view(n_m, block_m, n_n, block_n).any(dim=(1, 3)).sum(dim=1)  # [n_m]


@pytest.mark.parametrize("s_q,s_k,window,n_global,causal", [
    (200, 200, 20, 0, True), (200, 200, 20, 5, True), (200, 200, 10, 0, False),
    (200, 200, 10, 18, False), (90, 200, 33, 2, True), (200, 200, 64, 3, True),
])
def test_kernel_visits_only_the_blocks_it_needs(s_q, s_k, window, n_global, causal):
    q, k, v = make_qkv(1, 1, 1, s_q, s_k, 32, grad=False)
    out, _, visits = sliding_window_forward(q, k, v, window, n_global, causal, 32 ** -0.5, count_blocks=True)
    torch.testing.assert_close(out, sliding_window_attention_ref(q, k, v, window, n_global, causal),
                               atol=1e-5, rtol=0)
    cfg = sliding_window_attention_kernel.best_config.kwargs
    mask = sliding_window_mask(s_q, s_k, window, n_global, causal)
    needed = _needed_blocks(mask, cfg["BLOCK_M"], cfg["BLOCK_N"])
    assert torch.equal(visits[0, 0].cpu(), needed.int())
    dense = _needed_blocks(sliding_window_mask(s_q, s_k, s_k, 0, causal), cfg["BLOCK_M"], cfg["BLOCK_N"])
    if n_global == 0:  # the band costs O(S * W): far fewer blocks than dense attention
        assert visits.sum() * 2 < dense.sum()


def test_cpu_without_interpreter_runs_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k, v = make_qkv(1, 2, 1, 12, 12, 32)
    assert torch.equal(sliding_window_attention(q, k, v, 4, 1), sliding_window_attention_ref(q, k, v, 4, 1))


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(window=0), ValueError, "window: expected an int >= 1"),
    (dict(window=2.5), TypeError, "window: expected an int"),
    (dict(window=True), TypeError, "window: expected an int"),
    (dict(window=4, num_global_tokens=-1), ValueError, "num_global_tokens: expected an int >= 0"),
    (dict(window=4, causal=False, s_k=5), ValueError, "S_q <= S_k"),
    (dict(window=4, causal=True, s_k=5), ValueError, "S_q <= S_k"),
    (dict(window=4, causal="yes"), TypeError, "causal: expected a bool"),
    (dict(window=4, sm_scale=0), ValueError, "sm_scale"),
])
def test_bad_input_gets_a_clear_error(kwargs, error, message):
    q, k, v = make_qkv(1, 2, 1, 8, kwargs.pop("s_k", 8), 32, grad=False)
    with pytest.raises(error, match=message):
        sliding_window_attention(q, k, v, **kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("window,n_global,causal", [(256, 0, True), (100, 4, True), (64, 16, False)])
def test_gpu_matches_reference(dtype, window, n_global, causal):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs sm_80+")
    q, k, v = make_qkv(2, 8, 2, 1000, 1000, 128, dtype=dtype, device="cuda")
    out = sliding_window_attention(q, k, v, window, n_global, causal)
    qf, kf, vf = (x.detach().float().requires_grad_() for x in (q, k, v))
    ref = sliding_window_attention_ref(qf, kf, vf, window, n_global, causal)
    do = torch.randn_like(ref)
    pairs = [(out, ref)] + list(zip(torch.autograd.grad(out, (q, k, v), do.to(dtype)),
                                    torch.autograd.grad(ref, (qf, kf, vf), do)))
    for got, want in pairs:
        err = (got.float() - want).abs().max() / want.abs().max()
        assert got.dtype == dtype and err < 2e-2
