"""Peak memory of one call, on a GPU (the allocator's own counter) or on the CPU (resident set size).

On CUDA the caching allocator counts exactly: ``torch.cuda.max_memory_allocated`` after a reset.
On the CPU PyTorch keeps no such counter, so a background thread samples the process's resident
memory every ``interval`` seconds while the call runs; the peak above the level before the call
is what the call needed (to within the sampling interval and the OS's page granularity, a few
megabytes — fine for the hundreds of megabytes an S×S attention matrix takes).
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import psutil
import torch

from tutx._validate import check_positive


def _rss() -> int:
    return psutil.Process().memory_info().rss


def peak_memory(fn: Callable, device: str | torch.device | None = None, interval: float = 2e-4):
    """Run ``fn()`` once and return ``(result, peak_bytes)``: memory it needed above the level before it."""
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    check_positive("interval", interval)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - before
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
