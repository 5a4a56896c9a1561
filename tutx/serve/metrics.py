"""Prometheus metrics of the server, named after vLLM's (``vllm:`` becomes ``tutx:``), one registry per app.

Every metric carries a ``model_name`` label. Request-level figures (time to first token,
inter-token latency, end-to-end latency, queue time, token counts, finish reasons) are recorded
by the handlers; engine-level ones (running / waiting requests, KV-cache usage, preemptions) are
read from the async engine's latest snapshot when Prometheus scrapes ``/metrics``.
"""
from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                   7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
               0.4, 0.5, 0.75, 1.0, 2.5)


class ServerMetrics:
    """The server's counters, gauges and histograms in their own ``CollectorRegistry``."""

    def __init__(self, model_name: str, front=None, registry: CollectorRegistry | None = None):
        disable_created_metrics()  # no *_created series: they only add noise to a scrape
        self.registry = registry = CollectorRegistry() if registry is None else registry
        self.model_name = model_name
        m = ["model_name"]

        def hist(name, doc, buckets=LATENCY_BUCKETS):
            return Histogram(f"tutx:{name}", doc, m, buckets=buckets, registry=registry).labels(model_name)

        self.requests = Counter("tutx:http_requests", "HTTP requests by endpoint and status",
                                m + ["endpoint", "status"], registry=registry)
        self.request_success = Counter("tutx:request_success", "Finished choices by finish reason",
                                       m + ["finished_reason"], registry=registry)
        self.prompt_tokens = Counter("tutx:prompt_tokens", "Prompt tokens processed", m,
                                     registry=registry).labels(model_name)
        self.generation_tokens = Counter("tutx:generation_tokens", "Tokens generated", m,
                                         registry=registry).labels(model_name)
        self.ttft = hist("time_to_first_token_seconds", "Time to first token")
        self.itl = hist("inter_token_latency_seconds", "Time between two streamed tokens", ITL_BUCKETS)
        self.e2e = hist("e2e_request_latency_seconds", "End-to-end request latency")
        self.queue_time = hist("request_queue_time_seconds", "Time from submission to the first step that ran it")
        self.cache_hits = Counter("tutx:response_cache_hits", "Response-cache hits", m,
                                  registry=registry).labels(model_name)
        self.cache_misses = Counter("tutx:response_cache_misses", "Response-cache misses (cacheable requests)",
                                    m, registry=registry).labels(model_name)
        self.preemptions = Counter("tutx:num_preemptions", "Sequences preempted (recomputed later)", m,
                                   registry=registry).labels(model_name)
        self.running = Gauge("tutx:num_requests_running", "Sequences in the engine's running batch", m,
                             registry=registry).labels(model_name)
        self.waiting = Gauge("tutx:num_requests_waiting", "Sequences waiting (engine queue and inbox)", m,
                             registry=registry).labels(model_name)
        self.kv_usage = Gauge("tutx:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (0..1)", m,
                              registry=registry).labels(model_name)
        self._last_preemptions = 0
        if front is not None:
            self.bind(front)

    def bind(self, front) -> None:
        """Read the gauges from ``front.stats`` at scrape time; count preemptions after each step."""
        self.running.set_function(lambda: front.stats.num_running)
        self.waiting.set_function(lambda: max(0, front.num_outstanding - front.stats.num_running))
        self.kv_usage.set_function(lambda: front.stats.kv_usage)
        front.step_hooks.append(self._on_step)

    def _on_step(self, stats, outputs) -> None:
        if stats.num_preemptions > self._last_preemptions:
            self.preemptions.inc(stats.num_preemptions - self._last_preemptions)
        self._last_preemptions = stats.num_preemptions

    def count_request(self, endpoint: str, status: int) -> None:
        self.requests.labels(self.model_name, endpoint, str(status)).inc()

    def count_finish(self, reason: str | None) -> None:
        self.request_success.labels(self.model_name, reason or "unknown").inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


__all__ = ["ServerMetrics"]
