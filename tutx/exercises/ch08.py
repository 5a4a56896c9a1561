"""Checks for Chapter 8's exercises (benchmarking: serving metrics and their uncertainty).

Each ``check_…(fn)`` runs your function on hidden cases (generated inside the check from a fixed
seed) and compares it with the reference solution (private, ``_solution_…``). It prints ``✅ …``
when all cases pass and raises an ``AssertionError`` naming the first failing case otherwise; the
untouched stub prints "not solved yet".
"""
from __future__ import annotations

import math
import random
import statistics

from tutx.exercises._check import NotSolved, attempt, check_fn, not_solved, run_cases

__all__ = ["check_tpot", "check_goodput", "check_bootstrap_ci"]


# ---- 1. TPOT from the chunk timestamps of one streamed response --------------------------------

def _solution_tpot(start: float, chunk_times: list, chunk_tokens: list) -> float:
    """Time per output token after the first, as ``vllm bench serve`` defines it:
    ``(end-to-end latency - TTFT) / (output tokens - 1)``; 0.0 for a one-token answer.

    A streamed chunk can carry several tokens, so the mean gap between chunks (the mean
    inter-token latency) is not the TPOT.
    """
    n = sum(chunk_tokens)
    if n <= 1:
        return 0.0
    ttft = chunk_times[0] - start
    e2e = chunk_times[-1] - start
    return (e2e - ttft) / (n - 1)


def _wrong_tpot(start, chunk_times, chunk_tokens):
    gaps = [b - a for a, b in zip(chunk_times, chunk_times[1:])]  # the mean ITL: ignores tokens per chunk
    return sum(gaps) / len(gaps) if gaps else 0.0


def _tpot_cases(seed: int = 8, n: int = 12) -> list[tuple]:
    rng = random.Random(seed)
    cases = [(0.0, [0.5], [1]), (10.0, [10.2, 10.3, 10.4], [1, 1, 1])]
    for _ in range(n):
        chunks = rng.randint(2, 8)
        t, times = rng.uniform(0, 100), []
        start = t
        t += rng.uniform(0.05, 2.0)  # time to first token
        for _ in range(chunks):
            times.append(round(t, 4))
            t += rng.uniform(0.01, 0.2)
        tokens = [1] + [rng.choice([1, 1, 2, 3, 4]) for _ in range(chunks - 1)]
        cases.append((round(start, 4), times, tokens))
    return cases


def check_tpot(fn) -> None:
    """``fn(start, chunk_times, chunk_tokens) -> float``: the request's TPOT in seconds."""
    check_fn(fn, "check_tpot")
    run_cases("check_tpot", fn, _solution_tpot, _tpot_cases(), rel_tol=1e-9, abs_tol=1e-12)


# ---- 2. goodput: requests per second that met every SLO -----------------------------------------

def _solution_goodput(requests: list, slos: dict, duration: float) -> float:
    """Requests per second that met **every** SLO: ``requests`` are dicts of metric -> seconds
    (``ttft``, ``tpot``, ``e2el``), ``slos`` maps some of those metrics to limits; a request
    meets a limit when its value is at most the limit; a failed request (``ok`` False) never counts."""
    good = sum(1 for r in requests if r.get("ok", True) and all(r[m] <= limit for m, limit in slos.items()))
    return good / duration


def _wrong_goodput(requests, slos, duration):
    good = sum(1 for r in requests if r.get("ok", True) and any(r[m] <= limit for m, limit in slos.items()))
    return good / duration


def _goodput_cases(seed: int = 80, n: int = 10) -> list[tuple]:
    rng = random.Random(seed)
    cases = [([{"ttft": 0.1, "tpot": 0.05}], {"ttft": 0.1}, 1.0)]  # exactly at the limit counts
    for _ in range(n):
        reqs = [{"ttft": round(rng.uniform(0.02, 1.0), 3), "tpot": round(rng.uniform(0.01, 0.2), 3),
                 "e2el": round(rng.uniform(0.5, 5.0), 2), "ok": rng.random() > 0.1} for _ in range(rng.randint(3, 20))]
        slos = rng.choice([{"ttft": 0.5}, {"tpot": 0.1}, {"ttft": 0.5, "tpot": 0.1}, {"ttft": 0.3, "e2el": 3.0}])
        cases.append((reqs, slos, round(rng.uniform(5, 60), 1)))
    return cases


def check_goodput(fn) -> None:
    """``fn(requests, slos, duration) -> float``: good requests per second."""
    check_fn(fn, "check_goodput")
    run_cases("check_goodput", fn, _solution_goodput, _goodput_cases(), rel_tol=1e-9)


# ---- 3. build it: the percentile-bootstrap interval of the median ---------------------------------

def _percentile(values: list, q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _solution_bootstrap_ci(samples: list, confidence: float, n_resamples: int, seed: int) -> tuple:
    """``rng = random.Random(seed)``; ``n_resamples`` times the median of
    ``rng.choices(samples, k=len(samples))``; the interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` percentiles of those medians (linear interpolation, as NumPy's default).
    Same protocol as ``tutx.bench.bootstrap_ci``."""
    rng = random.Random(seed)
    medians = [statistics.median(rng.choices(samples, k=len(samples))) for _ in range(n_resamples)]
    alpha = (1 - confidence) / 2 * 100
    return _percentile(medians, alpha), _percentile(medians, 100 - alpha)


def _wrong_bootstrap_ci(samples, confidence, n_resamples, seed):
    rng = random.Random(seed)  # resamples the mean, not the median: pulled by the outliers
    means = [statistics.fmean(rng.choices(samples, k=len(samples))) for _ in range(n_resamples)]
    alpha = (1 - confidence) / 2 * 100
    return _percentile(means, alpha), _percentile(means, 100 - alpha)


def _bootstrap_cases(seed: int = 808, n: int = 6) -> list[tuple]:
    rng = random.Random(seed)
    cases = []
    for k in range(n):
        size = rng.randint(8, 30)
        samples = [round(rng.lognormvariate(0, 0.3), 4) for _ in range(size)]
        samples[rng.randrange(size)] *= 5  # a noisy neighbour's outlier
        cases.append((samples, rng.choice([0.9, 0.95, 0.99]), rng.choice([200, 500]), 1000 + k))
    return cases


def check_bootstrap_ci(fn) -> None:
    """``fn(samples, confidence, n_resamples, seed) -> (lo, hi)`` with the protocol of the exercise."""
    check_fn(fn, "check_bootstrap_ci")
    cases = _bootstrap_cases()
    for k, args in enumerate(cases, start=1):
        where = f"check_bootstrap_ci: case {k}/{len(cases)} fn(<{len(args[0])} samples>, {args[1]}, {args[2]}, seed={args[3]})"
        expected = _solution_bootstrap_ci(*args)
        try:
            got = attempt(fn, args, where, expected)
        except NotSolved:
            not_solved("check_bootstrap_ci", "fn(samples, confidence, n_resamples, seed)")
            return
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise AssertionError(f"{where} returned {got!r}, expected a pair (lo, hi)")
        if not all(isinstance(g, (int, float)) and math.isclose(g, e, rel_tol=1e-9) for g, e in zip(got, expected)):
            raise AssertionError(f"{where} returned {tuple(got)!r}, expected {expected!r}")
    print(f"✅ check_bootstrap_ci: all {len(cases)} cases passed")


CONTRACT = {
    "check_tpot": (_solution_tpot, _wrong_tpot),
    "check_goodput": (_solution_goodput, _wrong_goodput),
    "check_bootstrap_ci": (_solution_bootstrap_ci, _wrong_bootstrap_ci),
}
