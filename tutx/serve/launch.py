"""Start ``tutx serve`` / ``tutx serve-balancer`` as a subprocess on loopback and stop it again.

For notebooks, benchmarks and scripts: ``with start_server("--max-num-seqs", "8") as server:``
gives ``server.url``; leaving the block (or ``server.stop()``) ends the process, ``server.kill()``
simulates a crash.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from tutx._validate import check_choice, check_optional_int, check_positive


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A running ``python -m tutx.serve.cli ...``; ``url``, ``wait_healthy()``, ``stop()``, ``kill()``."""

    def __init__(self, args: list[str], port: int, threads: int | None = 1, command: str = "serve"):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "tutx.serve.cli", command, "--host", "127.0.0.1", "--port", str(port)]
        if command == "serve" and threads:
            cmd += ["--threads", str(threads)]
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        env.pop("TRITON_INTERPRET", None)
        self.process = subprocess.Popen(cmd + list(args), env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)

    def __repr__(self) -> str:
        return f"ServerProcess({self.url}, pid={self.process.pid}, running={self.process.poll() is None})"

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_healthy(self, timeout: float = 120.0) -> "ServerProcess":
        """Block until ``GET /health`` answers 200; raises if the process dies or time runs out."""
        import httpx

        check_positive("timeout", timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.url}: the server exited with {self.process.returncode} before it was up")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"{self.url}: not healthy within {timeout} s")

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the server drains), then SIGKILL if it does not exit within ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, no draining."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)


def start_server(*args: str, port: int | None = None, threads: int | None = 1, command: str = "serve",
                 wait: bool = True) -> ServerProcess:
    """``tutx serve ARGS`` (or ``command="serve-balancer"``) on 127.0.0.1; waits until healthy unless ``wait=False``."""
    check_choice("command", command, ("serve", "serve-balancer"))
    check_optional_int("port", port, minimum=1, maximum=65535)
    check_optional_int("threads", threads, minimum=1)
    server = ServerProcess(list(args), port or free_port(), threads, command)
    return server.wait_healthy() if wait else server


__all__ = ["start_server", "ServerProcess", "free_port"]
