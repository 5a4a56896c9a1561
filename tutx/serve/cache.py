"""A response cache for deterministic requests: LRU with a size bound and a time-to-live.

Only requests whose output is a function of the request are cached: greedy (``temperature=0``)
or sampled with an explicit ``seed``. The key is a canonical form of the *normalised* request —
defaults filled in, the prompt as token ids (so text and ids that mean the same prompt share an
entry), stop strings sorted, fields that do not change the output (``stream``, ``user``)
dropped, the model name included — serialised as sorted JSON and hashed with SHA-256. Never
``hash(str(request))``: that differs between processes, between equal dicts built in another
order, and between ``1`` and ``1.0``.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict

from tutx._validate import check_int, check_positive

OUTPUT_FIELDS = ("endpoint", "model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                 "n", "echo", "logprobs", "ignore_eos")


def is_deterministic(temperature: float, seed: int | None) -> bool:
    """Whether the same request always gets the same output (greedy, or seeded sampling)."""
    return temperature == 0 or seed is not None


def canonical_key(request: dict) -> str:
    """SHA-256 of the normalised request's output-relevant fields as canonical JSON.

    ``request`` holds the fields of :data:`OUTPUT_FIELDS` (missing ones count as None): numbers
    are normalised (``1`` and ``1.0`` agree, ``top_k`` of ``-1``/None/0 means "all tokens"), ``stop`` is
    a sorted list, and sampling fields are dropped for greedy requests (they cannot change the output).
    """
    norm = {f: request.get(f) for f in OUTPUT_FIELDS}
    for f in ("temperature", "top_p"):
        if norm[f] is not None:
            norm[f] = float(norm[f])
    if norm["top_k"] in (None, -1, 0):
        norm["top_k"] = None
    stop = norm["stop"]
    norm["stop"] = sorted({stop} if isinstance(stop, str) else set(stop or ()))
    if norm["temperature"] == 0:
        norm["top_p"] = norm["top_k"] = norm["seed"] = None
    blob = json.dumps(norm, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


class ResponseCache:
    """``get``/``put`` by key; least recently used entries leave first, entries older than ``ttl`` expire."""

    def __init__(self, maxsize: int = 1024, ttl: float = 600.0, clock=time.monotonic):
        self.maxsize = check_int("maxsize", maxsize, minimum=0)
        self.ttl = check_positive("ttl", ttl)
        self.clock = clock
        self.hits = self.misses = 0
        self._data: OrderedDict[str, tuple[float, object]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"ResponseCache(size={len(self)}/{self.maxsize}, ttl={self.ttl}, hits={self.hits}, misses={self.misses})"

    def get(self, key: str):
        """The cached value, or None (a miss; an expired entry is dropped)."""
        entry = self._data.get(key)
        if entry is not None and self.clock() - entry[0] <= self.ttl:
            self._data.move_to_end(key)
            self.hits += 1
            return entry[1]
        if entry is not None:
            del self._data[key]
        self.misses += 1
        return None

    def put(self, key: str, value) -> None:
        if self.maxsize == 0:
            return
        self._data[key] = (self.clock(), value)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()


__all__ = ["ResponseCache", "canonical_key", "is_deterministic", "OUTPUT_FIELDS"]
