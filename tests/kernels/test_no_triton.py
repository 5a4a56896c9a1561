"""Without Triton (macOS, Windows) every kernel module imports and every wrapper runs its reference.

A subprocess hides Triton (``sys.modules["triton"] = None`` makes ``import triton`` fail) before
importing ``tutx``, with ``TRITON_INTERPRET=1`` set to show that the interpreter flag alone does
not route anything to a kernel then.
"""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r'''
    import importlib, pkgutil, sys
    sys.modules["triton"] = None  # import triton -> ImportError
    import torch
    import tutx.kernels
    for info in pkgutil.iter_modules(tutx.kernels.__path__):
        importlib.import_module(f"tutx.kernels.{info.name}")
    import tutx.attention, tutx.engine, tutx.quant  # noqa: F401  (they import the kernels too)
    from tutx.kernels import _triton
    from tutx.kernels.attention import flash_attention, flash_attention_kernel, flash_attention_ref
    from tutx.kernels.decode import decode_attention, decode_attention_ref
    from tutx.kernels.quant_matmul import (int8_matmul_rescale, int8_matmul_rescale_ref,
                                           int8_weight_only_matmul, int8_weight_only_matmul_ref)
    from tutx.kernels.quant_matmul_int4 import int4_weight_only_matmul, int4_weight_only_matmul_ref
    from tutx.kernels.sliding_window import sliding_window_attention, sliding_window_attention_ref
    assert "triton" not in sys.modules or sys.modules["triton"] is None
    assert not _triton.TRITON_AVAILABLE

    g = torch.Generator().manual_seed(0)
    def r(*shape):
        return torch.randn(*shape, generator=g)
    same = torch.testing.assert_close
    q, k, v = r(2, 4, 9, 16), r(2, 2, 9, 16), r(2, 2, 9, 16)
    same(flash_attention(q, k, v, causal=True), flash_attention_ref(q, k, v, causal=True))
    same(sliding_window_attention(q, k, v, window=3, num_global_tokens=1),
         sliding_window_attention_ref(q, k, v, window=3, num_global_tokens=1))
    kc, vc, lengths = r(2, 2, 11, 16), r(2, 2, 11, 16), torch.tensor([5, 11])
    same(decode_attention(q[:, :, 0], kc, vc, lengths), decode_attention_ref(q[:, :, 0], kc, vc, lengths))
    from tutx.kernels.paged_decode import paged_decode_attention, paged_decode_attention_ref
    pool_k, pool_v = r(6, 4, 2, 16), r(6, 4, 2, 16)  # [blocks, block_size, Hkv, D]
    tables, plens = torch.tensor([[3, 1, 0], [5, 2, 4]], dtype=torch.int32), torch.tensor([9, 4], dtype=torch.int32)
    same(paged_decode_attention(q[:, :, 0], pool_k, pool_v, tables, plens),
         paged_decode_attention_ref(q[:, :, 0], pool_k, pool_v, tables, plens))
    x, w8, s = r(3, 64), torch.randint(-127, 128, (5, 64), generator=g, dtype=torch.int8), r(5).abs()
    same(int8_weight_only_matmul(x, w8, s), int8_weight_only_matmul_ref(x, w8, s))
    same(int8_weight_only_matmul(x[:1], w8, s), int8_weight_only_matmul_ref(x[:1], w8, s))  # the GEMV route
    x8 = torch.randint(-127, 128, (3, 64), generator=g, dtype=torch.int8)
    same(int8_matmul_rescale(x8, w8, s[:3], s, torch.float32), int8_matmul_rescale_ref(x8, w8, s[:3], s, torch.float32))
    packed = torch.randint(0, 256, (5, 32), generator=g, dtype=torch.uint8)
    zeros = torch.randint(0, 16, (5, 2), generator=g, dtype=torch.uint8)
    sc = r(5, 2).abs()
    same(int4_weight_only_matmul(x, packed, sc, zeros, 32), int4_weight_only_matmul_ref(x, packed, sc, zeros, 32))
    try:
        flash_attention_kernel[(1,)]()
    except _triton.TritonMissingError as err:
        assert "Triton is not installed" in str(err)
    else:
        raise AssertionError("a kernel launched without Triton")
    import tutx
    assert "def flash_attention_kernel" in tutx.show(flash_attention_kernel, print_it=False)
    print("ok")
''')


def test_kernels_import_and_fall_back_without_triton():
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")
