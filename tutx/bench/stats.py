"""Statistics for repeated measurements: a bootstrap confidence interval and a one-line summary.

One timing is an anecdote. Repeat, report the median (robust to a noisy neighbour), the spread,
and how sure we are of the median: the percentile bootstrap resamples the measured samples with
replacement, takes the median of each resample, and reads the interval off the percentiles of
those medians (Efron and Tibshirani). Pure Python and seeded, so it is the same on every machine.
"""
from __future__ import annotations

import random
import statistics
from typing import Callable, Sequence

from tutx._validate import check_int, check_number, check_positive_int
from tutx.bench.timing import percentile


def _samples(samples) -> list[float]:
    try:
        values = [float(s) for s in samples]
    except (TypeError, ValueError):
        raise TypeError(f"samples: expected a sequence of numbers, got {samples!r:.80}") from None
    if not values:
        raise ValueError("samples: expected at least one sample, got none")
    return values


def bootstrap_ci(
    samples: Sequence[float],
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    statistic: Callable[[list], float] = statistics.median,
) -> tuple[float, float]:
    """Percentile-bootstrap interval ``(lo, hi)`` of ``statistic`` (the median by default).

    The protocol (the exercise in Chapter 8 asks for exactly this): ``rng = random.Random(seed)``;
    ``n_resamples`` times draw ``rng.choices(samples, k=len(samples))`` and apply ``statistic``;
    ``lo``/``hi`` are the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of
    those values (linear interpolation, :func:`~tutx.bench.percentile`).
    """
    values = _samples(samples)
    check_number("confidence", confidence, minimum=0, maximum=1)
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: expected a number strictly between 0 and 1, got {confidence!r}")
    check_positive_int("n_resamples", n_resamples)
    check_int("seed", seed)
    rng = random.Random(seed)
    stats = [statistic(rng.choices(values, k=len(values))) for _ in range(n_resamples)]
    alpha = (1 - confidence) / 2 * 100
    return percentile(stats, alpha), percentile(stats, 100 - alpha)


def summarize(samples: Sequence[float], confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0) -> dict:
    """``median``, ``p10``, ``p90``, ``iqr``, the bootstrap interval of the median (``ci_lo``, ``ci_hi``) and ``n``."""
    values = _samples(samples)
    lo, hi = bootstrap_ci(values, confidence, n_resamples, seed)
    return {
        "median": statistics.median(values),
        "p10": percentile(values, 10),
        "p90": percentile(values, 90),
        "iqr": percentile(values, 75) - percentile(values, 25),
        "ci_lo": lo,
        "ci_hi": hi,
        "n": len(values),
    }
