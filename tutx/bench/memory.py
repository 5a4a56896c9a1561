"""Peak memory of one call, on a GPU (the allocator's own counter) or on the CPU (resident set size).

On CUDA the caching allocator counts exactly: ``torch.cuda.max_memory_allocated`` after a reset.
On the CPU PyTorch keeps no such counter. On Linux the kernel keeps one for the process, the
resident-set high-water mark (``VmHWM`` in ``/proc/self/status``), which writing ``5`` to
``/proc/self/clear_refs`` resets: exact, whatever the machine's load. Elsewhere a background
thread samples the resident memory every ``interval`` seconds while the call runs (to within the
sampling interval — on a busy machine the thread can miss a short-lived peak). Either way the
peak above the level before the call is what the call needed.
"""
from __future__ import annotations

import re
import threading
import time
from typing import Callable

import psutil
import torch

from tutx._validate import check_positive


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _reset_high_water_mark() -> bool:
    """Reset Linux's resident-set high-water mark to the current RSS; False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _high_water_mark() is not None
    except OSError:
        return False


def _high_water_mark() -> int | None:
    try:
        with open("/proc/self/status") as f:
            match = re.search(r"^VmHWM:\s+(\d+) kB", f.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def peak_memory(fn: Callable, device: str | torch.device | None = None, interval: float = 2e-4):
    """Run ``fn()`` once and return ``(result, peak_bytes)``: memory it needed above the level before it."""
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    check_positive("interval", interval)  # the sampling fallback's period
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
    if _reset_high_water_mark():
        before = _rss()
        result = fn()
        return result, max(0, _high_water_mark() - before)
    before = _rss()
    peak = before
    done = threading.Event()

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss())
            time.sleep(interval)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = fn()
    finally:
        done.set()
        sampler.join()
    peak = max(peak, _rss())
    return result, max(0, peak - before)
