"""Behaviour under overload and faults: 429, client disconnects, timeouts, a crashing step, SIGTERM drain."""
from __future__ import annotations

import asyncio
import signal
import threading
import time

import httpx
import openai
import pytest

from tutx.serve import ServerConfig, create_app, parse_sse

from _serve_helpers import make_engine, subprocess_server, thread_server

LONG = {"model": "tiny", "prompt": "ROMEO:", "max_tokens": 400, "temperature": 0, "ignore_eos": True}


def wait_until(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what} not reached within {timeout} s")


def all_free(engine, app):
    front = app.state.tutx.front
    return (front.num_outstanding == 0 and front.stats.num_free_blocks == engine.config.num_blocks
            and not engine.has_unfinished())


@pytest.fixture(scope="module")
def small(tiny):
    """A server with room for 2 running + 2 queued sequences, no cache."""
    engine = make_engine(tiny, max_num_seqs=2)
    app = create_app(engine, ServerConfig(max_queued=2, cache_size=0))
    with thread_server(app) as url:
        yield url, engine, app


def test_queue_limit_answers_429(small):
    url, engine, app = small

    async def burst():
        async with httpx.AsyncClient(timeout=60) as c:
            body = {**LONG, "max_tokens": 24}
            return await asyncio.gather(*(c.post(f"{url}/v1/completions", json=body) for _ in range(12)))

    rs = asyncio.run(burst())
    codes = sorted(r.status_code for r in rs)
    assert codes.count(200) >= 4 and codes.count(429) >= 1 and set(codes) == {200, 429}, codes
    busy = next(r for r in rs if r.status_code == 429)
    assert busy.headers["retry-after"] == "1" and busy.json()["error"]["type"] == "rate_limit_error"
    wait_until(lambda: all_free(engine, app), what="all blocks free")


def test_stream_disconnect_aborts_and_frees_blocks(small):
    url, engine, app = small
    with httpx.Client(timeout=30) as c:
        with c.stream("POST", f"{url}/v1/completions", json={**LONG, "stream": True}) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(x.startswith("data: {") for x in got)
            assert app.state.tutx.front.num_outstanding == 1
    wait_until(lambda: all_free(engine, app), what="blocks freed after the disconnect")
    text = httpx.get(f"{url}/metrics").text
    assert 'tutx:request_success_total{finished_reason="abort",model_name="tiny"}' in text


def test_non_stream_disconnect_aborts(small):
    url, engine, app = small
    steps = app.state.tutx.front.stats.num_steps
    with pytest.raises(httpx.ReadTimeout):  # 400 tokens take 0.3 s or more at batch 1 even on the C path
        httpx.post(f"{url}/v1/completions", json=LONG, timeout=httpx.Timeout(0.1, connect=5))
    wait_until(lambda: all_free(engine, app), what="blocks freed after the client went away")
    assert app.state.tutx.front.stats.num_steps - steps < 350  # it stopped early: not all 400 tokens


def test_request_timeout(tiny):
    engine = make_engine(tiny)
    app = create_app(engine, ServerConfig(cache_size=0, request_timeout=0.1))  # 480 steps take 0.35 s or more
    with thread_server(app) as url:
        r = httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 480, "prompt": "A"}, timeout=30)
        assert r.status_code == 408 and r.json()["error"]["code"] == "timeout"
        events = parse_sse(httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 480, "prompt": "A",
                                                                     "stream": True}, timeout=30).text)
        assert events[-2]["error"]["code"] == "timeout" and events[-1] == "[DONE]"
        wait_until(lambda: all_free(engine, app), what="blocks freed after the timeout")


def test_step_crash_fails_its_requests_and_the_server_goes_on(tiny):
    engine = make_engine(tiny)
    app = create_app(engine, ServerConfig(cache_size=0))
    real_step, armed = engine.step, threading.Event()

    def flaky_step():
        if armed.is_set() and engine.num_running:
            armed.clear()
            raise RuntimeError("injected fault")
        return real_step()

    engine.step = flaky_step
    with thread_server(app) as url:
        armed.set()
        r = httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 20}, timeout=30)
        assert r.status_code == 500 and "injected fault" in r.json()["error"]["message"]
        wait_until(lambda: all_free(engine, app), what="blocks freed after the crash")
        r = httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 5}, timeout=30)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


def test_sigterm_drains_running_requests_and_refuses_new_ones():
    with subprocess_server("--shutdown-timeout", "20", "--cache-size", "0") as (url, proc):
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)  # `tutx serve` as shipped
        streamed = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hail!"}],
                                                  max_tokens=8, temperature=0, stream=True)
        assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] in ("stop", "length")
        result = {}

        def long_stream():
            body = {**LONG, "max_tokens": 400, "stream": True}  # long enough to still run while we look
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as r:
                result["events"] = parse_sse("".join(r.iter_text()))

        t = threading.Thread(target=long_stream)
        t.start()
        wait_until(lambda: 'tutx:num_requests_running{model_name="tiny"} 1.0' in httpx.get(f"{url}/metrics").text,
                   30, "the stream to run")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(f"{url}/health").status_code == 503, 10, "health to say draining")
        r = httpx.post(f"{url}/v1/completions", json={**LONG, "max_tokens": 2}, timeout=10)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        t.join(60)
        assert proc.wait(30) == 0
        events = result["events"]
        assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] == "length"
        assert len("".join(e["choices"][0]["text"] for e in events[:-1])) > 0


def test_sigterm_aborts_what_outlasts_the_shutdown_timeout():
    # 480 tokens take 0.35 s or more at batch 1: the stream outlasts a 0.05 s shutdown timeout
    with subprocess_server("--shutdown-timeout", "0.05", "--cache-size", "0") as (url, proc):
        result = {}

        def long_stream():
            with httpx.stream("POST", f"{url}/v1/completions", json={**LONG, "max_tokens": 480, "stream": True},
                              timeout=60) as r:
                result["events"] = parse_sse("".join(r.iter_text()))

        t = threading.Thread(target=long_stream)
        t.start()
        wait_until(lambda: 'tutx:num_requests_running{model_name="tiny"} 1.0' in httpx.get(f"{url}/metrics").text,
                   30, "the stream to run")
        proc.send_signal(signal.SIGTERM)
        t.join(30)
        assert proc.wait(30) == 0
        events = result["events"]
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "aborted"
        assert len(events) < 480  # cut short, not run to the end
