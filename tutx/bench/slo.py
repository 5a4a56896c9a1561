"""Maximum throughput under a latency SLO: the largest batch whose latency meets the limit.

The naive search times each batch size once and stops at the first one over the limit; one
noisy sample can stop it early or late. Here every point is sampled ``repeat`` times and judged
by the median's bootstrap interval. The search doubles the batch size while the latency meets the
SLO (and the memory fits), then bisects between the last pass and the first failure, assuming
latency grows with batch size (monotone). The result is the **knee** — the largest passing batch
— with the throughput there, and a confidence: the bootstrap probability that the knee's median
meets the SLO *and* the next batch's does not.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable

from tutx._validate import check_bool, check_number, check_optional_int, check_positive, check_positive_int
from tutx.bench.stats import bootstrap_ci


@dataclass
class SLOSearch:
    """The result of :func:`max_throughput_under_slo`."""

    slo: float
    knee: int | None  # largest batch whose median latency meets the SLO; None if batch 1 fails
    throughput: float  # units/s at the knee (batch * units_per_item / latency)
    latency: float | None  # median latency at the knee (seconds)
    latency_ci: tuple | None  # its bootstrap interval
    confidence: float  # P(knee meets the SLO and knee + 1 does not), by bootstrap
    stop: str  # "slo", "memory", "max_batch" or "oom"
    points: list = field(default_factory=list, repr=False)  # one row per batch size measured


def _bootstrap_p(samples: list, slo: float, n: int = 500, seed: int = 0) -> float:
    """Bootstrap probability that the median of ``samples`` is at most ``slo``."""
    import random

    rng = random.Random(seed)
    return sum(statistics.median(rng.choices(samples, k=len(samples))) <= slo for _ in range(n)) / n


def max_throughput_under_slo(measure: Callable[[int], float], slo: float, *, repeat: int = 5,
                             max_batch: int = 1024, memory_fn: Callable[[int], float] | None = None,
                             memory_limit: float | None = None, units_per_item: float = 1.0,
                             progress: bool = True) -> SLOSearch:
    """Search batch sizes 1, 2, 4, … for the largest one whose median ``measure(batch)`` (seconds,
    one sample per call) is at most ``slo`` seconds.

    ``memory_fn(batch)`` (bytes, e.g. weights + KV cache from the config) with ``memory_limit``
    stops the search before a batch that would not fit; a ``torch.OutOfMemoryError`` (or any
    ``RuntimeError`` saying "out of memory") raised by ``measure`` stops it too. A point passes
    when its median meets the SLO. Throughput at the knee is ``knee * units_per_item / latency``
    (e.g. ``units_per_item=1`` with a decode-step latency gives tokens/s).
    """
    if not callable(measure):
        raise TypeError(f"measure: expected a callable measure(batch) -> seconds, got {type(measure).__name__}")
    check_positive("slo", slo)
    check_positive_int("repeat", repeat)
    check_positive_int("max_batch", max_batch)
    check_positive("units_per_item", units_per_item)
    check_bool("progress", progress)
    if (memory_fn is None) != (memory_limit is None):
        raise ValueError("memory_fn, memory_limit: give both (a memory model and the limit) or neither")
    if memory_fn is not None and not callable(memory_fn):
        raise TypeError(f"memory_fn: expected a callable memory_fn(batch) -> bytes, got {type(memory_fn).__name__}")
    if memory_limit is not None:
        check_positive("memory_limit", memory_limit)
    from tqdm.auto import tqdm

    points: dict[int, dict] = {}
    bar = tqdm(desc=f"SLO search ({slo * 1e3:g} ms)", unit="batch", disable=not progress, leave=False)

    def probe(batch: int) -> str:
        """'pass', 'fail', 'memory' or 'oom' for one batch size (measured at most once)."""
        if batch in points:
            return points[batch]["verdict"]
        if memory_fn is not None and memory_fn(batch) > memory_limit:
            points[batch] = {"batch": batch, "verdict": "memory", "memory_bytes": memory_fn(batch)}
            return "memory"
        try:
            samples = [float(measure(batch)) for _ in range(repeat)]
        except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
            if "out of memory" not in str(err).lower():
                raise
            points[batch] = {"batch": batch, "verdict": "oom"}
            return "oom"
        bar.update(1)
        med = statistics.median(samples)
        lo, hi = bootstrap_ci(samples, n_resamples=500, seed=batch)
        verdict = "pass" if med <= slo else "fail"
        points[batch] = {"batch": batch, "verdict": verdict, "latency": med, "latency_ci": (lo, hi),
                         "p_meets": _bootstrap_p(samples, slo, seed=batch), "samples": samples,
                         "throughput": batch * units_per_item / med}
        return verdict

    try:
        lo, hi, stop = 0, None, "max_batch"
        batch = 1
        while batch <= max_batch:  # doubling phase
            verdict = probe(batch)
            if verdict != "pass":
                hi, stop = batch, ("slo" if verdict == "fail" else verdict)
                break
            lo = batch
            batch *= 2
        if hi is None and lo < max_batch:  # the doubling overshot max_batch: check it, then bisect below
            verdict = probe(max_batch)
            if verdict == "pass":
                lo = max_batch
            else:
                hi, stop = max_batch, ("slo" if verdict == "fail" else verdict)
        while hi is not None and hi - lo > 1:  # bisection between the last pass and the first failure
            mid = (lo + hi) // 2
            verdict = probe(mid)
            if verdict == "pass":
                lo = mid
            else:
                hi = mid
                stop = "slo" if verdict == "fail" else verdict
    finally:
        bar.close()
    rows = [points[b] for b in sorted(points)]
    if lo == 0:
        return SLOSearch(slo, None, 0.0, None, None, 0.0, stop, rows)
    knee = points[lo]
    confidence = knee["p_meets"]
    if hi is not None and "p_meets" in points[hi]:
        confidence *= 1 - points[hi]["p_meets"]  # the two points are sampled independently
    return SLOSearch(slo, lo, knee["throughput"], knee["latency"], knee["latency_ci"], confidence, stop, rows)
