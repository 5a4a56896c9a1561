"""A stub OpenAI endpoint that streams instantly: it measures the benchmark client itself.

A bare ASGI app (no framework, nothing computed) answers ``/v1/models`` and streams ``chunks``
completion chunks, a usage chunk and ``[DONE]`` for every ``POST /v1/completions`` (or
``/v1/chat/completions``). ``mode`` makes it misbehave for tests: ``"error"`` answers HTTP 500,
``"malformed"`` streams a chunk that is not JSON, ``"truncated"`` stops before ``[DONE]``,
``"error_event"`` streams an error object mid-answer (as a server does when it aborts a request).

:class:`StubServer` runs it with uvicorn on 127.0.0.1, in a thread of this process (quick, for
tests) or in a subprocess (``process=True``: the client's CPU time is then its own);
:func:`client_overhead` drives it with :func:`tutx.bench.serving.benchmark_serving` and reports
the client's maximum request rate and its CPU cost per request and per chunk.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from tutx._validate import check_choice, check_int, check_positive_int

MODES = ("ok", "error", "malformed", "truncated", "error_event")


def stub_app(chunks: int = 16, mode: str = "ok"):
    """The ASGI app (see the module docstring)."""
    check_positive_int("chunks", chunks)
    check_choice("mode", mode, MODES)
    models = json.dumps({"object": "list", "data": [{"id": "stub", "object": "model"}]}).encode()

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        more = True
        while more and scope["method"] == "POST":  # drain the request body
            more = (await receive()).get("more_body", False)
        if scope["method"] == "GET":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": models})
            return
        if mode == "error":
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"error": {"message": "stub failure"}}'})
            return
        chat = scope["path"].endswith("/chat/completions")
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
        for i in range(chunks):
            choice = {"index": 0, "delta": {"content": f" w{i}"}} if chat else {"index": 0, "text": f" w{i}"}
            body = b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"
            if mode == "malformed" and i == chunks // 2:
                body = b"data: {not json\n\n"
            elif mode == "error_event" and i == chunks // 2:
                body = b'data: {"error": {"message": "aborted", "code": 500}}\n\n'
            await send({"type": "http.response.body", "body": body, "more_body": True})
        if mode == "truncated":
            await send({"type": "http.response.body", "body": b"data: {\"choi", "more_body": False})
            return
        usage = {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": chunks, "total_tokens": chunks + 1}}
        await send({"type": "http.response.body", "body": b"data: " + json.dumps(usage).encode() + b"\n\n",
                    "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
    return app


class StubServer:
    """``with StubServer(chunks=16) as url:`` — the stub on a free loopback port, stopped on exit."""

    def __init__(self, chunks: int = 16, mode: str = "ok", process: bool = False):
        self.app = stub_app(chunks, mode)
        self.chunks, self.mode, self.process = chunks, mode, process
        self._server = self._thread = self._proc = None

    def __enter__(self) -> str:
        import httpx

        from tutx.serve.launch import free_port
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        if self.process:
            # run the file itself, not ``-m tutx.bench.stub_server``: the package would import torch (seconds)
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
            self._proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(port), str(self.chunks),
                                           self.mode], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            import uvicorn
            self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="error",
                                                         lifespan="off"))
            self._thread = threading.Thread(target=self._server.run, daemon=True)
            self._thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/v1/models", timeout=0.5)
                return self.url
            except httpx.HTTPError:
                if self._proc is not None and self._proc.poll() is not None:
                    break
                time.sleep(0.05)
        self.__exit__()
        raise RuntimeError(f"the stub server did not start on {self.url}")

    def __exit__(self, *exc) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(10)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)


def client_overhead(num_requests: int = 200, chunks: int = 64, max_concurrency: int = 16, process: bool = True) -> dict:
    """Drive the stub (``chunks`` per answer) as fast as the client can, ``max_concurrency`` in flight:
    the client's maximum request rate, and its CPU time per request and per chunk (ms, µs)."""
    from tutx.bench.arrivals import Prompt
    from tutx.bench.serving import benchmark_serving
    check_int("num_requests", num_requests, minimum=2)
    prompts = [Prompt("stub", (1,), chunks)] * num_requests
    with StubServer(chunks, process=process) as url:
        cpu0 = time.process_time()
        run = benchmark_serving(url, prompts, "stub", max_concurrency=max_concurrency, warmup=1)
        cpu = time.process_time() - cpu0
    m = run.metrics
    return {"num_requests": num_requests, "chunks_per_request": chunks, "max_concurrency": max_concurrency,
            "stub_in_subprocess": process, "completed": m["completed"], "failed": m["failed"],
            "max_request_rate": m["request_throughput"], "chunks_per_s": m["output_throughput"],
            "client_cpu_ms_per_request": 1e3 * cpu / num_requests,
            "client_cpu_us_per_chunk": 1e6 * cpu / (num_requests * chunks),
            "ttft_ms_median": m["ttft_ms"]["median"], "itl_ms_median": m["itl_ms"]["median"]}


if __name__ == "__main__":  # python tutx/bench/stub_server.py PORT CHUNKS MODE
    import uvicorn
    uvicorn.run(stub_app(int(sys.argv[2]), sys.argv[3]), host="127.0.0.1", port=int(sys.argv[1]), log_level="error",
                lifespan="off")


__all__ = ["stub_app", "StubServer", "client_overhead", "MODES"]
