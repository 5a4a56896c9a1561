"""KVCache: prefill and decode appends land where decode_attention reads them; bad input is refused."""
import pytest
import torch

from tutx.attention import KVCache
from tutx.scaling import kv_cache_bytes


def make(layers=2, batch=2, heads=2, s_max=8, d=4, dtype=torch.float32):
    return KVCache(layers, batch, heads, s_max, d, dtype=dtype)


def step(cache, s, fill=1.0):
    """Append ``s`` positions to every layer (one model step); returns the last layer's result."""
    shape = (cache.batch, cache.num_kv_heads, s, cache.head_dim)
    for layer in range(cache.num_layers):
        out = cache.append(layer, torch.full(shape, fill + layer, dtype=cache.dtype),
                           torch.full(shape, -fill - layer, dtype=cache.dtype))
    return out


def test_prefill_then_decode_fills_positions_in_order():
    cache = make()
    assert cache.keys[0].shape == (2, 2, 8, 4) and cache.lengths.dtype == torch.int32
    keys, values, lengths = step(cache, 3, fill=1.0)  # prefill 3 positions
    assert keys is cache.keys[1] and values is cache.values[1]
    assert lengths.tolist() == [3, 3] and cache.lengths.tolist() == [3, 3] and cache.seq_len == 3
    _, _, lengths = step(cache, 1, fill=10.0)  # decode one position
    assert lengths.tolist() == [4, 4] and cache.seq_len == 4
    assert torch.all(cache.keys[0][:, :, :3] == 1.0) and torch.all(cache.keys[0][:, :, 3] == 10.0)
    assert torch.all(cache.values[1][:, :, 3] == -11.0) and torch.all(cache.keys[1][:, :, 4:] == 0)


def test_lengths_grow_only_when_the_last_layer_has_appended():
    cache = make(layers=3)
    k = torch.ones(2, 2, 5, 4)
    _, _, lengths = cache.append(0, k, k)
    assert lengths.tolist() == [5, 5]  # what layer 0 attends over
    assert cache.seq_len == 0 and cache.lengths.tolist() == [0, 0]  # not committed yet
    cache.append(1, k, k)
    cache.append(2, k, k)
    assert cache.seq_len == 5 and cache.lengths.tolist() == [5, 5]


def test_nbytes_counts_only_kv_heads_and_matches_scaling():
    cache = make(layers=5, batch=3, heads=2, s_max=16, d=32, dtype=torch.float16)
    expected = 2 * 5 * 3 * 2 * 16 * 32 * 2
    assert cache.nbytes == expected == kv_cache_bytes(5, 2, 32, 3, 16, 2)
    assert cache.nbytes == sum(t.numel() * t.element_size() for t in cache.keys + cache.values)


def test_for_model_reads_a_llama_config():
    from tutx.models import tiny_config

    cache = KVCache.for_model(tiny_config(), batch=2, max_seq_len=10)
    assert (cache.num_layers, cache.num_kv_heads, cache.head_dim) == (5, 2, 32)


def test_reset_and_repr():
    cache = make()
    step(cache, 3)
    text = repr(cache)
    for part in ("layers=2", "batch=2", "kv_heads=2", "head_dim=4", "[B, Hkv, S_max, D]", "torch.float32",
                 "used=3/8", f"nbytes={cache.nbytes}", "KiB"):
        assert part in text, part
    cache.reset()
    assert cache.seq_len == 0 and cache.lengths.tolist() == [0, 0] and "used=0/8" in repr(cache)
    step(cache, 8)  # a reset cache holds max_seq_len positions again


def test_overflow_is_an_error_not_a_truncation():
    cache = make(s_max=8)
    step(cache, 6)
    with pytest.raises(ValueError, match=r"appending 3 positions to 6 cached ones exceeds max_seq_len=8"):
        step(cache, 3)
    cache.reset()
    with pytest.raises(ValueError, match="max_seq_len=8"):
        step(cache, 9)


@pytest.mark.parametrize("shape, dtype, err, match", [
    ((3, 2, 1, 4), torch.float32, ValueError, "k: expected batch 2 .* got 3"),
    ((2, 8, 1, 4), torch.float32, ValueError, "k: expected 2 KV heads .* got 8"),
    ((2, 2, 1, 5), torch.float32, ValueError, "k: expected head_dim 4 .* got 5"),
    ((2, 2, 1, 4), torch.float16, TypeError, "k: expected dtype torch.float32 .* got torch.float16"),
    ((2, 2, 4), torch.float32, ValueError, r"k: expected 4 dimensions \[B, Hkv, S, D\]"),
    ((2, 2, 0, 4), torch.float32, ValueError, "at least one new position"),
])
def test_bad_appends(shape, dtype, err, match):
    cache = make()
    x = torch.zeros(shape, dtype=dtype)
    with pytest.raises(err, match=match):
        cache.append(0, x, x)
    assert cache.seq_len == 0  # nothing was written


def test_bad_append_arguments():
    cache = make(layers=2)
    k = torch.zeros(2, 2, 3, 4)
    with pytest.raises(TypeError, match="k: expected a torch.Tensor"):
        cache.append(0, [1.0], k)
    with pytest.raises(ValueError, match="v: expected the shape of k"):
        cache.append(0, k, torch.zeros(2, 2, 2, 4))
    with pytest.raises(ValueError, match="layer: expected an int <= 1, got 2"):
        cache.append(2, k, k)
    with pytest.raises(ValueError, match="layer: expected layer 0 .* got 1"):
        cache.append(1, k, k)
    cache.append(0, k, k)
    with pytest.raises(ValueError, match="k: expected 3 new positions .* got 1"):
        cache.append(1, k[:, :, :1], k[:, :, :1])


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(num_layers=0), ValueError, "num_layers: expected an int >= 1, got 0"),
    (dict(batch=1.5), TypeError, "batch: expected an int"),
    (dict(max_seq_len=True), TypeError, "max_seq_len: expected an int"),
    (dict(dtype=torch.int8), TypeError, "dtype: expected a floating-point"),
])
def test_bad_constructor_arguments(kwargs, err, match):
    args = dict(num_layers=1, batch=1, num_kv_heads=1, max_seq_len=4, head_dim=4) | kwargs
    with pytest.raises(err, match=match):
        KVCache(**args)
