"""The C paged-decode kernel (tutx/kernels/csrc/paged_decode_cpu.c) against the PyTorch reference.

Built with the system C compiler on first use (tutx.kernels.cpu_build); skipped without one.
"""
import zlib

import pytest
import torch

from tutx.kernels import cpu_build
from tutx.kernels import paged_decode_cpu as pdc
from tutx.kernels.cpu_build import KernelBuildError
from tutx.kernels.paged_decode import paged_decode_attention_ref
from tutx.kernels.paged_decode_cpu import (
    MAX_GROUP,
    cpu_kernel_available,
    paged_decode_attention_cpu,
    paged_prefill_attention_cpu,
    transpose_keys,
)

pytestmark = pytest.mark.skipif(cpu_build.compiler() is None, reason="no C compiler to build the CPU kernel")


def make_paged(b, hq, hkv, d, block_size, lengths, pad_pages=2, spare_blocks=3):
    """q and a block pool holding each sequence's tokens in shuffled blocks; tables padded with -1.

    Slots past a length hold garbage keys and NaN values, the spare blocks too: never to be read.
    """
    gen = torch.Generator().manual_seed(zlib.crc32(repr((b, hq, hkv, d, block_size, lengths)).encode()))
    pages = [-(-n // block_size) for n in lengths]
    num_blocks = sum(pages) + spare_blocks
    q = torch.randn(b, hq, d, generator=gen)  # [B, Hq, D]
    k_pool = torch.randn(num_blocks, block_size, hkv, d, generator=gen) * 100  # [N, bs, Hkv, D]
    v_pool = torch.full((num_blocks, block_size, hkv, d), float("nan"))
    perm = torch.randperm(num_blocks, generator=gen).tolist()  # blocks handed out in random order
    tables = torch.full((b, max(pages) + pad_pages), -1, dtype=torch.int32)  # [B, W]
    for i, n in enumerate(lengths):
        for p in range(pages[i]):
            blk = perm.pop()
            tables[i, p] = blk
            rows = min(n, (p + 1) * block_size) - p * block_size
            k_pool[blk, :rows] = torch.randn(rows, hkv, d, generator=gen)
            v_pool[blk, :rows] = torch.randn(rows, hkv, d, generator=gen)
    return q, k_pool, v_pool, tables, torch.tensor(lengths, dtype=torch.int32)


CASES = [  # B, Hq, Hkv, D, block_size, lengths
    (3, 4, 4, 32, 16, [1, 16, 37]),  # group 1 (MHA): one token, exactly a block, ragged
    (2, 8, 2, 64, 16, [32, 50]),  # group 4: two full blocks, a tail
    (2, 16, 2, 128, 16, [16, 71]),  # group 8
    (3, 8, 1, 64, 1, [1, 13, 6]),  # MQA, block size 1
    (2, 12, 4, 32, 1, [1, 9]),  # group 3, block size 1
    (1, 4, 1, 80, 16, [33]),  # head dim not a power of two, a batch of one
    (1, 8, 8, 128, 16, [1]),  # a batch of one, one token
    (2, MAX_GROUP, 1, 32, 16, [40, 3]),  # the largest group the kernel holds
    (2, 12, 4, 64, 24, [24, 61]),  # group 3, blocks of 24: a full vector and 8 slots past it per block
    (2, 20, 2, 32, 8, [8, 29]),  # group 10: heads in chunks of 8 and 2; blocks smaller than a vector
    (2, 6, 1, 32, 32, [31, 64]),  # group 6, two vectors per block
]


@pytest.mark.parametrize("keys_transposed", [False, True], ids=["key-rows", "keys-transposed"])
@pytest.mark.parametrize("b,hq,hkv,d,block_size,lengths", CASES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, list) else None)
def test_kernel_matches_ref(b, hq, hkv, d, block_size, lengths, keys_transposed):
    q, k_pool, v_pool, tables, lens = make_paged(b, hq, hkv, d, block_size, lengths)
    keys = transpose_keys(k_pool) if keys_transposed else k_pool
    out = paged_decode_attention_cpu(q, keys, v_pool, tables, lens, keys_transposed=keys_transposed)
    assert out.shape == q.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    ref = paged_decode_attention_ref(q, k_pool, v_pool, tables, lens)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


PREFILL_CASES = [  # Hq, Hkv, D, block_size, (cached, new) per sequence
    (8, 2, 32, 16, [(0, 37), (0, 1), (20, 13)]),  # group 4: tiles of 4 rows; a one-token prompt; a cached prefix
    (12, 4, 64, 16, [(0, 50), (5, 17)]),  # group 3: tiles of 5 rows (15 of 16 lanes)
    (4, 4, 32, 8, [(0, 40), (3, 30)]),  # group 1: tiles of 16 rows; blocks smaller than a chunk
    (16, 2, 80, 24, [(0, 61), (30, 30)]),  # group 8, head dim 80; blocks larger than a chunk, not a multiple
    (32, 1, 32, 32, [(0, 20), (7, 9)]),  # group 32: two head chunks of 16 lanes per row
    (20, 1, 32, 16, [(0, 19)]),  # group 20: head chunks of 16 and 4
    (MAX_GROUP, 1, 32, 1, [(0, 5), (2, 3)]),  # the largest group, block size 1
]


@pytest.mark.parametrize("keys_transposed", [False, True], ids=["key-rows", "keys-transposed"])
@pytest.mark.parametrize("hq,hkv,d,block_size,spans", PREFILL_CASES,
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, list) else None)
def test_prefill_kernel_matches_ref(hq, hkv, d, block_size, spans, keys_transposed):
    """Every prompt token a row, attending causally over its sequence's cached prefix and new tokens."""
    lengths = [c + n for c, n in spans]
    _, k_pool, v_pool, tables, _ = make_paged(len(spans), hq, hkv, d, block_size, lengths)
    keys = transpose_keys(k_pool) if keys_transposed else k_pool
    table_of_row = torch.tensor([s for s, (c, n) in enumerate(spans) for _ in range(n)], dtype=torch.int32)
    row_lengths = torch.tensor([p + 1 for c, n in spans for p in range(c, c + n)], dtype=torch.int32)
    q = torch.randn(len(table_of_row), hq, d, generator=torch.Generator().manual_seed(len(spans)))
    out = paged_prefill_attention_cpu(q, keys, v_pool, tables, table_of_row, row_lengths, sm_scale=0.2,
                                      keys_transposed=keys_transposed)
    assert out.shape == q.shape and torch.isfinite(out).all()
    ref = paged_decode_attention_ref(q, k_pool, v_pool, tables[table_of_row.long()], row_lengths, sm_scale=0.2)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    trusted = paged_prefill_attention_cpu(q, keys, v_pool, tables, table_of_row, row_lengths, sm_scale=0.2,
                                          trusted=True, keys_transposed=keys_transposed)
    torch.testing.assert_close(trusted, out, atol=0, rtol=0)


def test_prefill_rows_of_one_sequence_may_be_apart_and_unordered():
    """Tiles take consecutive rows of one table only: rows interleaved across sequences still match."""
    _, k_pool, v_pool, tables, _ = make_paged(2, 8, 2, 32, 16, [30, 30])
    table_of_row = torch.tensor([0, 1, 0, 1, 1, 0, 0, 0], dtype=torch.int32)
    row_lengths = torch.tensor([3, 30, 1, 7, 2, 30, 29, 12], dtype=torch.int32)
    q = torch.randn(8, 8, 32)
    out = paged_prefill_attention_cpu(q, k_pool, v_pool, tables, table_of_row, row_lengths)
    ref = paged_decode_attention_ref(q, k_pool, v_pool, tables[table_of_row.long()], row_lengths)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_int64_tables_scale_strided_q_and_threads():
    q, k_pool, v_pool, tables, lens = make_paged(3, 8, 2, 32, 16, [5, 40, 17])
    ref = paged_decode_attention_ref(q, k_pool, v_pool, tables, lens, sm_scale=0.3)
    q_strided = q.transpose(0, 1).contiguous().transpose(0, 1)  # same values, not contiguous
    assert not q_strided.is_contiguous()
    fused = torch.cat([q.reshape(3, -1), torch.full((3, 64), float("nan"))], dim=1)  # as a q|k|v projection
    q_slice = fused[:, :8 * 32].view(3, 8, 32)  # rows 320 apart, heads contiguous: read in place
    assert q_slice.stride(0) == 320
    torch.testing.assert_close(paged_decode_attention_cpu(q_slice, k_pool, v_pool, tables, lens, sm_scale=0.3),
                               ref, atol=1e-5, rtol=1e-5)
    n = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = paged_decode_attention_cpu(q_strided, k_pool, v_pool, tables.long(), lens.long(), sm_scale=0.3,
                                             validate=False)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    finally:
        torch.set_num_threads(n)


def test_bad_inputs_raise():
    q, k_pool, v_pool, tables, lens = make_paged(2, 4, 2, 32, 8, [10, 3])
    with pytest.raises(TypeError, match=r"^q: .*float32"):
        paged_decode_attention_cpu(q.bfloat16(), k_pool.bfloat16(), v_pool.bfloat16(), tables, lens)
    with pytest.raises(TypeError, match="v_pool"):
        paged_decode_attention_cpu(q, k_pool, v_pool.bfloat16(), tables, lens)
    wide = torch.zeros(k_pool.shape[0], 8, 4, 32)  # [N, bs, 2*Hkv, D]: half of its heads is not contiguous
    with pytest.raises(ValueError, match="contiguous"):
        paged_decode_attention_cpu(q, wide[:, :, :2], v_pool, tables, lens)
    with pytest.raises(ValueError, match="contiguous"):
        paged_decode_attention_cpu(q, k_pool, wide[:, :, 2:], tables, lens)
    many_heads = torch.randn(2, 2 * (MAX_GROUP + 1), 32)  # 65 query heads per KV head
    with pytest.raises(ValueError, match=f"at most {MAX_GROUP}"):
        paged_decode_attention_cpu(many_heads, k_pool, v_pool, tables, lens)
    for bad_lengths in ([10, 0], [10, tables.shape[1] * 8 + 1]):
        with pytest.raises(ValueError, match="lengths"):
            paged_decode_attention_cpu(q, k_pool, v_pool, tables, torch.tensor(bad_lengths, dtype=torch.int32))
    bad = tables.clone()
    bad[0, 0] = k_pool.shape[0]
    with pytest.raises(ValueError, match="block_tables"):
        paged_decode_attention_cpu(q, k_pool, v_pool, bad, lens)
    with pytest.raises(ValueError, match="lengths"):
        paged_decode_attention_cpu(q, k_pool, v_pool, tables, lens[:1])
    with pytest.raises(ValueError, match=r"^k_pool: expected \[num_blocks, Hkv, D, block_size\]"):
        paged_decode_attention_cpu(q, k_pool, v_pool, tables, lens, keys_transposed=True)  # keys in rows


def test_wrong_device_raises():
    """No GPU needed: the meta device is not a CPU either (validate=False: no values to check there)."""
    q, k_pool, v_pool, tables, lens = (x.to("meta") for x in make_paged(1, 4, 2, 32, 8, [5]))
    with pytest.raises(TypeError, match="^q: .*meta"):
        paged_decode_attention_cpu(q, k_pool, v_pool, tables, lens, validate=False)


def test_kernel_is_available_here():
    assert cpu_kernel_available(32)
    assert cpu_build.build("paged_decode_cpu.c", {"HEAD_DIM": 32}) is cpu_build.build(
        "paged_decode_cpu.c", {"HEAD_DIM": 32})  # loaded once


@pytest.fixture
def fresh_build(monkeypatch, tmp_path):
    """No built library in memory or on disk; the caches are cleared again afterwards."""
    monkeypatch.setenv("TUTX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_build, "_loaded", {})  # restored by monkeypatch
    monkeypatch.setattr(cpu_build, "_failed", {})
    pdc._kernel.cache_clear()
    yield tmp_path
    pdc._kernel.cache_clear()


def test_build_compiles_into_the_cache_dir(fresh_build):
    assert cpu_build.cache_dir() == fresh_build / "cpu_kernels"
    lib = cpu_build.build("paged_decode_cpu.c", {"HEAD_DIM": 48})
    built = list((fresh_build / "cpu_kernels").glob("paged_decode_cpu-*.so"))
    assert len(built) == 1 and hasattr(lib, "tutx_paged_decode_f32")
    assert not [p for p in (fresh_build / "cpu_kernels").iterdir() if p.is_dir()]  # no temporary dir left
    cpu_build._loaded.clear()  # a new process: loads the cached library, compiles nothing
    mtime = built[0].stat().st_mtime_ns
    cpu_build.build("paged_decode_cpu.c", {"HEAD_DIM": 48})
    assert built[0].stat().st_mtime_ns == mtime


def test_no_compiler_raises_and_the_kernel_is_unavailable(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent")
    assert cpu_build.compiler() is None
    with pytest.raises(KernelBuildError, match="no C compiler"):
        cpu_build.build("paged_decode_cpu.c", {"HEAD_DIM": 32})
    assert not cpu_kernel_available(32)
    q, k_pool, v_pool, tables, lens = make_paged(1, 4, 2, 32, 8, [5])
    with pytest.raises(KernelBuildError):
        paged_decode_attention_cpu(q, k_pool, v_pool, tables, lens)


def test_failing_compiler_raises_with_its_command(fresh_build, monkeypatch):
    monkeypatch.setenv("CC", "false")  # found on the PATH, fails every build
    with pytest.raises(KernelBuildError, match="building paged_decode_cpu.c failed"):
        cpu_build.build("paged_decode_cpu.c", {"HEAD_DIM": 32})
    assert not cpu_kernel_available(32)
    assert not list((fresh_build / "cpu_kernels").glob("*.so"))
    run, compiles = cpu_build.subprocess.run, []

    def counting_run(cmd, **kwargs):
        compiles.extend([cmd] if "-c" in cmd else [])
        return run(cmd, **kwargs)

    monkeypatch.setattr(cpu_build.subprocess, "run", counting_run)
    with pytest.raises(KernelBuildError, match="building paged_decode_cpu.c failed"):
        cpu_build.build("paged_decode_cpu.c", {"HEAD_DIM": 32})
    assert compiles == []  # a failed build is not tried again in this process
