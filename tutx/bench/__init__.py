"""Benchmarking helpers (Chapter 8 grows the full suite from these)."""
from tutx.bench.timing import Timing, timeit

__all__ = ["Timing", "timeit"]
