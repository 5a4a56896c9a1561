"""The balancer and nginx over two real replicas: streaming pass-through, prefix affinity, a replica
killed mid-run is ejected and the remaining requests succeed, a restarted one is re-admitted."""
from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tutx.serve import create_balancer_app, parse_sse

from _serve_helpers import free_port, spawn, stop_process, subprocess_servers, thread_server, wait_healthy

NGINX_DIR = Path(__file__).resolve().parents[2] / "deploy" / "nginx"


@pytest.fixture(scope="module")
def replicas():
    """``[[url, process, port], ...]``; a test may replace a process (all are stopped at the end)."""
    ports = [free_port(), free_port()]
    with subprocess_servers((("--cache-size", "0"), ports[0]), (("--cache-size", "0"), ports[1])) as started:
        entries = [[url, proc, port] for (url, proc), port in zip(started, ports)]
        try:
            yield entries
        finally:
            for _, proc, _ in entries:
                stop_process(proc)


async def _load(base: str, n: int, on_done=None, concurrency: int = 8, cut: list | None = None) -> list[int]:
    """``n`` short greedy requests, ``concurrency`` at a time; ``on_done(count)`` after each.

    With ``cut`` (a list), a response whose connection broke mid-body is retried once, as the OpenAI
    client does, and its index is appended to ``cut``; without it, that is an error."""
    codes = []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=60) as c:
        async def one(i):
            body = {"model": "tiny", "prompt": f"KING {i}:", "max_tokens": 8, "temperature": 0}
            async with sem:
                try:
                    r = await c.post("/v1/completions", json=body)
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    if cut is None:
                        raise
                    cut.append(i)
                    r = await c.post("/v1/completions", json=body)
                codes.append(r.status_code)
                if on_done is not None:
                    on_done(len(codes))
        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 120)
    return codes


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
        kill = lambda count: count == 10 and proc0.send_signal(signal.SIGKILL)  # noqa: E731
        assert asyncio.run(_load(lb, 60, kill)) == [200] * 60
        proc0.wait(10)
        status = {r["url"]: r for r in httpx.get(f"{lb}/balancer/replicas").json()}
        assert status[url0]["healthy"] is False and status[url1]["healthy"] is True
        replicas[0][1] = spawn("--cache-size", "0", port=port0)[1]  # the same address comes back
        wait_healthy(url0, proc=replicas[0][1])
        deadline = time.monotonic() + 10
        while not httpx.get(f"{lb}/balancer/replicas").json()[0]["healthy"]:
            assert time.monotonic() < deadline, "the restarted replica was not re-admitted"
            time.sleep(0.1)
        assert asyncio.run(_load(lb, 8)) == [200] * 8
        assert httpx.get(f"{lb}/balancer/replicas").json()[0]["served"] > 0


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs Debian's nginx (make test installs it)")
def test_nginx_least_conn_streams_and_survives_a_killed_replica(replicas, tmp_path):
    (url0, _, port0), (url1, proc1, port1) = replicas
    port = free_port()
    conf = (NGINX_DIR / "tutx.conf").read_text().replace("127.0.0.1:8001", f"127.0.0.1:{port0}") \
        .replace("127.0.0.1:8002", f"127.0.0.1:{port1}").replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    (tmp_path / "tutx.conf").write_text(conf)
    shutil.copy(NGINX_DIR / "nginx.conf", tmp_path / "nginx.conf")
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp").chmod(0o777)
    nginx = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", "nginx.conf", "-e", "stderr"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, 20, proc=nginx)
        body = {"model": "tiny", "prompt": "JULIET:", "max_tokens": 160, "temperature": 0, "ignore_eos": True,
                "stream": True}  # 160 tokens: 0.1 s or more, however fast the engine
        arrivals = []
        with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=30) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    arrivals.append(time.perf_counter())
        assert len(arrivals) >= 100 and arrivals[-1] - arrivals[0] > 0.02  # chunks came one by one, unbuffered
        kill = lambda count: count == 10 and proc1.send_signal(signal.SIGKILL)  # noqa: E731
        # nginx retries a request on the other replica while nothing of its answer reached the client;
        # one whose headers were already passed on when the replica died reaches the client as a broken
        # connection (never as a short body taken for whole), and the client retries it
        cut = []
        assert asyncio.run(_load(base, 40, kill, cut=cut)) == [200] * 40
        assert len(cut) <= 8, cut  # only answers in flight at the kill (concurrency 8) can be cut
        assert proc1.wait(10) is not None
        assert asyncio.run(_load(base, 8)) == [200] * 8  # the dead replica stays out
    finally:
        nginx.terminate()
        try:
            nginx.wait(10)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait(5)
        nginx.stderr.close()
