"""The serving benchmark: drive any OpenAI-compatible endpoint with streaming requests and measure
what its users feel (``tutx bench serve``; after ``vllm bench serve``).

:func:`benchmark_serving` sends ``prompts`` (from :func:`tutx.bench.arrivals.sample_prompts`) to
``/v1/completions`` (or ``/v1/chat/completions``) with ``stream=True``, at arrival times drawn by
:func:`tutx.bench.arrivals.arrival_times` and/or under a cap on requests in flight, after a few
warm-up requests that are not counted. The stream is read as raw bytes and split into SSE events
here (:class:`SSEReader`), so that each chunk is timestamped when it arrives and a malformed
stream or an error status becomes a *failed request with a reason*, never a crash. The timelines
go to :func:`tutx.bench.serving_metrics.serving_summary`. :func:`sweep` repeats the run over
request rates: the latency–throughput curve and the rate where the SLO breaks.
"""
from __future__ import annotations

import asyncio
import json
import math
import threading
import time
from dataclasses import dataclass, field

from tutx._validate import check_bool, check_choice, check_int, check_optional_int, check_positive, check_str
from tutx.bench.arrivals import arrival_times, check_rate
from tutx.bench.serving_metrics import RequestRecord, serving_summary, slo_break

ENDPOINTS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


class SSEReader:
    """Incremental SSE parser for an OpenAI stream: ``feed(bytes)`` returns the complete events'
    payloads (``str``), keeping a partial event for the next call. Comments and fields other than
    ``data`` are skipped; ``\\r\\n`` is accepted."""

    def __init__(self):
        self._buffer, self._data = "", []

    def feed(self, chunk: bytes | str) -> list[str]:
        text = chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else chunk
        self._buffer += text.replace("\r\n", "\n")
        events = []
        *lines, self._buffer = self._buffer.split("\n")
        for line in lines:
            if line == "":
                if self._data:
                    events.append("\n".join(self._data))
                self._data = []
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                if name == "data":
                    self._data.append(value[1:] if value.startswith(" ") else value)
        return events

    @property
    def pending(self) -> bool:
        """Whether bytes of an unfinished event are left over."""
        return bool(self._buffer.strip() or self._data)


def _chunk_text(event: dict, endpoint: str) -> str:
    choices = event.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    if endpoint == "chat":
        return (c.get("delta") or {}).get("content") or ""
    return c.get("text") or ""


def _body(prompt, model: str, endpoint: str, token_ids: bool, temperature: float, ignore_eos: bool) -> dict:
    body = {"model": model, "max_tokens": prompt.output_len, "temperature": temperature, "ignore_eos": ignore_eos,
            "stream": True, "stream_options": {"include_usage": True}}
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": prompt.text}]
    else:
        body["prompt"] = list(prompt.token_ids) if token_ids else prompt.text
    return body


async def send_request(client, url: str, body: dict, endpoint: str, prompt_tokens: int) -> RequestRecord:
    """One streaming request; every way it can go wrong ends as ``record.error``."""
    import httpx

    record = RequestRecord(send=time.perf_counter(), prompt_tokens=prompt_tokens)
    chunks = 0
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode("utf-8", errors="replace")
                record.error = f"HTTP {response.status_code}: {' '.join(text.split())[:120]}"
                return record
            reader, done = SSEReader(), False
            async for raw in response.aiter_bytes():
                now = time.perf_counter()
                for payload in reader.feed(raw):
                    if payload == "[DONE]":
                        done = True
                        continue
                    try:
                        event = json.loads(payload)
                    except ValueError:
                        record.error = f"malformed SSE: not JSON: {payload[:60]!r}"
                        return record
                    if not isinstance(event, dict):
                        record.error = f"malformed SSE: expected a JSON object, got {payload[:60]!r}"
                        return record
                    if "error" in event:
                        record.error = f"error event: {str(event['error'])[:120]}"
                        return record
                    if _chunk_text(event, endpoint):
                        record.chunk_times.append(now)
                        chunks += 1
                    usage = event.get("usage")
                    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                        record.output_tokens = usage["completion_tokens"]
                        if isinstance(usage.get("prompt_tokens"), int):
                            record.prompt_tokens = usage["prompt_tokens"]
            record.end = time.perf_counter()
            if not done:
                record.error = "malformed SSE: stream ended without [DONE]" + (" (cut mid-event)" if reader.pending else "")
            elif not chunks:
                record.error = "no output text in the stream"
            elif not record.output_tokens:
                record.output_tokens = chunks  # no usage reported: one token per chunk
    except httpx.TimeoutException as exc:
        record.error = f"timeout ({type(exc).__name__})"
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:160]
    return record


async def check_endpoint(base_url: str, model: str | None, connect_timeout: float = 5.0, api_key: str | None = None) -> str:
    """Fail fast with a clear error if ``base_url`` does not answer; returns the model id to send
    (``model``, or the first one ``/v1/models`` lists)."""
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=httpx.Timeout(2 * connect_timeout, connect=connect_timeout)) as c:
            r = await c.get(f"{base_url}/v1/models", headers=headers)
    except httpx.HTTPError as exc:
        raise ConnectionError(f"base_url: cannot reach {base_url!r} ({type(exc).__name__}: {exc or 'no answer'}); "
                              f"is the server running and the URL right?") from None
    if model is not None:
        return model
    try:
        return r.json()["data"][0]["id"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise ValueError(f"model: not given and {base_url}/v1/models (HTTP {r.status_code}) lists none; "
                         f"pass model=...") from None


@dataclass
class ServingRun:
    """One benchmark run: its settings, the per-request records, and the metrics."""

    config: dict
    records: list = field(repr=False)
    metrics: dict

    def row(self) -> dict:
        """Settings and metrics in one flat-ish dict (a row of a results file)."""
        return {**self.config, **self.metrics}


async def benchmark_serving_async(base_url: str, prompts, model: str | None = None, *, request_rate: float = math.inf,
                                  burstiness: float = 1.0, max_concurrency: int | None = None, warmup: int = 1,
                                  endpoint: str = "completions", token_ids: bool = True, slos: dict | None = None,
                                  seed: int = 0, temperature: float = 0.0, ignore_eos: bool = True,
                                  timeout: float = 300.0, connect_timeout: float = 5.0,
                                  api_key: str | None = None) -> ServingRun:
    """The async core of :func:`benchmark_serving` (use it where an event loop already runs)."""
    import httpx

    base_url = check_str("base_url", base_url).rstrip("/")
    prompts = list(prompts)
    if not prompts:
        raise ValueError("prompts: expected at least one prompt, got none")
    check_rate(request_rate)
    check_optional_int("max_concurrency", max_concurrency, minimum=1)
    check_int("warmup", warmup, minimum=0)
    check_choice("endpoint", endpoint, tuple(ENDPOINTS))
    check_bool("token_ids", token_ids)
    check_positive("timeout", timeout)
    check_positive("connect_timeout", connect_timeout)
    model = await check_endpoint(base_url, model, connect_timeout, api_key)
    offsets = arrival_times(len(prompts), request_rate, burstiness, seed)
    url = base_url + ENDPOINTS[endpoint]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=max_concurrency or len(prompts), max_keepalive_connections=max_concurrency or 64)
    gate = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout, connect=connect_timeout), limits=limits,
                                 headers=headers) as client:
        def one(p):
            return send_request(client, url, _body(p, model, endpoint, token_ids, temperature, ignore_eos), endpoint,
                                p.prompt_len)

        warmup_failed = 0
        for p in prompts[:warmup]:  # not counted; a failure here is reported, not raised
            warmup_failed += (await one(p)).error is not None

        async def gated(p):
            if gate is None:
                return await one(p)
            async with gate:
                return await one(p)

        start, tasks = time.perf_counter(), []
        for p, offset in zip(prompts, offsets):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(gated(p)))
        records = await asyncio.gather(*tasks)
        ends = [r.end for r in records if r.end is not None] or [time.perf_counter()]
        duration = max(max(ends) - start, 1e-9)
    config = {"base_url": base_url, "model": model, "endpoint": endpoint, "request_rate": request_rate,
              "burstiness": burstiness, "max_concurrency": max_concurrency, "num_prompts": len(prompts),
              "warmup": warmup, "warmup_failed": warmup_failed, "seed": seed}
    return ServingRun(config, list(records), serving_summary(records, duration, slos))


def _run_sync(coro):
    """``asyncio.run(coro)``, or in a helper thread when this thread already runs a loop (Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box = {}

    def target():
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc
    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["value"]


def benchmark_serving(base_url: str, prompts, model: str | None = None, **kwargs) -> ServingRun:
    """Benchmark the OpenAI-compatible server at ``base_url`` with ``prompts``; see
    :func:`benchmark_serving_async` for the keywords (``request_rate``, ``burstiness``,
    ``max_concurrency``, ``warmup``, ``endpoint``, ``slos``, ``seed``, ``timeout`` …).

    An unreachable ``base_url`` raises ``ConnectionError`` within ``connect_timeout`` seconds.
    """
    return _run_sync(benchmark_serving_async(base_url, prompts, model, **kwargs))


def sweep(base_url: str, prompts, rates, model: str | None = None, progress: bool = True, **kwargs) -> dict:
    """One run per request rate (in the order given); ``{"rows": [...], "slo_break": row | None}``.

    Each row is :meth:`ServingRun.row`; with ``slos=...`` the rows carry goodput and
    ``slo_break`` is the first rate where fewer than 90% of the requests met the SLOs.
    """
    rates = [check_rate(r) for r in rates]
    if not rates:
        raise ValueError("rates: expected at least one request rate, got none")
    rows = []
    for rate in rates:
        run = benchmark_serving(base_url, prompts, model, request_rate=rate, **kwargs)
        rows.append(run.row())
        if progress:
            m = run.metrics
            print(f"rate {rate:>6g} req/s: {m['request_throughput']:.2f} req/s, {m['output_throughput']:.0f} tok/s, "
                  f"TTFT p50 {m['ttft_ms']['median']:.0f} ms, TPOT p50 {m['tpot_ms']['median']:.1f} ms, "
                  f"failed {m['failed']}", flush=True)
    return {"rows": rows, "slo_break": slo_break(rows)}


__all__ = ["SSEReader", "send_request", "check_endpoint", "ServingRun", "benchmark_serving",
           "benchmark_serving_async", "sweep", "ENDPOINTS"]
