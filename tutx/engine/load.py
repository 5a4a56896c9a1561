"""Replay clients against a :class:`~tutx.engine.batcher.DynamicBatcher`: Chapter 6's load experiment.

Clients arrive at given moments (e.g. :func:`poisson_arrivals`), each submits one item and waits
for its own result. :func:`replay` reports the latency of every request, the throughput
achieved, and the throughput while the batched function was busy (the server's capacity).
"""
from __future__ import annotations

import asyncio
import random
import statistics
import time
from typing import Callable

from tutx._validate import check_int, check_number, check_positive
from tutx.bench.timing import percentile
from tutx.engine.batcher import DynamicBatcher


def benchmark_requests(tokenizer, n: int = 64, seed: int = 0) -> tuple[list[list[int]], list[int]]:
    """Chapter 6's benchmark workload: ``(prompts, output_lens)`` for ``n`` requests.

    Prompts are 16–256-token spans of the held-out plays, outputs 8–128 tokens, drawn from
    ``random.Random(seed)``; the notebook, ``scripts/bench_engine_64.py``, the GPU check and the
    engine race (``scripts/bench_engines.py``) all use these same requests.
    """
    check_int("n", n, minimum=1)
    from tutx.models import heldout_text
    ids = tokenizer.encode(heldout_text())
    rng = random.Random(seed)
    prompt_lens = [rng.randint(16, 256) for _ in range(n)]
    output_lens = [rng.randint(8, 128) for _ in range(n)]
    starts = [rng.randrange(len(ids) - 256) for _ in range(n)]
    return [ids[s:s + p] for s, p in zip(starts, prompt_lens)], output_lens


def poisson_arrivals(n: int, rate: float, seed: int = 0) -> list[float]:
    """``n`` arrival times in seconds (the first at 0), exponential gaps of mean ``1/rate`` (seeded)."""
    check_int("n", n, minimum=1)
    check_positive("rate", rate)
    rng = random.Random(seed)
    times = [0.0]
    for _ in range(n - 1):
        times.append(times[-1] + rng.expovariate(rate))
    return times


async def replay(fn: Callable, items: list, arrivals: list[float], max_batch_size: int = 8,
                 max_wait_ms: float = 5.0, units_per_item: float = 1.0) -> dict:
    """Submit ``items[i]`` at ``arrivals[i]`` seconds through ``DynamicBatcher(fn, ...)``; the measurements.

    Returns ``max_wait_ms``, ``mean batch``, ``mean latency ms``, ``p90 latency ms``, ``units/s
    achieved`` (``units_per_item`` per request, e.g. tokens, over the whole run) and ``units per busy
    second`` (over the time ``fn`` was running: what the server could sustain).
    """
    if len(items) != len(arrivals) or not items:
        raise ValueError(f"arrivals: expected one arrival time per item ({len(items)}), got {len(arrivals)}")
    check_number("max_wait_ms", max_wait_ms, minimum=0)
    busy: list[float] = []

    def timed(batch):  # runs in a worker thread; the event loop keeps accepting requests
        start = time.perf_counter()
        out = fn(batch)
        busy.append(time.perf_counter() - start)
        return out

    async with DynamicBatcher(timed, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms) as batcher:
        t0 = time.perf_counter()

        async def client(i):
            await asyncio.sleep(max(0.0, arrivals[i] - (time.perf_counter() - t0)))
            sent = time.perf_counter()
            await batcher.submit(items[i])
            return sent, time.perf_counter()

        times = await asyncio.gather(*(client(i) for i in range(len(items))))
    latency = [(done - sent) * 1e3 for sent, done in times]
    makespan = max(done for _, done in times) - t0
    units = len(items) * units_per_item
    return {"max_wait_ms": max_wait_ms, "mean batch": batcher.stats.mean_batch_size,
            "mean latency ms": statistics.fmean(latency), "p90 latency ms": percentile(latency, 90),
            "units/s achieved": units / makespan, "units per busy second": units / sum(busy)}


__all__ = ["benchmark_requests", "poisson_arrivals", "replay"]
