"""``tutx serve-balancer``: an async reverse proxy over ``tutx serve`` replicas.

Requests are forwarded with streaming pass-through (SSE chunks go out as they arrive). The
replica is picked by a :class:`~tutx.serve.policies.Balancer` among the healthy ones; an active
health check (``GET /health`` every ``health_interval`` seconds) ejects replicas that fail and
re-admits them when they answer again. A connection failure, or a 503 from a draining replica,
before any byte reached the client is retried on another replica; after the first byte the
client sees the stream end. A client that disconnects closes the upstream stream, so the replica
aborts the request and frees its blocks.
"""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tutx._validate import check_positive
from tutx.serve.policies import Balancer, Replica
from tutx.serve.protocol import error_body

FORWARD_REQUEST = ("authorization", "content-type", "x-request-id", "accept")
FORWARD_RESPONSE = ("content-type", "x-request-id", "retry-after", "cache-control")


def prompt_prefix(body: bytes) -> str | None:
    """The text the prefix-affinity policy hashes: a completion's prompt or the chat messages' text."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if "prompt" in data:
        p = data["prompt"]
        return p if isinstance(p, str) else json.dumps(p)
    if isinstance(data.get("messages"), list):
        return json.dumps(data["messages"])
    return None


async def check_health(client: httpx.AsyncClient, replicas: list[Replica], timeout: float = 1.0) -> None:
    """One round of health checks: a replica is healthy when ``GET /health`` answers 200 in time."""
    async def one(r: Replica):
        try:
            resp = await client.get(f"{r.url}/health", timeout=timeout)
            r.healthy = resp.status_code == 200
        except httpx.HTTPError:
            r.healthy = False
    await asyncio.gather(*(one(r) for r in replicas))


def create_balancer_app(backends: list[str], policy: str = "least-outstanding", health_interval: float = 1.0,
                        seed: int = 0) -> FastAPI:
    """The balancer app over ``backends`` (base URLs such as ``http://127.0.0.1:8001``)."""
    if not backends or not all(isinstance(b, str) and b.startswith(("http://", "https://")) for b in backends):
        raise ValueError(f"backends: expected a non-empty list of http(s) URLs, got {backends!r}")
    check_positive("health_interval", health_interval)
    replicas = [Replica(b.rstrip("/")) for b in backends]
    chooser = Balancer(policy, seed=seed)
    state = {"client": None}

    @asynccontextmanager
    async def lifespan(app):
        # idle connections expire before uvicorn's 5 s keep-alive does: no reuse of a closing socket
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256, keepalive_expiry=2.0)
        client = state["client"] = httpx.AsyncClient(timeout=httpx.Timeout(600.0, connect=2.0), limits=limits)

        async def health_loop():
            while True:
                await check_health(client, replicas)
                await asyncio.sleep(health_interval)

        task = asyncio.create_task(health_loop())
        try:
            yield
        finally:
            task.cancel()
            await client.aclose()

    app = FastAPI(title="tutx balancer", lifespan=lifespan)
    app.state.replicas, app.state.balancer = replicas, chooser

    @app.get("/balancer/replicas")
    async def status():
        return [{"url": r.url, "healthy": r.healthy, "outstanding": r.outstanding, "served": r.served,
                 "failures": r.failures} for r in replicas]

    @app.get("/health")
    async def health():
        up = sum(r.healthy for r in replicas)
        return JSONResponse({"status": "ok" if up else "no healthy replica", "healthy": up}, 200 if up else 503)

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def proxy(path: str, request: Request):
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() in FORWARD_REQUEST}
        prefix = prompt_prefix(body) if chooser.policy == "prefix-affinity" else None
        tried: set[str] = set()
        while True:
            candidates = [r for r in replicas if r.healthy and r.url not in tried]
            if not candidates:
                return JSONResponse(error_body("no healthy replica could take the request", "unavailable",
                                               code="no_replica"), 503, headers={"Retry-After": "1"})
            replica = chooser.choose(candidates, prefix)
            tried.add(replica.url)
            upstream = state["client"].build_request(request.method, f"{replica.url}/{path}", content=body,
                                                     headers=headers, params=request.query_params)
            replica.outstanding += 1
            try:
                resp = await state["client"].send(upstream, stream=True)
            except httpx.TransportError as exc:  # nothing was sent to the client yet: retry elsewhere
                replica.outstanding -= 1
                replica.failures += 1
                if isinstance(exc, httpx.ConnectError):  # refused: it is down (the health check re-admits it)
                    replica.healthy = False
                continue
            if resp.status_code == 503 and len(tried) < len(replicas):  # draining: try another
                await resp.aclose()
                replica.outstanding -= 1
                replica.healthy = False
                continue
            replica.served += 1
            return StreamingResponse(_relay(resp, replica), status_code=resp.status_code,
                                     headers={k: v for k, v in resp.headers.items() if k.lower() in FORWARD_RESPONSE})

    return app


async def _relay(resp: httpx.Response, replica: Replica):
    try:
        async for part in resp.aiter_raw():
            yield part
    except httpx.TransportError:  # the replica died mid-stream: the client sees the stream end
        replica.failures += 1
    finally:
        replica.outstanding -= 1
        await resp.aclose()


__all__ = ["create_balancer_app", "check_health", "prompt_prefix"]
