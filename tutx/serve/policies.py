"""How a balancer picks a replica: round-robin, least outstanding requests, power of two choices,
prefix affinity. Plain Python (no network), so each rule is testable on its own.

Prefix affinity sends requests that share a prompt prefix to the same replica, whose prefix
cache then already holds that prefix's KV blocks (as the SGLang and vLLM routers do): a
consistent-hash ring over the replicas, keyed by the prompt's first block of characters. When
the chosen replica is much busier than the least-loaded one it falls back to the least-loaded.
"""
from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass

from tutx._validate import check_choice, check_int, check_number

#: The balancing policies ``Balancer`` and ``tutx serve-balancer --policy`` accept.
POLICIES = ("round-robin", "least-outstanding", "power-of-two", "prefix-affinity")


@dataclass
class Replica:
    """One backend: its base URL, whether health checks admit it, and its requests in flight."""

    url: str
    healthy: bool = True
    outstanding: int = 0
    served: int = 0
    failures: int = 0


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def power_of_two(replicas: list[Replica], rng: random.Random) -> Replica:
    """Sample two distinct replicas at random; take the one with fewer requests in flight (the first on a tie)."""
    if len(replicas) == 1:
        return replicas[0]
    a, b = rng.sample(replicas, 2)
    return b if b.outstanding < a.outstanding else a


class Balancer:
    """``choose(replicas, prefix)`` under one of :data:`POLICIES`; ``replicas`` are the healthy ones."""

    def __init__(self, policy: str = "least-outstanding", seed: int = 0, prefix_chars: int = 64,
                 balance_abs: int = 4, balance_rel: float = 2.0, virtual_nodes: int = 64):
        self.policy = check_choice("policy", policy, POLICIES)
        self.prefix_chars = check_int("prefix_chars", prefix_chars, minimum=1)
        self.balance_abs = check_int("balance_abs", balance_abs, minimum=0)
        self.balance_rel = check_number("balance_rel", balance_rel, minimum=1)
        self.virtual_nodes = check_int("virtual_nodes", virtual_nodes, minimum=1)
        self.rng = random.Random(seed)
        self._next = 0

    def __repr__(self) -> str:
        return f"Balancer(policy={self.policy!r})"

    def choose(self, replicas: list[Replica], prefix: str | None = None) -> Replica:
        if not replicas:
            raise ValueError("replicas: expected at least one healthy replica, got none")
        if self.policy == "round-robin":
            self._next += 1
            return replicas[(self._next - 1) % len(replicas)]
        if self.policy == "least-outstanding":
            return min(replicas, key=lambda r: r.outstanding)
        if self.policy == "power-of-two":
            return power_of_two(replicas, self.rng)
        least = min(replicas, key=lambda r: r.outstanding)
        if not prefix:
            return least
        chosen = self.ring_owner(replicas, prefix[: self.prefix_chars])
        busy = chosen.outstanding - least.outstanding > self.balance_abs and \
            chosen.outstanding > self.balance_rel * least.outstanding
        return least if busy else chosen

    def ring_owner(self, replicas: list[Replica], key: str) -> Replica:
        """The replica owning ``key`` on a consistent-hash ring (``virtual_nodes`` points per replica):
        removing a replica moves only the keys it owned."""
        ring = sorted((_hash(f"{r.url}#{v}"), i) for i, r in enumerate(replicas) for v in range(self.virtual_nodes))
        points = [p for p, _ in ring]
        k = bisect.bisect(points, _hash(key)) % len(ring)
        return replicas[ring[k][1]]


__all__ = ["Balancer", "Replica", "POLICIES", "power_of_two"]
