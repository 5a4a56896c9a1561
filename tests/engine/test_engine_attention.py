"""The engine's PyTorch attention (tutx/engine/attention.py): SDPA decode over a paged pool, prefill."""
import zlib

import pytest
import torch

from tutx.engine.attention import gather_kv, paged_decode_attention_sdpa, prefill_attention
from tutx.kernels.paged_decode import paged_decode_attention_ref


def make_paged(b, hq, hkv, d, block_size, lengths, spare_blocks=3):
    """q, a shuffled block pool holding every sequence's K/V (stale finite values elsewhere), tables, lengths,
    and the dense ``[B, Hkv, S_max, D]`` keys."""
    gen = torch.Generator().manual_seed(zlib.crc32(repr((b, hq, hkv, d, block_size, lengths)).encode()))
    q = torch.randn(b, hq, d, generator=gen)  # [B, Hq, D]
    k_dense = torch.randn(b, hkv, max(lengths), d, generator=gen)  # [B, Hkv, S_max, D]
    pages = [-(-n // block_size) for n in lengths]
    num_blocks = sum(pages) + spare_blocks
    perm = torch.randperm(num_blocks, generator=gen).tolist()
    k_pool = torch.randn(num_blocks, block_size, hkv, d, generator=gen) * 100  # stale where unused
    v_pool = torch.randn(num_blocks, block_size, hkv, d, generator=gen) * 7
    tables = torch.full((b, max(pages) + 1), -1, dtype=torch.int32)  # one padding column for everybody
    for i, n in enumerate(lengths):
        for p in range(pages[i]):
            blk = perm.pop()
            tables[i, p] = blk
            rows = slice(p * block_size, min(n, (p + 1) * block_size))
            k_pool[blk, : rows.stop - rows.start] = k_dense[i, :, rows].transpose(0, 1)
    return q, k_pool, v_pool, tables, torch.tensor(lengths, dtype=torch.int32), k_dense


CASES = [  # B, Hq, Hkv, D, block_size, lengths
    (3, 4, 4, 32, 16, [1, 37, 16]),  # GQA ratio 1 (MHA), one token, a full block, a tail
    (2, 8, 2, 64, 16, [70, 5]),  # GQA ratio 4
    (2, 4, 1, 48, 5, [23, 11]),  # MQA, odd block size, head dim not a power of two
    (1, 2, 2, 16, 3, [7]),  # tiny odd pages
]


@pytest.mark.parametrize("b,hq,hkv,d,block_size,lengths", CASES)
def test_sdpa_path_matches_the_reference_on_finite_pools(b, hq, hkv, d, block_size, lengths):
    q, k_pool, v_pool, tables, lens, _ = make_paged(b, hq, hkv, d, block_size, lengths)
    out = paged_decode_attention_sdpa(q, k_pool, v_pool, tables, lens, sm_scale=0.3)
    torch.testing.assert_close(out, paged_decode_attention_ref(q, k_pool, v_pool, tables, lens, sm_scale=0.3),
                               atol=1e-5, rtol=0)


def test_gather_kv_and_prefill_with_cached_prefix():
    """Prefill of the last 4 tokens over a pooled prefix = the last rows of full causal attention."""
    q, k_pool, v_pool, tables, lens, k_dense = make_paged(1, 4, 2, 32, 5, [13])
    k = gather_kv(k_pool, tables[0], 13)  # [13, Hkv, D]
    torch.testing.assert_close(k, k_dense[0].transpose(0, 1))
    v = gather_kv(v_pool, tables[0], 13)
    qs = torch.randn(13, 4, 32)  # [S, Hq, D]
    full = prefill_attention(qs, k, v, 0, 0.2)
    torch.testing.assert_close(prefill_attention(qs[9:], k, v, 9, 0.2), full[9:], atol=1e-5, rtol=0)
    expanded = torch.nn.functional.scaled_dot_product_attention(  # GQA by copying, for reference
        qs.transpose(0, 1), k.repeat_interleave(2, 1).transpose(0, 1), v.repeat_interleave(2, 1).transpose(0, 1),
        is_causal=True, scale=0.2)
    torch.testing.assert_close(full, expanded.transpose(0, 1), atol=1e-5, rtol=0)
