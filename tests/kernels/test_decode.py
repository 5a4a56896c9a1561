"""Flash-decoding kernel (split keys + merge) against the PyTorch reference."""
import zlib

import pytest
import torch

from tutx.kernels import decode
from tutx.kernels.decode import decode_attention, decode_attention_ref, default_num_splits


def make_inputs(b, hq, hkv, s_max, d, lengths, dtype=torch.float32, device="cpu"):
    gen = torch.Generator().manual_seed(zlib.crc32(repr((b, hq, hkv, s_max, d, lengths)).encode()))
    q = torch.randn(b, hq, d, generator=gen)  # [B, Hq, D]
    k_cache = torch.randn(b, hkv, s_max, d, generator=gen)  # [B, Hkv, S_max, D]
    v_cache = torch.randn(b, hkv, s_max, d, generator=gen)  # [B, Hkv, S_max, D]
    q, k_cache, v_cache = (x.to(device=device, dtype=dtype) for x in (q, k_cache, v_cache))
    return q, k_cache, v_cache, torch.tensor(lengths, dtype=torch.int32, device=device)


CASES = [  # B, Hq, Hkv, S_max, D, lengths
    (3, 4, 2, 70, 64, [1, 70, 33]),  # GQA, length 1 and S_max
    (2, 4, 1, 100, 32, [100, 17]),  # MQA
    (1, 2, 2, 5, 128, [5]),
    (2, 2, 2, 40, 48, [40, 1]),  # head dim not a power of two
]


@pytest.mark.parametrize("num_splits", [1, 3, 8])
@pytest.mark.parametrize("b,hq,hkv,s_max,d,lengths", CASES)
def test_decode_matches_reference(b, hq, hkv, s_max, d, lengths, num_splits):
    q, k_cache, v_cache, lens = make_inputs(b, hq, hkv, s_max, d, lengths)
    out = decode_attention(q, k_cache, v_cache, lens, num_splits=num_splits)
    assert out.shape == q.shape and out.dtype == q.dtype
    torch.testing.assert_close(out, decode_attention_ref(q, k_cache, v_cache, lens), atol=1e-5, rtol=0)


def test_trusted_lengths_skip_the_check_not_the_result():
    q, k_cache, v_cache, lens = make_inputs(2, 4, 2, 40, 32, [7, 40])
    torch.testing.assert_close(decode_attention(q, k_cache, v_cache, lens, validate_lengths=False),
                               decode_attention(q, k_cache, v_cache, lens), atol=0, rtol=0)
    with pytest.raises(ValueError, match="lengths: expected values in"):
        decode_attention(q, k_cache, v_cache, lens + 1)  # 41 > S_max: caught when validating (the default)


def test_positions_past_the_length_are_ignored():
    q, k_cache, v_cache, lens = make_inputs(2, 2, 1, 50, 32, [20, 35])
    out = decode_attention(q, k_cache, v_cache, lens, num_splits=4)
    k_cache[0, :, 20:] = 1e4  # garbage beyond each sequence's length must not matter
    v_cache[1, :, 35:] = float("nan")
    torch.testing.assert_close(decode_attention(q, k_cache, v_cache, lens, num_splits=4), out, atol=1e-6, rtol=0)


def test_default_splits_int64_lengths_and_scale():
    q, k_cache, v_cache, lens = make_inputs(2, 4, 2, 600, 64, [600, 257])
    lens = lens.long()
    out = decode_attention(q, k_cache, v_cache, lens, sm_scale=0.2)
    ref = decode_attention_ref(q, k_cache, v_cache, lens, sm_scale=0.2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)


def test_matches_dense_attention_on_the_last_token():
    """Decode over a full cache is the last row of causal attention: the two kernels agree."""
    from tutx.kernels.attention import flash_attention_ref

    q, k_cache, v_cache, lens = make_inputs(1, 4, 2, 30, 32, [30])
    dense = flash_attention_ref(q[:, :, None], k_cache, v_cache, causal=True)  # [B, Hq, 1, D]
    torch.testing.assert_close(decode_attention(q, k_cache, v_cache, lens, num_splits=2), dense[:, :, 0],
                               atol=1e-5, rtol=0)


def test_default_num_splits_fills_the_gpu_without_tiny_chunks():
    assert default_num_splits(batch_heads=8, max_length=8192, num_sms=132) == 32  # 2 waves, 256+ keys each
    assert default_num_splits(batch_heads=1024, max_length=8192, num_sms=132) == 1  # already enough programs
    assert default_num_splits(batch_heads=1, max_length=100, num_sms=132) == 1  # short cache: one chunk
    assert default_num_splits(batch_heads=1, max_length=10**6, num_sms=132) == decode.MAX_SPLITS


def test_cpu_without_interpreter_runs_the_reference(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    q, k_cache, v_cache, lens = make_inputs(2, 4, 2, 30, 32, [3, 30])
    out = decode_attention(q, k_cache, v_cache, lens)
    assert torch.equal(out, decode_attention_ref(q, k_cache, v_cache, lens))


def _bad(**changes):
    q, k_cache, v_cache, lens = make_inputs(2, 4, 2, 16, 32, [4, 16])
    args = dict(q=q, k_cache=k_cache, v_cache=v_cache, lengths=lens, sm_scale=None, num_splits=None)
    args.update({name: fn(args) if callable(fn) else fn for name, fn in changes.items()})
    return args


BAD_INPUTS = [
    (dict(q=lambda a: a["q"][:, :, None]), ValueError, "q: expected 3 dimensions"),
    (dict(k_cache=[1.0]), TypeError, "k_cache: expected a torch.Tensor"),
    (dict(lengths=lambda a: a["lengths"][None]), ValueError, "lengths: expected 1 dimensions"),
    (dict(v_cache=lambda a: a["v_cache"].half()), TypeError, "v_cache: expected the dtype of q"),
    (dict(lengths=lambda a: a["lengths"].to("meta")), ValueError, "lengths: expected the device of q"),
    (dict(v_cache=lambda a: a["v_cache"][:, :, :8]), ValueError, "v_cache: expected the shape of k_cache"),
    (dict(k_cache=lambda a: a["k_cache"][:1], v_cache=lambda a: a["v_cache"][:1]), ValueError,
     "k_cache: expected batch 2"),
    (dict(lengths=lambda a: a["lengths"][:1]), ValueError, "lengths: expected batch 2"),
    (dict(k_cache=lambda a: a["k_cache"][..., :16], v_cache=lambda a: a["v_cache"][..., :16]), ValueError,
     "k_cache: expected head_dim 32"),
    (dict(q=lambda a: a["q"].repeat(1, 1, 9), k_cache=lambda a: a["k_cache"].repeat(1, 1, 1, 9),
          v_cache=lambda a: a["v_cache"].repeat(1, 1, 1, 9)), ValueError, "head_dim: expected at most 256"),
    (dict(k_cache=lambda a: a["k_cache"].repeat(1, 2, 1, 1)[:, :3],
          v_cache=lambda a: a["v_cache"].repeat(1, 2, 1, 1)[:, :3]),
     ValueError, "k_cache: expected a number of heads dividing"),
    (dict(lengths=lambda a: a["lengths"].float()), TypeError, "lengths: expected dtype int32 or int64"),
    (dict(lengths=torch.tensor([0, 4], dtype=torch.int32)), ValueError,
     r"lengths: expected values in \[1, S_max=16\], got min 0"),
    (dict(lengths=torch.tensor([4, 17], dtype=torch.int32)), ValueError, "got min 4, max 17"),
    (dict(num_splits=0), ValueError, "num_splits: expected an int >= 1"),
    (dict(num_splits=decode.MAX_SPLITS + 1), ValueError, "num_splits"),
    (dict(num_splits=2.0), TypeError, "num_splits: expected an int"),
    (dict(validate_lengths=1), TypeError, "validate_lengths: expected a bool"),
    (dict(sm_scale=0.0), ValueError, "sm_scale: expected a number > 0"),
]


@pytest.mark.parametrize("changes,error,message", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(changes, error, message):
    with pytest.raises(error, match=message):
        decode_attention(**_bad(**changes))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("num_splits", [None, 1, 7])
def test_gpu_matches_reference(dtype, num_splits):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs sm_80+")
    lengths = [1, 4096, 777, 3000]
    q, k_cache, v_cache, lens = make_inputs(4, 16, 4, 4096, 128, lengths, dtype=dtype, device="cuda")
    out = decode_attention(q, k_cache, v_cache, lens, num_splits=num_splits)
    ref = decode_attention_ref(q.float(), k_cache.float(), v_cache.float(), lens)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
