"""Checks for Chapter 7's exercises (serving: the cache key, power-of-two choices, SSE parsing).

Each ``check_…(fn)`` runs your function on cases generated inside the check (hidden cases) and
compares it with the reference solution — the same rules :mod:`tutx.serve` applies. It prints
``✅ …`` when all cases pass and raises an ``AssertionError`` naming the first failing case
otherwise; the untouched stub prints "not solved yet".
"""
from __future__ import annotations

import json
import random

from tutx.exercises._check import check_fn, run_cases
from tutx.serve.sse import parse_sse

__all__ = ["check_canonical_request", "check_power_of_two", "check_parse_sse"]

DEFAULTS = {"max_tokens": 16, "temperature": 1.0, "top_p": 1.0, "n": 1, "stop": [], "seed": None, "echo": False}


# ---- 1. the response cache's canonical request ----------------------------------------------

def _solution_canonical_request(request: dict) -> dict | None:
    """The normalised form of a completion request that the cache key is made of, or None when
    the output is not a function of the request (sampling without a seed)."""
    r = {**DEFAULTS, **{k: v for k, v in request.items() if k in DEFAULTS}}
    r["model"], r["prompt"] = request["model"], request["prompt"]
    if r["temperature"] > 0 and r["seed"] is None:
        return None
    stop = r["stop"]
    r["stop"] = sorted({stop} if isinstance(stop, str) else set(stop or []))
    r["temperature"], r["top_p"] = float(r["temperature"]), float(r["top_p"])
    if r["temperature"] == 0:
        r["top_p"] = r["seed"] = None
    return r


def _cache_cases(seed: int = 7, n: int = 30) -> list[tuple]:
    rng = random.Random(seed)
    cases = [({"model": "tiny", "prompt": "ROMEO:", "temperature": 0},)]
    for _ in range(n):
        req = {"model": rng.choice(["tiny", "tiny-int8"]), "prompt": rng.choice(["ROMEO:", "JULIET:", "KING:"])}
        for key, values in (("max_tokens", [1, 16, 32]), ("temperature", [0, 0.0, 0.7, 1]), ("top_p", [1, 0.9]),
                            ("n", [1, 2]), ("stop", ["\n", ["b", "a"], ["a", "b", "a"], None, []]),
                            ("seed", [None, 0, 3]), ("echo", [False, True]), ("stream", [False, True]),
                            ("user", ["ann", "bob"])):
            if rng.random() < 0.5:
                req[key] = rng.choice(values)
        cases.append((req,))
    return cases


def check_canonical_request(fn) -> None:
    """``fn(request: dict) -> dict | None``, the rules of the chapter's cache:

    - None when the request samples (``temperature > 0``) without a ``seed``;
    - otherwise a dict with ``model``, ``prompt`` and every key of ``DEFAULTS`` (missing ones
      filled from it; other keys such as ``stream`` and ``user`` dropped);
    - ``stop``: a sorted list without duplicates (a single string becomes a one-item list, None ``[]``);
    - ``temperature`` and ``top_p`` as floats; for a greedy request (``temperature == 0``)
      ``top_p`` and ``seed`` become None (they cannot change its output).
    """
    check_fn(fn, "check_canonical_request")
    run_cases("check_canonical_request", fn, _solution_canonical_request, _cache_cases())


# ---- 2. power of two choices ----------------------------------------------------------------

def _solution_power_of_two(loads: list[int], seed: int, num_requests: int) -> list[int]:
    """Send ``num_requests`` requests one after the other; each samples two distinct replicas with
    ``rng.sample(range(len(loads)), 2)`` (``rng = random.Random(seed)``, one for the whole run),
    goes to the one with fewer requests (the first sampled on a tie), and adds one to its load."""
    loads, rng = list(loads), random.Random(seed)
    for _ in range(num_requests):
        if len(loads) == 1:
            loads[0] += 1
            continue
        i, j = rng.sample(range(len(loads)), 2)
        k = j if loads[j] < loads[i] else i
        loads[k] += 1
    return loads


def check_power_of_two(fn) -> None:
    """``fn(loads, seed, num_requests) -> final loads`` (see the exercise for the rules)."""
    rng = random.Random(2)
    cases = [([0, 0, 0, 0], 0, 8), ([5, 0], 1, 3), ([3], 4, 2), ([2, 2, 2], 5, 0)]
    cases += [([rng.randrange(6) for _ in range(rng.randint(2, 9))], rng.randrange(100), rng.randint(1, 40))
              for _ in range(12)]
    check_fn(fn, "check_power_of_two")
    run_cases("check_power_of_two", fn, _solution_power_of_two, cases)


# ---- 3. parsing a server-sent-events stream ---------------------------------------------------

def _solution_parse_sse(text: str) -> list:
    return parse_sse(text)


def _sse_cases(seed: int = 11, n: int = 12) -> list[tuple]:
    rng = random.Random(seed)
    cases = [('data: {"text": "O"}\n\ndata: [DONE]\n\n',)]
    for _ in range(n):
        parts = []
        for k in range(rng.randint(1, 5)):
            payload = json.dumps({"index": k, "text": rng.choice(["Hail", " thee", "\n", "é"])},
                                 indent=rng.choice([None, 1]))
            lines = [f"data:{rng.choice([' ', ''])}{line}" for line in payload.split("\n")]
            if rng.random() < 0.3:
                lines.insert(0, rng.choice([": keep-alive", "event: chunk", "id: 7", "retry: 100"]))
            parts.append("\n".join(lines) + "\n\n")
        text = "".join(parts) + "data: [DONE]\n\n"
        if rng.random() < 0.3:
            text = text.replace("\n", "\r\n")
        if rng.random() < 0.3:
            text += 'data: {"cut": '  # the connection broke mid-event
        cases.append((text,))
    return cases


def check_parse_sse(fn) -> None:
    """``fn(text) -> list``: the stream's events in order, JSON payloads decoded, ``"[DONE]"`` kept
    as the string. Events end at a blank line; an event's several ``data:`` lines join with
    ``"\\n"``; one space after ``data:`` is dropped; ``:`` lines are comments; other fields
    (``event:``, ``id:``, ``retry:``) are ignored; ``\\r\\n`` ends lines too; an unfinished last
    event is dropped."""
    check_fn(fn, "check_parse_sse")
    run_cases("check_parse_sse", fn, _solution_parse_sse, _sse_cases())


# ---- plausible wrong answers (for the contract tests) ----------------------------------------

def _wrong_canonical_request(request):
    """Caches sampled requests too, and keeps the stop list's order."""
    r = {**DEFAULTS, **{k: v for k, v in request.items() if k in DEFAULTS}}
    r["model"], r["prompt"] = request["model"], request["prompt"]
    return r


def _wrong_power_of_two(loads, seed, num_requests):
    """Sends every request to the least-loaded replica (no sampling)."""
    loads = list(loads)
    for _ in range(num_requests):
        loads[loads.index(min(loads))] += 1
    return loads


def _wrong_parse_sse(text):
    """Splits on blank lines and reads one data line per event."""
    out = []
    for block in text.split("\n\n")[:-1]:
        payload = block[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


CONTRACT = {
    "check_canonical_request": (_solution_canonical_request, _wrong_canonical_request),
    "check_power_of_two": (_solution_power_of_two, _wrong_power_of_two),
    "check_parse_sse": (_solution_parse_sse, _wrong_parse_sse),
}
