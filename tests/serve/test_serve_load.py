"""A bounded load test: 1,000 requests from 64 concurrent clients, 10% of them streams cut mid-way.

Every completed response must be the one its request asked for (greedy text equal to what
``LLMEngine.generate`` gives for that prompt, the echoed ``X-Request-Id``), no 5xx, the queue
limit answered with 429 (clients back off and retry), and every KV block free at the end.
"""
from __future__ import annotations

import asyncio
import random
import time

import httpx

from tutx.engine import SamplingParams
from tutx.serve import ServerConfig, create_app

from _serve_helpers import make_engine, thread_server

NUM_REQUESTS, CONCURRENCY, CUT_EVERY = 1000, 64, 10
TIME_LIMIT = 150.0


def test_bounded_load(tiny):
    model, tok = tiny
    text = "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the sun."
    words = text.split()
    prompts = [" ".join(words[i:i + 3]) for i in range(len(words) - 3)]
    ref_engine = make_engine(tiny, max_num_seqs=16)
    refs = ref_engine.generate(prompts, SamplingParams(temperature=0, max_tokens=4), progress=False)
    expected = {p: o.text for p, o in zip(prompts, refs)}

    engine = make_engine(tiny, max_num_seqs=16)
    app = create_app(engine, ServerConfig(max_queued=16, cache_size=0))
    stats = {"ok": 0, "cut": 0, "429": 0, "other": []}
    rng = random.Random(0)
    jobs = [(i, rng.choice(prompts)) for i in range(NUM_REQUESTS)]

    async def one(client, i, prompt):
        rid = f"load-{i}"
        cut = i % CUT_EVERY == 0
        body = {"model": "tiny", "prompt": prompt, "temperature": 0, "max_tokens": 40 if cut else 4,
                "stream": cut, "ignore_eos": cut}
        for _ in range(200):
            if cut:
                async with client.stream("POST", "/v1/completions", json=body, headers={"X-Request-Id": rid}) as r:
                    if r.status_code == 429:
                        stats["429"] += 1
                        await asyncio.sleep(0.02)
                        continue
                    assert r.status_code == 200 and r.headers["x-request-id"] == rid
                    async for line in r.aiter_lines():
                        if line.startswith("data: {") and '"text":"' in line:
                            break  # cut the stream after its first chunk: the connection closes
                    stats["cut"] += 1
                    return
            r = await client.post("/v1/completions", json=body, headers={"X-Request-Id": rid})
            if r.status_code == 429:
                assert r.headers["retry-after"]
                stats["429"] += 1
                await asyncio.sleep(0.02)
                continue
            if r.status_code != 200:
                stats["other"].append((r.status_code, r.text[:200]))
                return
            assert r.headers["x-request-id"] == rid and r.json()["id"] == f"cmpl-{rid}"
            assert r.json()["choices"][0]["text"] == expected[prompt], (prompt, r.json())
            stats["ok"] += 1
            return
        raise AssertionError(f"request {i} got 429 two hundred times")

    async def drive(url):
        queue = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        limits = httpx.Limits(max_connections=CONCURRENCY + 8)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            async def worker():
                while not queue.empty():
                    await one(client, *queue.get_nowait())
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), TIME_LIMIT)

    with thread_server(app) as url:
        t0 = time.perf_counter()
        asyncio.run(drive(url))
        elapsed = time.perf_counter() - t0
        deadline = time.monotonic() + 20
        front = app.state.tutx.front
        while (front.num_outstanding or engine.has_unfinished()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert front.num_outstanding == 0 and not engine.has_unfinished()
        assert front.stats.num_free_blocks == engine.config.num_blocks
    assert stats["other"] == [], stats["other"][:5]
    assert stats["ok"] + stats["cut"] == NUM_REQUESTS and stats["cut"] == NUM_REQUESTS // CUT_EVERY
    assert stats["429"] > 0
    print(f"\n{NUM_REQUESTS} requests in {elapsed:.1f} s, {stats['429']} answered 429 and retried")
