"""The Chapter 4 GPU-check scripts: their FLOP conventions and shapes, on CPU."""
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load_gpu_check(name="attention"):
    path = ROOT / "scripts" / "gpu_checks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_shapes_and_flop_convention():
    check = _load_gpu_check()
    assert check.attention_flops(2, 16, 1024, 1024, 128, causal=False) == 4 * 2 * 16 * 1024 * 1024 * 128
    assert check.attention_flops(2, 16, 1024, 1024, 128, causal=True) == 2 * 2 * 16 * 1024 * 1024 * 128
    assert check.attention_flops(1, 1, 10, 10, 64, causal=False, backward=True) == \
        check.FWD_BWD_FLOP_FACTOR * 4 * 10 * 10 * 64
    shapes = check.bench_shapes(128)
    assert shapes == [(16, 16, 1024, 128), (4, 16, 4096, 128), (1, 16, 16384, 128)]
    assert all(b * s == 16384 and h * d == 2048 for b, h, s, d in check.bench_shapes(64))
    from tutx.kernels.masks import sliding_window_mask

    sparse = _load_gpu_check("sparse_decode")
    for s, w in [(50, 7), (10, 30), (300, 64)]:  # FLOPs of the sliding window = pairs of its mask
        assert sparse.window_pairs(s, w) == int(sliding_window_mask(s, s, w).sum())
    assert callable(check.run) and callable(sparse.run)
