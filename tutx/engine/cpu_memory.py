"""Keep the memory a CPU step frees for the next step, instead of handing it back to the system.

A prefill step of 2,048 tokens allocates tens of MB of activations (the tiny LM's gate|up product
alone is 10 MB) and frees them when the step ends. glibc's malloc serves a request above its mmap
threshold with a fresh mapping and unmaps it on free, and trims the top of its heap once more
than its trim threshold lies free there: either way the next step faults the same pages in again,
each one zeroed by the kernel. On this workplace's CPU a Chapter 6 run took 30,000-55,000 page
faults (120-220 MB) and 2-6% of its CPU time in the kernel (``tutx/results/PERF_NOTES.md``, L32).

:func:`keep_freed_memory` raises the mmap threshold to glibc's largest (32 MiB), the trim
threshold to 1 GiB and the top padding to 64 MiB: freed activations stay in the heap and the
next step reuses them without a fault. This is what serving stacks get from TCMalloc or jemalloc
(vLLM's CPU guide preloads TCMalloc). malloc's settings are process-wide: the engine applies
them once when it runs on a CPU; ``keep_freed_memory(False)`` restores glibc's defaults (fixed
ones: the sliding mmap threshold glibc starts with does not come back). Elsewhere than glibc
(musl, macOS, Windows) nothing is changed.
"""
from __future__ import annotations

import ctypes
import functools
import platform

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3  # mallopt's parameter numbers (malloc.h)
KEEP = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}
GLIBC_DEFAULTS = {M_MMAP_THRESHOLD: 128 << 10, M_TRIM_THRESHOLD: 128 << 10, M_TOP_PAD: 128 << 10}


@functools.lru_cache(maxsize=None)
def _mallopt():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    fn = getattr(ctypes.CDLL(None), "mallopt", None)
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return fn


def keep_freed_memory(enabled: bool = True) -> bool:
    """Let malloc keep freed memory for reuse (``enabled=False``: glibc's default settings again).
    Returns whether malloc took the settings (False where it is not glibc's)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled: expected a bool, got {type(enabled).__name__}")
    mallopt = _mallopt()
    if mallopt is None:
        return False
    return all(mallopt(param, value) == 1 for param, value in (KEEP if enabled else GLIBC_DEFAULTS).items())


__all__ = ["keep_freed_memory"]
