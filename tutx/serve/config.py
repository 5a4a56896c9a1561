"""The server's settings: one frozen dataclass that checks itself (see CONTRIBUTING.md, "Errors")."""
from __future__ import annotations

from dataclasses import dataclass

from tutx._validate import check_int, check_number, check_optional_int, check_str


@dataclass(frozen=True)
class ServerConfig:
    """What ``create_app`` and ``tutx serve`` need besides the engine.

    - ``model_name``: the id clients send as ``model`` and ``/v1/models`` lists.
    - ``api_key``: when set, ``/v1/*``, ``/tokenize`` and ``/detokenize`` need ``Authorization: Bearer KEY``.
    - ``max_queued``: sequences allowed to wait beyond the engine's running batch; more get ``429``.
    - ``max_n``: the largest ``n`` (choices per request).
    - ``default_max_tokens``: ``max_tokens`` of a chat request that sets none (the context bounds it too).
    - ``request_timeout``: seconds a request may take end to end before it is aborted (``408``).
    - ``max_body_bytes``: larger request bodies get ``413``.
    - ``shutdown_timeout``: seconds SIGTERM waits for running requests before aborting them.
    - ``cache_size`` / ``cache_ttl``: the response cache (entries, seconds); ``cache_size=0`` turns it off.
    - ``retry_after``: seconds a ``429`` or ``503`` asks the client to wait.
    """

    model_name: str = "tiny"
    api_key: str | None = None
    max_queued: int = 64
    max_n: int = 8
    default_max_tokens: int = 128
    request_timeout: float = 600.0
    max_body_bytes: int = 1_000_000
    shutdown_timeout: float = 30.0
    cache_size: int = 1024
    cache_ttl: float = 600.0
    retry_after: int = 1

    def __post_init__(self):
        check_str("model_name", self.model_name)
        if self.api_key is not None:
            check_str("api_key", self.api_key)
        check_int("max_queued", self.max_queued, minimum=0)
        check_int("max_n", self.max_n, minimum=1, maximum=128)
        check_int("default_max_tokens", self.default_max_tokens, minimum=1)
        check_number("request_timeout", self.request_timeout, minimum=0, strict_min=True)
        check_int("max_body_bytes", self.max_body_bytes, minimum=1)
        check_number("shutdown_timeout", self.shutdown_timeout, minimum=0)
        check_int("cache_size", self.cache_size, minimum=0)
        check_number("cache_ttl", self.cache_ttl, minimum=0, strict_min=True)
        check_optional_int("retry_after", self.retry_after, minimum=0)


__all__ = ["ServerConfig"]
