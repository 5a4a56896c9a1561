"""The balancer over two real replicas: streaming pass-through, prefix affinity, a replica killed
mid-run is ejected and the remaining requests succeed, and a restarted one is re-admitted."""
from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from tutx.serve import create_balancer_app, parse_sse

from _serve_helpers import free_port, subprocess_server, subprocess_servers, thread_server


@pytest.fixture(scope="module")
def replicas():
    ports = [free_port(), free_port()]
    with subprocess_servers((("--cache-size", "0"), ports[0]), (("--cache-size", "0"), ports[1])) as started:
        yield [(url, proc, port) for (url, proc), port in zip(started, ports)]


def test_balancer_streams_and_keeps_prefixes_together(replicas):
    urls = [u for u, _, _ in replicas]
    app = create_balancer_app(urls, "prefix-affinity", health_interval=0.2)
    with thread_server(app) as lb:
        body = {"model": "tiny", "prompt": "ROMEO:\nShall I", "max_tokens": 6, "temperature": 0}
        direct = httpx.post(f"{urls[0]}/v1/completions", json=body, timeout=30).json()["choices"][0]["text"]
        for _ in range(4):
            r = httpx.post(f"{lb}/v1/completions", json=body, headers={"X-Request-Id": "via-lb"}, timeout=30)
            assert r.status_code == 200 and r.json()["choices"][0]["text"] == direct
            assert r.headers["x-request-id"] == "via-lb"
        served = [r["served"] for r in httpx.get(f"{lb}/balancer/replicas").json()]
        assert sorted(served) == [0, 4]  # one prompt prefix, one replica
        events = parse_sse(httpx.post(f"{lb}/v1/completions", json={**body, "stream": True}, timeout=30).text)
        assert events[-1] == "[DONE]" and "".join(e["choices"][0]["text"] for e in events[:-1]) == direct
        assert httpx.post(f"{lb}/v1/completions", json={**body, "model": "x"}, timeout=30).status_code == 400


def test_killed_replica_is_ejected_and_readmitted(replicas):
    (url0, proc0, port0), (url1, _, _) = replicas
    app = create_balancer_app([url0, url1], "power-of-two", health_interval=0.2)
    with thread_server(app) as lb:
        async def run(n: int, kill_after: int | None):
            codes = []
            async with httpx.AsyncClient(base_url=lb, timeout=60) as c:
                async def one(i):
                    r = await c.post("/v1/completions", json={"model": "tiny", "prompt": f"KING {i}:",
                                                              "max_tokens": 8, "temperature": 0})
                    codes.append(r.status_code)
                    if kill_after is not None and len(codes) == kill_after:
                        proc0.send_signal(signal.SIGKILL)
                sem = asyncio.Semaphore(8)

                async def bounded(i):
                    async with sem:
                        await one(i)
                await asyncio.wait_for(asyncio.gather(*(bounded(i) for i in range(n))), 120)
            return codes

        codes = asyncio.run(run(60, kill_after=10))
        assert codes == [200] * 60
        proc0.wait(10)
        status = {r["url"]: r for r in httpx.get(f"{lb}/balancer/replicas").json()}
        assert status[url0]["healthy"] is False and status[url1]["healthy"] is True
        with subprocess_server("--cache-size", "0", port=port0):  # the same address comes back
            deadline = time.monotonic() + 10
            while not httpx.get(f"{lb}/balancer/replicas").json()[0]["healthy"]:
                assert time.monotonic() < deadline, "the restarted replica was not re-admitted"
                time.sleep(0.1)
            assert asyncio.run(run(8, kill_after=None)) == [200] * 8
