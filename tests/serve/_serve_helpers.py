"""Start and stop real servers on loopback for the serving tests (every process and thread is stopped)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx


def make_engine(tiny, **kw):
    """An LLMEngine on ``tiny = (model, tokenizer)``, 8 sequences unless ``kw`` says otherwise."""
    from tutx.engine import EngineConfig, LLMEngine

    model, tok = tiny
    return LLMEngine(model, tok, EngineConfig(**{"max_num_seqs": 8, **kw}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 90.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} was not healthy within {timeout} s")


def server_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("TRITON_INTERPRET", None)  # the server runs the model on its normal CPU path
    return env


def spawn(*args: str, command: str = "serve", port: int | None = None):
    """Start ``python -m tutx.serve.cli <command> --port P ...`` without waiting; ``(url, process)``."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "tutx.serve.cli", command, "--host", "127.0.0.1", "--port", str(port)]
    if command == "serve":
        cmd += ["--threads", "1"]
    proc = subprocess.Popen(cmd + list(args), env=server_env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", proc


@contextlib.contextmanager
def subprocess_servers(*specs: tuple):
    """Several servers started together (they load the model in parallel); ``specs``: ``(args, port)``.
    Yields ``[(url, process), ...]``; every process is stopped."""
    procs = []
    try:
        for args, port in specs:
            procs.append(spawn(*args, port=port))
        for url, proc in procs:
            wait_healthy(url, proc=proc)
        yield procs
    finally:
        for _, proc in procs:
            stop_process(proc)


@contextlib.contextmanager
def subprocess_server(*args: str, port: int | None = None):
    """One ``tutx serve`` subprocess; yields ``(url, process)``; always stopped."""
    with subprocess_servers((args, port)) as procs:
        yield procs[0]


def stop_process(proc, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


@contextlib.contextmanager
def thread_server(app, port: int | None = None, healthy: bool = True):
    """Run ``app`` under uvicorn in a thread of this process (tests can then look inside the engine)."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           timeout_keep_alive=60))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        if healthy:
            wait_healthy(url, 30)
        yield url
    finally:
        server.should_exit = True
        thread.join(15)
