"""Paged-decode kernel (through the interpreter on CPU) against its reference and a dense cache.

The engine's PyTorch attention (SDPA decode, prefill) is tested in tests/engine/test_attention.py.
"""
import zlib

import pytest
import torch

from tutx.kernels.paged_decode import (check_block_tables, check_paged_metadata, paged_decode_attention,
                                       paged_decode_attention_ref)
from tutx.kernels.decode import decode_attention_ref


def make_paged(b, hq, hkv, d, block_size, lengths, spare_blocks=3, dtype=torch.float32, device="cpu"):
    """A dense cache ``[B, Hkv, S_max, D]`` and the same tokens scattered over a shuffled block pool."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr((b, hq, hkv, d, block_size, lengths)).encode()))
    s_max = max(lengths)
    q = torch.randn(b, hq, d, generator=gen)  # [B, Hq, D]
    k_dense = torch.randn(b, hkv, s_max, d, generator=gen)  # [B, Hkv, S_max, D]
    v_dense = torch.randn(b, hkv, s_max, d, generator=gen)
    pages = [-(-n // block_size) for n in lengths]
    num_blocks = sum(pages) + spare_blocks
    perm = torch.randperm(num_blocks, generator=gen).tolist()  # blocks handed out in random order
    k_pool = torch.randn(num_blocks, block_size, hkv, d, generator=gen) * 100  # garbage where unused
    v_pool = torch.full((num_blocks, block_size, hkv, d), float("nan"))
    width = max(pages) + 1  # one padding column for everybody
    tables = torch.full((b, width), -1, dtype=torch.int32)
    for i, n in enumerate(lengths):
        for p in range(pages[i]):
            blk = perm.pop()
            tables[i, p] = blk
            rows = slice(p * block_size, min(n, (p + 1) * block_size))
            k_pool[blk, : rows.stop - rows.start] = k_dense[i, :, rows].transpose(0, 1)
            v_pool[blk, : rows.stop - rows.start] = v_dense[i, :, rows].transpose(0, 1)
    # Slots past a sequence's length hold garbage (and NaN for V): they must never be read.
    lens = torch.tensor(lengths, dtype=torch.int32)
    cast = lambda x: x.to(device=device, dtype=dtype)  # noqa: E731
    return (cast(q), cast(k_pool), cast(v_pool), tables.to(device), lens.to(device),
            cast(k_dense), cast(v_dense))


CASES = [  # B, Hq, Hkv, D, block_size, lengths
    (3, 4, 4, 32, 16, [1, 37, 16]),  # GQA ratio 1 (MHA), one token, a full block, a tail
    (2, 8, 2, 64, 16, [70, 5]),  # GQA ratio 4
    (2, 4, 1, 48, 5, [23, 11]),  # MQA, odd block size, head dim not a power of two
    (1, 2, 2, 16, 3, [7]),  # tiny odd pages
]


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("b,hq,hkv,d,block_size,lengths", CASES)
def test_kernel_matches_ref_and_dense(b, hq, hkv, d, block_size, lengths, num_splits):
    q, k_pool, v_pool, tables, lens, k_dense, v_dense = make_paged(b, hq, hkv, d, block_size, lengths)
    out = paged_decode_attention(q, k_pool, v_pool, tables, lens, num_splits=num_splits)
    assert out.shape == q.shape and out.dtype == q.dtype
    ref = paged_decode_attention_ref(q, k_pool, v_pool, tables, lens)
    dense = decode_attention_ref(q, k_dense, v_dense, lens)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(ref, dense, atol=1e-5, rtol=0)


def test_default_splits_int64_tables_and_scale():
    q, k_pool, v_pool, tables, lens, k_dense, v_dense = make_paged(2, 4, 2, 32, 8, [45, 9])
    out = paged_decode_attention(q, k_pool, v_pool, tables.long(), lens.long(), sm_scale=0.3)
    torch.testing.assert_close(out, decode_attention_ref(q, k_dense, v_dense, lens, sm_scale=0.3), atol=1e-5, rtol=0)


def test_bad_inputs_raise():
    q, k_pool, v_pool, tables, lens, _, _ = make_paged(2, 4, 2, 32, 8, [10, 3])
    with pytest.raises(ValueError, match="lengths"):
        paged_decode_attention(q, k_pool, v_pool, tables, torch.tensor([10, 0], dtype=torch.int32))
    with pytest.raises(ValueError, match="lengths"):
        paged_decode_attention(q, k_pool, v_pool, tables, torch.tensor([10, 999], dtype=torch.int32))
    bad = tables.clone()
    bad[0, 0] = k_pool.shape[0]
    with pytest.raises(ValueError, match="block_tables"):
        paged_decode_attention(q, k_pool, v_pool, bad, lens)
    with pytest.raises(TypeError, match="block_tables"):
        check_paged_metadata(tables.float(), lens, k_pool.shape[0], 8)
    with pytest.raises(ValueError, match="k_pool"):
        paged_decode_attention(q, k_pool[..., :1, :].expand(-1, -1, 3, -1), v_pool[..., :1, :].expand(-1, -1, 3, -1),
                               tables, lens)
    with pytest.raises(ValueError, match="block_tables"):
        paged_decode_attention(q, k_pool, v_pool, tables[:1], lens)
    with pytest.raises(TypeError, match="v_pool"):
        paged_decode_attention(q, k_pool, v_pool.half(), tables, lens)
    with pytest.raises(ValueError, match="num_splits"):
        paged_decode_attention(q, k_pool, v_pool, tables, lens, num_splits=0)


def test_check_block_tables_on_lists_agrees_with_the_tensor_check():
    """The engine checks its Python lists (no device sync); the tensor check syncs once."""
    good = ([[3, 1], [0, -1]], [5, 4])
    check_block_tables(*good, num_blocks=4, block_size=4)
    check_paged_metadata(torch.tensor(good[0]), torch.tensor(good[1]), 4, 4)
    for tables, lengths, match in [([[3, 1], [0, -1]], [9, 4], r"block_tables\[0\]"),  # too short
                                   ([[3, 4], [0, -1]], [5, 4], r"block_tables\[0\]"),  # block 4 of 4
                                   ([[3, 1], [-1, 0]], [5, 4], r"block_tables\[1\]"),  # padding used
                                   ([[3, 1], [0, -1]], [5, 0], r"block_tables\[1\]")]:  # empty
        with pytest.raises(ValueError, match=match):
            check_block_tables(tables, lengths, 4, 4)
        with pytest.raises(ValueError, match="row|lengths"):
            check_paged_metadata(torch.tensor(tables), torch.tensor(lengths), 4, 4)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_on_gpu(dtype):
    if dtype == torch.bfloat16 and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 needs sm_80+")
    q, k_pool, v_pool, tables, lens, _, _ = make_paged(4, 32, 8, 128, 16, [1, 300, 1000, 77], dtype=dtype,
                                                       device="cuda")
    out = paged_decode_attention(q, k_pool, v_pool, tables, lens)
    ref = paged_decode_attention_ref(q.float(), k_pool.float(), v_pool.float(), tables, lens)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
