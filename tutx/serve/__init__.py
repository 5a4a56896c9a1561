"""Chapter 7's serving stack: an OpenAI-compatible server on :class:`~tutx.engine.LLMEngine`.

One concept per module:

- :mod:`~tutx.serve.async_engine` — ``AsyncEngine``: the worker thread that owns the engine;
- :mod:`~tutx.serve.protocol` — request bodies (Pydantic), the error body, the chat template;
- :mod:`~tutx.serve.openai_api` — request to engine sequences, outputs to OpenAI bodies;
- :mod:`~tutx.serve.generation` — one request end to end: cache, stream, timeout, disconnect;
- :mod:`~tutx.serve.app` — ``create_app(engine, config)``, the FastAPI app factory;
- :mod:`~tutx.serve.cache` — ``ResponseCache`` (LRU + TTL) and the canonical key;
- :mod:`~tutx.serve.metrics` — Prometheus metrics named after vLLM's;
- :mod:`~tutx.serve.policies` / :mod:`~tutx.serve.balancer` — the load balancer over replicas;
- :mod:`~tutx.serve.cli` — ``tutx serve`` and ``tutx serve-balancer``;
- :mod:`~tutx.serve.launch` — ``start_server``: either one as a subprocess on loopback.

FastAPI and uvicorn are imported when this package is, not when ``tutx`` is.
"""
from tutx.serve.async_engine import AsyncEngine, EngineStats, EngineStepError, QueueFull, RequestHandle
from tutx.serve.cache import ResponseCache, canonical_key, is_deterministic
from tutx.serve.config import ServerConfig
from tutx.serve.launch import ServerProcess, free_port, start_server
from tutx.serve.policies import POLICIES, Balancer, Replica, power_of_two
from tutx.serve.sse import format_event, parse_sse


def create_app(engine, config=None):
    """The OpenAI-compatible FastAPI app over ``engine`` (see :func:`tutx.serve.app.create_app`)."""
    from tutx.serve.app import create_app as _create

    return _create(engine, config)


def create_balancer_app(backends, policy="least-outstanding", health_interval=1.0, seed=0):
    """The load balancer app over ``backends`` (see :func:`tutx.serve.balancer.create_balancer_app`)."""
    from tutx.serve.balancer import create_balancer_app as _create

    return _create(backends, policy, health_interval, seed)


__all__ = ["create_app", "create_balancer_app", "ServerConfig", "AsyncEngine", "RequestHandle", "EngineStats",
           "QueueFull", "EngineStepError", "ResponseCache", "canonical_key", "is_deterministic", "Balancer",
           "Replica", "POLICIES", "power_of_two", "format_event", "parse_sse", "start_server", "ServerProcess",
           "free_port"]
