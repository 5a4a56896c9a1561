"""GQAAttention and RoPE against Hugging Face Llama; cached steps against one full pass; KV head pooling."""
import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

import tutx.kernels.attention as attention_mod
import tutx.kernels.decode as decode_mod
from tutx.attention import GQAAttention, KVCache, RotaryEmbedding, apply_rope, pool_kv_heads
from tutx.attention.gqa import convert_kv_heads_
from tutx.kernels._dispatch import interpreter_enabled


@pytest.fixture
def reference_kernels(monkeypatch):
    """Run the kernels' PyTorch references (the interpreter is too slow for these sizes)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def config(num_kv_heads, theta=10000.0, heads=4, head_dim=8):
    return LlamaConfig(hidden_size=24, num_attention_heads=heads, num_key_value_heads=num_kv_heads,
                       head_dim=head_dim, intermediate_size=32, num_hidden_layers=1, vocab_size=16,
                       rope_parameters={"rope_type": "default", "rope_theta": theta},
                       attn_implementation="sdpa")


@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_rope_matches_hf_exactly(theta):
    cfg = config(2, theta)
    x = torch.randn(2, 7, 24)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [5, 6, 7, 8, 9, 10, 11]])
    ours, theirs = RotaryEmbedding(8, theta)(x, positions), LlamaRotaryEmbedding(cfg)(x, positions)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    assert ours[0].shape == (2, 7, 8)


def test_rope_keeps_scores_relative():
    rope = RotaryEmbedding(8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    x = torch.zeros(1, 1, 8)

    def score(pq, pk):
        qr, _ = apply_rope(q, q, *rope(x, torch.tensor([[pq]])))
        _, kr = apply_rope(k, k, *rope(x, torch.tensor([[pk]])))
        return (qr * kr).sum()

    torch.testing.assert_close(score(7, 3), score(104, 100))


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])  # MHA, GQA, MQA
@pytest.mark.parametrize("theta", [10000.0, 500000.0])
def test_matches_hf_llama_attention(num_kv_heads, theta, reference_kernels):
    torch.manual_seed(num_kv_heads)
    cfg = config(num_kv_heads, theta)
    hf = LlamaAttention(cfg, layer_idx=0).eval()
    ours = GQAAttention.from_hf(hf, cfg)
    assert ours.k_proj is hf.k_proj and ours.num_kv_heads == num_kv_heads
    x = torch.randn(2, 9, 24)
    cos_sin = LlamaRotaryEmbedding(cfg)(x, torch.arange(9)[None])
    expected, _ = hf(x, position_embeddings=cos_sin, attention_mask=None)  # SDPA, causal
    torch.testing.assert_close(ours(x), expected, rtol=1e-5, atol=1e-5)  # its own RoPE
    torch.testing.assert_close(ours(x, position_embeddings=cos_sin), expected, rtol=1e-5, atol=1e-5)


def run_cached(attn, x, chunks):
    """Feed ``x [B, S, hidden]`` through ``attn`` in chunks of the given sizes, with a cache."""
    cache = KVCache(1, x.shape[0], attn.num_kv_heads, 16, attn.head_dim)
    outs, start = [], 0
    for n in chunks:
        outs.append(attn(x[:, start:start + n], cache))
        start += n
    return torch.cat(outs, dim=1), cache


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
def test_prefill_chunks_and_decode_match_one_pass(num_kv_heads, reference_kernels):
    torch.manual_seed(0)
    attn = GQAAttention(24, 4, num_kv_heads, rope_theta=1000.0).eval()
    x = torch.randn(3, 11, 24)
    with torch.no_grad():
        full = attn(x)
        got, cache = run_cached(attn, x, [5, 3, 1, 1, 1])  # chunked prefill, then 3 decode steps
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    assert cache.seq_len == 11 and cache.keys[0].shape == (3, num_kv_heads, 16, 6)


@pytest.mark.skipif(not interpreter_enabled(), reason="needs TRITON_INTERPRET=1 (set by conftest on CPU)")
def test_kernel_path_matches_reference(monkeypatch):
    """Prefill and decode through the Triton kernels (interpreted on CPU), never their references."""
    torch.manual_seed(1)
    attn = GQAAttention(64, 4, 2).eval()  # head_dim 16
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        expected, _ = run_cached(attn, x, [4, 1, 1])
        monkeypatch.setattr(decode_mod, "decode_attention_ref", None)  # would fail if called
        monkeypatch.setattr(attention_mod, "flash_attention_ref", None)
        got, _ = run_cached(attn, x, [4, 1, 1])
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_kv_heads: expected a divisor of num_heads=8 .* got 3"):
        GQAAttention(64, 8, 3)
    with pytest.raises(ValueError, match="head_dim: None needs hidden_size=30 divisible by num_heads=4"):
        GQAAttention(30, 4, 2)
    with pytest.raises(ValueError, match="num_heads: expected an int >= 1, got 0"):
        GQAAttention(64, 0, 1)
    with pytest.raises(ValueError, match="rope_theta"):
        GQAAttention(64, 4, 2, rope_theta=-1.0)
    attn = GQAAttention(32, 4, 2)
    with pytest.raises(ValueError, match=r"x: expected a tensor \[B, S, 32\], got \(2, 3, 16\)"):
        attn(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="cache: expected 2 KV heads .* got a cache of 4"):
        attn(torch.randn(1, 3, 32), KVCache(1, 1, 4, 8, 8))
    with pytest.raises(ValueError, match="k: expected batch 2"):
        attn(torch.randn(1, 3, 32), KVCache(1, 2, 2, 8, 8))
    with pytest.raises(TypeError, match="k: expected dtype torch.float16"):
        attn(torch.randn(2, 3, 32), KVCache(1, 2, 2, 8, 8, dtype=torch.float16))
    cache = KVCache(1, 1, 2, 4, 8)
    with pytest.raises(ValueError, match="exceeds max_seq_len=4"):
        attn(torch.randn(1, 5, 32), cache)


def test_pool_kv_heads_means_groups_and_repeats_heads():
    w = torch.arange(4 * 3 * 5, dtype=torch.float32).reshape(4 * 3, 5)  # 4 KV heads of head_dim 3
    heads = w.reshape(4, 3, 5)
    two = pool_kv_heads(w, 4, 2)
    assert two.shape == (6, 5)
    torch.testing.assert_close(two[:3], (heads[0] + heads[1]) / 2)  # query heads of group 0 read heads 0, 1
    torch.testing.assert_close(two[3:], (heads[2] + heads[3]) / 2)
    torch.testing.assert_close(pool_kv_heads(w, 4, 1), heads.mean(0))  # MQA
    eight = pool_kv_heads(w, 4, 8).reshape(8, 3, 5)
    assert torch.equal(eight[0], heads[0]) and torch.equal(eight[1], heads[0]) and torch.equal(eight[7], heads[3])
    assert pool_kv_heads(torch.ones(12), 4, 2).shape == (6,)  # a bias
    assert torch.equal(pool_kv_heads(w, 4, 4), w)
    with pytest.raises(ValueError, match="new_kv_heads: expected a divisor or a multiple of num_kv_heads=4, got 3"):
        pool_kv_heads(w, 4, 3)
    with pytest.raises(ValueError, match="weight: expected a first dimension divisible by num_kv_heads=5"):
        pool_kv_heads(w, 5, 1)
    with pytest.raises(TypeError, match="weight: expected a tensor"):
        pool_kv_heads([1.0], 1, 1)


def test_convert_to_mha_is_exact_and_to_mqa_shrinks(reference_kernels):
    torch.manual_seed(2)
    attn = GQAAttention(32, 4, 2).eval()
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        before = attn(x)
        convert_kv_heads_(attn, 4)  # MHA: every query head gets its own copy of its KV head
        assert attn.num_kv_heads == 4 and attn.k_proj.out_features == 32
        torch.testing.assert_close(attn(x), before, rtol=1e-6, atol=1e-6)
        convert_kv_heads_(attn, 1)  # MQA
        assert attn.k_proj.weight.shape == (8, 32) and attn(x).shape == (2, 5, 32)
    with pytest.raises(ValueError, match="new_kv_heads: expected a divisor of num_heads=4, got 3"):
        convert_kv_heads_(attn, 3)
