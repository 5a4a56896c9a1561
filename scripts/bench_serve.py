"""Serving benchmarks of Chapter 7 (prints its figures; not a test).

1. cache hits: requests/s for one deterministic request answered from the response cache;
2. server overhead: p50 latency of a short greedy request over HTTP minus the same request on the
   engine called directly in this process (interleaved A/B, same thread count);
3. streaming throughput: 64 concurrent streaming clients vs the engine's offline ``generate`` on
   the same 64 requests (tokens/s).

The server runs as a subprocess on 127.0.0.1 (``tutx serve --threads T``); the engine baseline
uses the same number of torch threads.

    python scripts/bench_serve.py [--threads 1] [--hits 2000] [--reps 30]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import httpx
import torch

from tutx.engine import EngineConfig, LLMEngine, SamplingParams
from tutx.models import load_tiny
from tutx.serve import parse_sse


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(threads: int, *args: str):
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.Popen([sys.executable, "-m", "tutx.serve.cli", "serve", "--port", str(port), "--threads",
                             str(threads), *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start")


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _post_keepalive(reader, writer, raw: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 request on an open keep-alive connection (a lean client: httpx's own cost would
    dominate a cache hit)."""
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return status, await reader.readexactly(length)


async def cache_hits(url: str, total: int, concurrency: int = 32) -> float:
    """Requests/s for one deterministic request answered from the cache, ``concurrency`` keep-alive clients."""
    body = json.dumps({"model": "tiny", "prompt": "ROMEO:", "max_tokens": 16, "temperature": 0}).encode()
    host, port = url.removeprefix("http://").split(":")
    raw = (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
           f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    left = [total]

    async def worker():
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while left[0] > 0:
                left[0] -= 1
                status, _ = await _post_keepalive(reader, writer, raw)
                assert status == 200, status
        finally:
            writer.close()
    left[0] = 1
    await worker()  # warm: the first request fills the cache
    left[0] = total
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - t0)


def overhead(url: str, engine, reps: int, max_tokens: int) -> tuple[float, float]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    body = {"model": "tiny", "prompt": "JULIET:", "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    direct, http = [], []
    with httpx.Client(base_url=url, timeout=60) as c:
        for i in range(reps + 3):
            t0 = time.perf_counter()
            engine.generate(["JULIET:"], params, progress=False)
            t1 = time.perf_counter()
            assert c.post("/v1/completions", json=body).status_code == 200
            t2 = time.perf_counter()
            if i >= 3:
                direct.append(t1 - t0)
                http.append(t2 - t1)
    return statistics.median(direct), statistics.median(http)


async def streaming(url: str, prompts: list[str], max_tokens: int) -> tuple[float, int]:
    """All ``prompts`` as concurrent streaming requests; ``(seconds, completion tokens)``.

    A lean client (asyncio sockets, ``Connection: close``, the stream read to its end and its SSE
    events parsed) so that the client's own CPU time, on the same cores, stays small."""
    host, port = url.removeprefix("http://").split(":")

    async def one(p):
        body = json.dumps({"model": "tiny", "prompt": p, "max_tokens": max_tokens, "temperature": 0,
                           "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}).encode()
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write((f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                      f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        raw = await reader.read(-1)
        writer.close()
        head, _, chunked = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:100]
        text, rest = [], chunked
        while rest:  # undo the chunked transfer encoding
            size, _, rest = rest.partition(b"\r\n")
            n = int(size, 16)
            text.append(rest[:n])
            rest = rest[n + 2:]
        return parse_sse(b"".join(text).decode())[-2]["usage"]["completion_tokens"]
    t0 = time.perf_counter()
    tokens = sum(await asyncio.gather(*(one(p) for p in prompts)))
    return time.perf_counter() - t0, tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hits", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=5, help="interleaved offline/served runs for item 3")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, tok = load_tiny()
    print(f"tiny LM, {args.threads} torch thread(s), CPU; server = `tutx serve` subprocess on 127.0.0.1")

    url, proc = start_server(args.threads, "--max-num-seqs", "16")
    try:
        rate = asyncio.run(cache_hits(url, args.hits))
        print(f"1. cache hits: {rate:,.0f} requests/s ({args.hits} requests, 32 concurrent)")
    finally:
        stop(proc)

    url, proc = start_server(args.threads, "--max-num-seqs", "16", "--cache-size", "0")
    try:
        engine = LLMEngine(model, tok, EngineConfig(max_num_seqs=16))
        for n in (1, 16):
            d, h = overhead(url, engine, args.reps, n)
            print(f"2. server overhead, {n:2d} token(s): p50 {1e3 * (h - d):.1f} ms per request (HTTP {1e3 * h:.1f} ms "
                  f"vs engine direct {1e3 * d:.1f} ms; greedy, {args.reps} interleaved pairs)")
    finally:
        stop(proc)

    words = "ROMEO JULIET HAMLET KING QUEEN MACBETH OTHELLO IAGO".split()
    prompts = [f"{words[i % 8]}:\n{'O ' * (i % 5)}" for i in range(args.clients)]
    params = SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    engine = LLMEngine(model, tok, EngineConfig(max_num_seqs=args.clients))
    engine.generate(prompts[:4], params, progress=False)
    url, proc = start_server(args.threads, "--max-num-seqs", str(args.clients), "--cache-size", "0")
    ratios, offline, served = [], [], []
    try:
        asyncio.run(streaming(url, prompts[:4], 4))
        for _ in range(args.pairs):  # interleaved A/B: the machine's load drifts between runs
            t0 = time.perf_counter()
            outs = engine.generate(prompts, params, progress=False)
            off = sum(len(o.token_ids) for o in outs) / (time.perf_counter() - t0)
            served_s, served_tokens = asyncio.run(streaming(url, prompts, args.max_tokens))
            srv = served_tokens / served_s
            offline.append(off)
            served.append(srv)
            ratios.append(srv / off)
    finally:
        stop(proc)
    print(f"3. {args.clients} streaming clients: {statistics.median(served):,.0f} tokens/s vs offline generate "
          f"{statistics.median(offline):,.0f} tokens/s; per-pair ratio median {100 * statistics.median(ratios):.0f}% "
          f"(pairs: {', '.join(f'{100 * r:.0f}%' for r in ratios)}; {args.max_tokens} tokens each)")


if __name__ == "__main__":
    main()
