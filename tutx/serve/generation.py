"""Run a :class:`~tutx.serve.openai_api.Plan` on the async engine: a JSON body or an SSE stream.

Both paths share the rules: a cached answer is served without touching the engine; a request
past ``request_timeout`` is aborted (408); a client that goes away aborts its sequences, so
their KV blocks are freed at the engine's next turn; metrics are recorded once per request.
"""
from __future__ import annotations

import asyncio
import time
import uuid

from fastapi.responses import JSONResponse, Response, StreamingResponse

from tutx.serve.async_engine import EngineStepError, QueueFull, RequestAborted
from tutx.serve.openai_api import Plan, choice_logprobs, chunk, final_body, usage_chunk
from tutx.serve.protocol import APIError
from tutx.serve.sse import DONE, format_event


class _Tracker:
    """Per-request timing for the metrics: TTFT, inter-token gaps, queue time, end to end."""

    def __init__(self, metrics, plan: Plan):
        self.metrics, self.plan = metrics, plan
        self.start = time.perf_counter()
        self.first: float | None = None
        self.last: dict[int, float] = {}
        self.choices: list[dict | None] = [None] * plan.num_choices

    def on_output(self, index: int, out) -> None:
        now = time.perf_counter()
        if self.first is None:
            self.first = now
            self.metrics.ttft.observe(now - self.start)
        if index in self.last:
            self.metrics.itl.observe(now - self.last[index])
        self.last[index] = now
        if out.finished:
            self.choices[index] = {"text": out.text, "num_tokens": len(out.token_ids),
                                   "finish_reason": out.finish_reason, "token_ids": list(out.token_ids),
                                   "logprobs": getattr(out, "token_logprobs", None),
                                   "prompt_logprobs": getattr(out, "prompt_logprobs", None)}

    def done(self, handle=None) -> list[dict]:
        m = self.metrics
        m.e2e.observe(time.perf_counter() - self.start)
        if handle is not None and handle.first_scheduled_at is not None:
            m.queue_time.observe(max(0.0, handle.first_scheduled_at - handle.submitted_at))
        m.prompt_tokens.inc(self.plan.num_prompt_tokens)
        m.generation_tokens.inc(sum(c["num_tokens"] for c in self.choices if c))
        for c in self.choices:
            m.count_finish(c["finish_reason"] if c else "abort")
        return self.choices


def _submit(st, plan: Plan):
    try:
        handle = st.front.submit(uuid.uuid4().hex[:16], plan.sequences())
    except QueueFull as exc:
        raise APIError(429, f"the server is busy ({exc}); retry later", None, "rate_limit_error",
                       "queue_full", {"Retry-After": str(st.config.retry_after)}) from exc
    timeout = APIError(408, f"request timed out after {st.config.request_timeout:g} s", None, "timeout", "timeout")
    timer = asyncio.get_running_loop().call_later(st.config.request_timeout, handle.queue.put_nowait, (0, timeout))
    return handle, timer


def _as_api_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, RequestAborted):
        return APIError(503, str(exc), None, "unavailable", "aborted")
    if isinstance(exc, EngineStepError):
        return APIError(500, str(exc), None, "server_error", "engine_step_failed")
    if isinstance(exc, (ValueError, TypeError)):
        return APIError(400, str(exc), str(exc).partition(":")[0] or None)
    return APIError(500, f"{type(exc).__name__}: {exc}", None, "server_error")


async def _collect(handle, tracker: _Tracker) -> list[dict]:
    async for index, out in handle:
        tracker.on_output(index, out)
    return tracker.choices


async def run_plan(request, plan: Plan):
    """The response for ``plan``: from the cache, a score-only echo, a JSON body or an SSE stream."""
    st = request.app.state.tutx
    rid = request.state.request_id
    tracker = _Tracker(st.metrics, plan)
    cached = None
    if plan.cache_key is not None and st.cache is not None:
        cached = st.cache.get(plan.cache_key)
        (st.metrics.cache_hits if cached is not None else st.metrics.cache_misses).inc()
    if cached is None and plan.score_only:
        cached = [{"text": "", "num_tokens": 0, "finish_reason": "length", "token_ids": []}] * plan.num_choices
    if cached is not None:
        tracker.choices = list(cached)
        if plan.stream:
            return StreamingResponse(_replay(plan, rid, cached, tracker, st.engine.tokenizer),
                                     media_type="text/event-stream")
        tracker.done()
        return JSONResponse(final_body(plan, rid, cached, st.engine.tokenizer))
    handle, timer = _submit(st, plan)
    if plan.stream:
        return StreamingResponse(_stream(st, plan, rid, handle, timer, tracker), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    task = asyncio.ensure_future(_collect(handle, tracker))
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                break
            if await request.is_disconnected():  # nobody will read the answer: free the blocks now
                task.cancel()
                tracker.done(handle)
                return Response(status_code=499)
        try:
            choices = task.result()
        except Exception as exc:
            raise _as_api_error(exc) from exc
    finally:
        timer.cancel()
        if not task.done():
            task.cancel()
        handle.abort()  # a no-op for sequences that already finished
    tracker.done(handle)
    if plan.cache_key is not None and st.cache is not None:
        st.cache.put(plan.cache_key, choices)
    return JSONResponse(final_body(plan, rid, choices, st.engine.tokenizer))


def _head(plan: Plan, rid: str):
    for i in range(plan.num_choices):
        if plan.kind == "chat":
            yield format_event(chunk(plan, rid, i, "", first=True))
        elif plan.echo:
            yield format_event(chunk(plan, rid, i, plan.prompt_texts[i // plan.n]))


def _tail(plan: Plan, rid: str, choices: list[dict]):
    if plan.include_usage:
        yield format_event(usage_chunk(plan, rid, sum(c["num_tokens"] for c in choices)))
    yield format_event(DONE)


async def _replay(plan: Plan, rid: str, choices: list[dict], tracker: _Tracker, tokenizer):
    """A cached answer as a stream: one chunk per choice with the whole text and its finish reason."""
    for event in _head(plan, rid):
        yield event
    for i, c in enumerate(choices):
        lp = choice_logprobs(plan, tokenizer, i, c, with_prompt=False)
        yield format_event(chunk(plan, rid, i, c["text"], c["finish_reason"], logprobs=lp))
    tracker.done()
    for event in _tail(plan, rid, choices):
        yield event


async def _stream(st, plan: Plan, rid: str, handle, timer, tracker: _Tracker):
    ok = False
    try:
        for event in _head(plan, rid):
            yield event
        try:
            async for index, out in handle:
                tracker.on_output(index, out)
                if out.new_text or out.finished:
                    lp = None if plan.logprobs is None else choice_logprobs(
                        plan, st.engine.tokenizer, index, {}, out.new_token_ids, out.logprobs, with_prompt=False)
                    yield format_event(chunk(plan, rid, index, out.new_text,
                                             out.finish_reason if out.finished else None, logprobs=lp))
        except Exception as exc:  # headers are sent: the error travels as an event, then [DONE]
            err = _as_api_error(exc)
            yield format_event(err.body())
            yield format_event(DONE)
            return
        ok = True
        if plan.cache_key is not None and st.cache is not None:
            st.cache.put(plan.cache_key, tracker.choices)
        for event in _tail(plan, rid, tracker.choices):
            yield event
    finally:  # also on the client's disconnect (the task is cancelled mid-await)
        timer.cancel()
        if not ok:
            handle.abort()
        tracker.done(handle)


__all__ = ["run_plan"]
