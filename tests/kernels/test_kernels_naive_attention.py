"""The seed's fused-attention kernel: right with one key block, wrong with more; the online-softmax fix is right."""
import pytest
import torch

from tutx.kernels.attention import flash_attention_ref
from tutx.kernels.seed_attention import naive_fused_attention, naive_fused_attention_ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _qkv(s_q, s_k, d=32, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, s, d, generator=g).to(DEVICE, dtype) for s in (s_q, s_k, s_k)]


def test_ref_is_exact_attention():
    q, k, v = _qkv(9, 13)
    torch.testing.assert_close(naive_fused_attention_ref(q, k, v), flash_attention_ref(q, k, v))


@pytest.mark.parametrize("online", [False, True])
def test_one_key_block_is_right_either_way(online):
    q, k, v = _qkv(19, 27, seed=1)  # 27 keys < block_n = 32: one block, so the per-block softmax is the softmax
    torch.testing.assert_close(naive_fused_attention(q, k, v, online=online), naive_fused_attention_ref(q, k, v),
                               atol=1e-5, rtol=1e-5)


def test_the_seed_bug_several_key_blocks_are_wrong():
    q, k, v = _qkv(19, 77, seed=2)  # 77 keys: three blocks of 32, each normalised on its own
    err = (naive_fused_attention(q, k, v) - naive_fused_attention_ref(q, k, v)).abs().max().item()
    assert err > 0.1, err
    with pytest.raises(AssertionError):
        torch.testing.assert_close(naive_fused_attention(q, k, v), naive_fused_attention_ref(q, k, v))


@pytest.mark.parametrize("d", [16, 64])
def test_the_fix_online_softmax_is_right(d):
    q, k, v = _qkv(21, 77, d=d, seed=d)
    torch.testing.assert_close(naive_fused_attention(q, k, v, online=True, block_n=16),
                               naive_fused_attention_ref(q, k, v), atol=1e-5, rtol=1e-5)


def test_naive_attention_bad_input():
    q, k, v = _qkv(4, 5)
    with pytest.raises(ValueError, match=r"v: expected the shape of k \(2, 3, 5, 32\), got \(2, 3, 4, 32\)"):
        naive_fused_attention(q, k, q)
    with pytest.raises(ValueError, match="q: head dim 24 not supported"):
        naive_fused_attention(*(t[..., :24] for t in (q, k, v)))
    with pytest.raises(ValueError, match="block_n: expected a power of two, got 48"):
        naive_fused_attention(q, k, v, block_n=48)
    with pytest.raises(TypeError, match="online"):
        naive_fused_attention(q, k, v, online=1)
    with pytest.raises(ValueError, match=r"q: expected 4 dimensions \[B, H, S, D\]"):
        naive_fused_attention(q[0], k, v)


@pytest.mark.gpu
def test_gpu_fix_at_a_real_length():
    q, k, v = _qkv(1024, 1024, d=64, dtype=torch.float16)
    ref = naive_fused_attention_ref(q, k, v).float()
    assert (naive_fused_attention(q, k, v, online=True).float() - ref).abs().max().item() < 1e-2
    assert (naive_fused_attention(q, k, v).float() - ref).abs().max().item() > 0.1
