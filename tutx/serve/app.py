"""``create_app(engine, config)``: the OpenAI-compatible FastAPI app over an :class:`~tutx.engine.LLMEngine`.

Nothing runs at import. The app's lifespan starts the engine's worker thread and stops it.
Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (both
stream with ``"stream": true``), ``GET /health``, ``GET /metrics``, ``POST /tokenize``,
``POST /detokenize``. Errors use OpenAI's body ``{"error": {"message", "type", "param", "code"}}``.
"""
from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from tutx.serve.async_engine import AsyncEngine
from tutx.serve.cache import ResponseCache
from tutx.serve.config import ServerConfig
from tutx.serve.generation import run_plan
from tutx.serve.metrics import ServerMetrics
from tutx.serve.middleware import BodyTooLarge, Gate
from tutx.serve.openai_api import plan_chat, plan_completion
from tutx.serve.protocol import (APIError, ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                 TokenizeRequest, apply_chat_template, error_body)

PATHS = ("/v1/models", "/v1/completions", "/v1/chat/completions", "/health", "/metrics", "/tokenize", "/detokenize")


@dataclass
class ServerState:
    """What the handlers share (``app.state.tutx``)."""

    engine: object
    config: ServerConfig
    front: AsyncEngine
    metrics: ServerMetrics
    cache: ResponseCache | None
    draining: bool = False
    started: float = 0.0
    known_paths: tuple = PATHS


def _validation_error(exc: RequestValidationError) -> APIError:
    err = exc.errors()[0] if exc.errors() else {}
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    if err.get("type") == "json_invalid":
        return APIError(400, f"request body: malformed JSON ({err.get('msg', '')})", None, code="invalid_json")
    # Union members add their type name to loc (e.g. ["prompt", "str"]): name the field, not the member.
    param = ".".join(x for x in loc if not x.startswith(("str", "list[", "int", "function-", "float", "bool")))
    msg = err.get("msg", "invalid value")
    return APIError(400, f"{param or 'request body'}: {msg}, got {err.get('input')!r:.100}", param or None)


def _http_error(exc: StarletteHTTPException) -> APIError:
    if isinstance(exc.__cause__, BodyTooLarge):
        return APIError(413, "request body: over the size limit", None, code="body_too_large")
    if exc.status_code == 400:
        return APIError(400, f"request body: {exc.detail}", None, code="invalid_json")
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
    return APIError(exc.status_code, str(exc.detail), None, kind)


def create_app(engine, config: ServerConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``engine`` (an :class:`~tutx.engine.LLMEngine` with a tokenizer)."""
    config = ServerConfig() if config is None else config
    if not isinstance(config, ServerConfig):
        raise TypeError(f"config: expected a ServerConfig, got {type(config).__name__}")
    if getattr(engine, "tokenizer", None) is None:
        raise ValueError("engine: expected an LLMEngine built with a tokenizer (the server speaks text)")
    front = AsyncEngine(engine, config.max_queued)
    state = ServerState(engine, config, front, ServerMetrics(config.model_name, front),
                        ResponseCache(config.cache_size, config.cache_ttl) if config.cache_size else None)

    @asynccontextmanager
    async def lifespan(app):
        state.started = time.time()
        front.start()
        try:
            yield
        finally:
            front.stop()

    app = FastAPI(title="tutx OpenAI-compatible server", version="0.1.0", lifespan=lifespan)
    app.state.tutx = state
    app.add_middleware(Gate, state=state)

    @app.exception_handler(APIError)
    async def _api_error(request, exc: APIError):
        return JSONResponse(exc.body(), exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        return await _api_error(request, _validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, exc):
        return await _api_error(request, _http_error(exc))

    @app.exception_handler(Exception)
    async def _crash(request, exc):
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), 500)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": int(state.started),
                                            "owned_by": "tutx", "max_model_len": engine.config.max_model_len}]}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        plan = plan_completion(body, engine, config.model_name, config.max_n, config.default_max_tokens)
        return await run_plan(request, plan)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        plan = plan_chat(body, engine, config.model_name, config.max_n, config.default_max_tokens)
        return await run_plan(request, plan)

    @app.get("/health")
    async def health():
        if not front.is_running:
            raise APIError(503, "the engine worker is not running", None, "unavailable")
        return {"status": "ok", "running": front.stats.num_running, "outstanding": front.num_outstanding}

    @app.get("/metrics")
    async def metrics():
        body, content_type = state.metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        if body.model is not None and body.model != config.model_name:
            raise APIError(400, f"model: the model {body.model!r} does not exist", "model", code="model_not_found")
        if (body.prompt is None) == (body.messages is None):
            raise APIError(400, "prompt: give exactly one of prompt and messages", "prompt")
        text = body.prompt if body.prompt is not None else apply_chat_template(body.messages,
                                                                                body.add_generation_prompt)
        tokens = list(engine.tokenizer.encode(text))
        return {"tokens": tokens, "count": len(tokens), "max_model_len": engine.config.max_model_len}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        if body.model is not None and body.model != config.model_name:
            raise APIError(400, f"model: the model {body.model!r} does not exist", "model", code="model_not_found")
        if not all(0 <= t < engine.vocab_size for t in body.tokens):
            raise APIError(400, f"tokens: token ids must lie in [0, {engine.vocab_size})", "tokens")
        return {"prompt": engine.tokenizer.decode(body.tokens)}

    return app


__all__ = ["create_app", "ServerState"]
