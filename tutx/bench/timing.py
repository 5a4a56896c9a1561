"""Timing that can be trusted: warm-up, device synchronisation, median and spread.

GPU work is asynchronous, so a wall clock around a CUDA call measures the launch, not the
work. On CUDA we time with events and synchronise; on the CPU with ``perf_counter``.
We report the median (robust to a noisy neighbour) and the interquartile spread.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from tutx._validate import check_int, check_number, check_positive_int


@dataclass(frozen=True)
class Timing:
    """The result of :func:`timeit`: all samples in seconds, with summary statistics."""

    samples: tuple[float, ...] = field(repr=False)
    device: str

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def iqr(self) -> float:
        """Interquartile range (seconds): the spread of the middle half of the samples."""
        if len(self.samples) < 2:
            return 0.0
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[2] - q[0]

    @property
    def median_ms(self) -> float:
        return self.median * 1e3

    @property
    def median_us(self) -> float:
        return self.median * 1e6

    def __repr__(self) -> str:
        return (
            f"Timing(median={_fmt(self.median)}, iqr={_fmt(self.iqr)}, "
            f"n={len(self.samples)}, device={self.device!r})"
        )


def percentile(values, q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values``, interpolating linearly between order statistics
    (NumPy's default), so p50 of an even count is the mean of the middle two."""
    check_number("q", q, minimum=0, maximum=100)
    ordered = sorted(values)
    if not ordered:
        raise ValueError("values: expected at least one value, got none")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} µs"


def timeit(
    fn: Callable[[], object],
    *,
    warmup: int = 3,
    repeat: int = 20,
    device: torch.device | str | None = None,
    min_time: float = 0.0,
) -> Timing:
    """Time ``fn()`` (no arguments): ``warmup`` untimed calls, then at least ``repeat`` timed ones.

    ``device`` chooses how to synchronise: on CUDA each call is timed with CUDA events;
    elsewhere with ``time.perf_counter``. If ``min_time`` > 0, keep sampling until the
    samples add up to at least that many seconds.
    """
    if not callable(fn):
        raise TypeError(f"fn: expected a callable taking no arguments, got {type(fn).__name__}")
    check_int("warmup", warmup, minimum=0)
    check_positive_int("repeat", repeat)
    check_number("min_time", min_time, minimum=0)
    if device is None:
        dev = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
    use_cuda = dev.type == "cuda"

    for _ in range(warmup):
        fn()
    if use_cuda:
        torch.cuda.synchronize(dev)

    samples: list[float] = []
    while len(samples) < repeat or sum(samples) < min_time:
        if use_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
    return Timing(samples=tuple(samples), device=str(dev))
