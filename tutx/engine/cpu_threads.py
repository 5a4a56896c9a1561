"""Pick torch's CPU thread count for small-model work, quietly.

Extra threads gain little on the tiny model's small matrix products, and on a CPU shared with
other work, threads fighting over a few busy cores can be many times slower than one. So time a
probe with the default count and with one thread, and keep the default only if it is clearly
faster. On a GPU nothing is changed.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from tutx._validate import check_number


def _median_time(fn: Callable, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def pick_cpu_threads(probe: Callable, device="cpu", margin: float = 1.3, repeat: int = 3) -> int:
    """Set (and return) torch's thread count: the default if ``probe`` runs ``margin`` times faster
    with it than with one thread, else 1. Does nothing off the CPU or with one thread already."""
    check_number("margin", margin, minimum=1)
    n = torch.get_num_threads()
    if torch.device(device).type != "cpu" or n == 1:
        return n
    t_default = _median_time(probe, repeat)
    torch.set_num_threads(1)
    t_one = _median_time(probe, repeat)
    torch.set_num_threads(n if t_default * margin < t_one else 1)
    return torch.get_num_threads()


__all__ = ["pick_cpu_threads"]
