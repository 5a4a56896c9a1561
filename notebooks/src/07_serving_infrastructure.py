# %% [markdown]
# # Chapter 7 — Serving infrastructure
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tutx-course/scaling-and-optimization/blob/main/notebooks/07_serving_infrastructure.ipynb)
#
# Chapter 6 built an engine that batches many requests on one model. Users do not import an
# engine: they send HTTP requests — from the official `openai` SDK, `curl`, LangChain or an
# evaluation harness — and expect tokens to stream back, errors that say what was wrong, and a
# service that survives overload, impatient clients and restarts. This chapter puts our engine
# behind an **OpenAI-compatible server** (`tutx serve`, after vLLM's) and scales it out.
#
# **You will learn to**
#
# - put a synchronous engine behind an `asyncio` web server without serialising clients:
#   one worker thread owns the engine, every request gets its own stream;
# - speak the OpenAI wire format: completions, chat, **server-sent events** for streaming,
#   usage counts, finish reasons, logprobs, and errors that name the field;
# - keep a server healthy under load: a **bounded queue** that answers `429`, aborting the
#   sequences of clients that **disconnect**, timeouts, and a **drain** on `SIGTERM`;
# - measure it with **Prometheus metrics** (time to first token, inter-token latency, queue time);
# - cache deterministic answers with a **canonical key**;
# - spread load over replicas with a **load balancer** (round-robin, least-outstanding,
#   power of two choices, prefix affinity) and with **nginx**.

# %%
# Set-up: on Colab, install tutx with its serving extras first (elsewhere `make lab` did it).
import sys

if "google.colab" in sys.modules:
    %pip install -q "tutx[serve] @ git+https://github.com/tutx-course/scaling-and-optimization" openai prometheus-client

# %%
import asyncio
import time
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text progress bars

import httpx
import matplotlib.pyplot as plt
import numpy as np
import openai
import torch

import tutx
from tutx.bench import show_table
from tutx.engine import EngineConfig, LLMEngine, SamplingParams
from tutx.models import load_tiny
from tutx.serve import parse_sse, start_server

torch.manual_seed(0)
torch.set_num_threads(1)  # the same thread count as the server below: the same greedy tokens
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
model, tok = load_tiny()
http = httpx.Client(timeout=60)  # one client for the whole notebook (a new one per call is slow to build)
print(f"tiny LM: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
      f"context {model.config.max_position_embeddings} tokens")

# %% [markdown]
# ## 1. From an engine to a server
#
# The engine of Chapter 6 is plain, synchronous Python: `add_request`, `step`, `abort`. A web
# server is asynchronous: one event loop juggles thousands of connections and must never block.
# Three designs come to mind:
#
# 1. call `engine.generate` inside each request handler — it blocks the event loop, and a lock
#    around it **serialises** the clients: no batching at all;
# 2. run `generate` in a thread per request — the engine is not thread-safe, and requests still
#    do not share batches;
# 3. **one worker thread owns the engine** and runs `step()` while there is work; handlers only
#    *post* requests and aborts to a thread-safe inbox and *read* their own queue of outputs.
#
# Design 3 is what vLLM's `AsyncLLMEngine` does and what `tutx.serve.AsyncEngine` implements.
# Each step's outputs go back to the event loop with **one** `call_soon_threadsafe`, so the cost
# per token is tiny, and every request in the running batch advances at every step:

# %%
from tutx.serve.async_engine import AsyncEngine

tutx.show(AsyncEngine._run)

# %% [markdown]
# `create_app(engine, config)` wraps it in a FastAPI app (nothing runs at import), and the
# command `tutx serve` runs that app under uvicorn. We start it as a subprocess on the loopback
# interface, like any deployment would, and talk to it over HTTP. `start_server` waits until
# `GET /health` answers:

# %%
server = start_server("--max-num-seqs", "8", "--max-queued", "8")
print("serving at", server.url.replace(str(server.port), "PORT"))
client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
print("models:", [m.id for m in client.models.list().data])

# %% [markdown]
# ## 2. The OpenAI API
#
# The official client works unchanged. A greedy completion must be exactly what the engine
# gives when we call it directly in this process — the server adds transport, not arithmetic:

# %%
prompt = "ROMEO:\nBut soft, what light"
reply = client.completions.create(model="tiny", prompt=prompt, max_tokens=24, temperature=0)
engine = LLMEngine(model, tok, EngineConfig(max_num_seqs=8))
direct = engine.generate([prompt], SamplingParams(temperature=0, max_tokens=24), progress=False)[0]
assert reply.choices[0].text == direct.text
print(repr(reply.choices[0].text))
print("finish_reason:", reply.choices[0].finish_reason, "| usage:", dict(reply.usage))
print("server == engine.generate:", reply.choices[0].text == direct.text)

# %% [markdown]
# The tiny model never saw a chat, only plays, so its **chat template** renders a conversation
# as one: `system` messages become stage directions, the user speaks as HORATIO, the model
# answers as HAMLET, and a blank line ends a speech (the template adds it as a stop string).
# `/tokenize` shows the prompt the model really reads:

# %%
messages = [{"role": "system", "content": "Elsinore. A platform before the castle."},
            {"role": "user", "content": "What art thou that usurp'st this time of night?"}]
rendered = http.post(f"{server.url}/tokenize", json={"messages": messages}).json()
print(tok.decode(rendered["tokens"]), end="")
print(f"⟵ {rendered['count']} tokens; the reply starts here")
chat = client.chat.completions.create(model="tiny", messages=messages, max_tokens=40, temperature=0)
print(repr(chat.choices[0].message.content), chat.choices[0].finish_reason)

# %% [markdown]
# **Streaming.** With `stream=True` the answer arrives as server-sent events, one chunk per step
# of the engine (a chunk can hold several characters: a token is a piece of a word). The client
# prints them as they come:

# %%
stream = client.completions.create(model="tiny", prompt="JULIET:\n", max_tokens=30, temperature=0, stream=True,
                                   stream_options={"include_usage": True})
pieces = []
for chunk in stream:
    if chunk.choices:
        pieces.append(chunk.choices[0].text)
        print(chunk.choices[0].text, end="|", flush=True)
    else:
        print(f"\n(last chunk: usage {chunk.usage.completion_tokens} completion tokens)")
print(f"{len(pieces)} chunks")

# %% [markdown]
# On the wire this is plain text: `data: {json}` lines separated by blank lines, ended by
# `data: [DONE]`. Here are the first events of a chat stream read with `httpx` (we set the
# `X-Request-Id` header, which the server echoes and uses as the response id; we hide the
# `created` timestamp):

# %%
body = {"model": "tiny", "messages": messages, "max_tokens": 6, "temperature": 0, "stream": True}
raw = http.post(f"{server.url}/v1/chat/completions", json=body, headers={"X-Request-Id": "demo-1"})
print("X-Request-Id:", raw.headers["x-request-id"])
for line in raw.text.splitlines()[:6]:
    print(line.replace(str(parse_sse(raw.text)[0]["created"]), "…")[:150])
events = parse_sse(raw.text)
print(f"… {len(events)} events, the last one is {events[-1]!r}")

# %% [markdown]
# `n` asks for several choices; with a `seed` sampling is reproducible (each choice draws from
# its own generator). `logprobs` returns each token's log-probability and its most likely
# alternatives — with `echo=True` and `max_tokens=0` that *scores* a text, which is how
# lm-evaluation-harness evaluates a model behind an API:

# %%
three = client.completions.create(model="tiny", prompt="KING:\n", max_tokens=8, temperature=1.0, n=3, seed=0)
for c in three.choices:
    print(c.index, repr(c.text))
scored = client.completions.create(model="tiny", prompt="To be, or not to be", max_tokens=0, echo=True,
                                   logprobs=2, temperature=0)
lp = scored.choices[0].logprobs
rows = [{"token": repr(t), "logprob": None if x is None else round(x, 2),
         "top alternatives": None if top is None else ", ".join(f"{k!r} {v:.2f}" for k, v in top.items())}
        for t, x, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs)]
show_table(rows)
print(f"log-likelihood of the line: {sum(x for x in lp.token_logprobs if x is not None):.2f}")

# %% [markdown]
# **Errors** are answered like OpenAI's: status `400` and a body that names the field, so a
# client (or a person) can fix the request. A few of the checks:

# %%
bad = [{"prompt": "a", "max_tokens": 0}, {"prompt": "a", "temperature": -1}, {"prompt": "a", "n": 50},
       {"prompt": "a", "stop": ""}, {"prompt": "word " * 600}, {"prompt": "a", "model": "gpt-4"}]
rows = []
for b in bad:
    r = http.post(f"{server.url}/v1/completions", json={"model": "tiny", **b})
    err = r.json()["error"]
    rows.append({"request": ", ".join(f"{k}={v!r:.20}" for k, v in b.items()), "status": r.status_code,
                 "param": err["param"], "message": err["message"][:70]})
show_table(rows)

# %% [markdown]
# ## 3. Measuring the server: Prometheus metrics
#
# `GET /metrics` exposes counters, gauges and histograms in Prometheus' text format, named after
# vLLM's (`vllm:` becomes `tutx:`), each with a `model_name` label: time to first token (TTFT),
# inter-token latency (ITL), end-to-end latency, queue time, token counts, finish reasons,
# running and waiting requests, KV-cache usage, preemptions, cache hits.

# %%
def metric(name: str, url: str = None) -> float:
    """The sum of a metric's samples whose line starts with ``name`` (labels included or not)."""
    text = http.get(f"{url or server.url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


text = http.get(f"{server.url}/metrics").text
print("\n".join(l for l in text.splitlines() if l.startswith(("# HELP tutx:time_to_first", "tutx:request_success",
                                                            "tutx:kv_cache", "tutx:num_requests"))))

# %%
# NBVAL_IGNORE_OUTPUT
for name in ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds"):
    total, count = metric(f"tutx:{name}_sum"), metric(f"tutx:{name}_count")
    print(f"{name:32s} mean {1e3 * total / count:7.1f} ms over {count:.0f} observations")

# %% [markdown]
# ## 4. Under load
#
# A bounded load test: for each concurrency level, that many clients send short greedy requests
# (24 tokens each, 24 requests per level, each prompt different so the cache cannot help) as
# fast as they can. The engine batches them, so the throughput grows with concurrency while
# each request's latency grows more slowly — until the batch is full (`--max-num-seqs 8`) and
# requests start to queue.

# %%
async def load(url: str, concurrency: int, total: int, max_tokens: int = 24, tag: str = "") -> dict:
    """``total`` requests, ``concurrency`` at a time; latencies and status codes."""
    lat, codes = [], []
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        async def one(i):
            async with sem:
                t0 = time.perf_counter()
                r = await c.post("/v1/completions", json={"model": "tiny", "prompt": f"Act {tag}{i}:", "temperature": 0,
                                                          "max_tokens": max_tokens, "ignore_eos": True})
                lat.append(time.perf_counter() - t0)
                codes.append(r.status_code)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        wall = time.perf_counter() - t0
    return {"latency": np.array(lat), "codes": codes, "req/s": total / wall}


levels = [1, 2, 4, 8, 16]
results = {c: await load(server.url, c, 24, tag=f"{c}.") for c in levels}
assert all(set(r["codes"]) == {200} for r in results.values())
print("all", sum(len(r["codes"]) for r in results.values()), "requests answered 200")

# %%
# NBVAL_IGNORE_OUTPUT
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
for q, style in ((50, "o-"), (90, "s--"), (99, "^:")):
    ax1.plot(levels, [1e3 * np.percentile(results[c]["latency"], q) for c in levels], style, label=f"p{q}")
ax1.set(xscale="log", xticks=levels, xticklabels=levels, xlabel="concurrent clients", ylabel="latency (ms)",
        title="request latency (24 tokens)")
ax1.legend()
ax2.plot(levels, [results[c]["req/s"] for c in levels], "o-")
ax2.set(xscale="log", xticks=levels, xticklabels=levels, xlabel="concurrent clients", ylabel="requests / s",
        title=f"throughput ({tutx.device.name()})")
plt.tight_layout()
plt.show()
show_table([{"clients": c, "p50 ms": 1e3 * np.median(results[c]["latency"]),
             "p99 ms": 1e3 * np.percentile(results[c]["latency"], 99), "req/s": results[c]["req/s"]} for c in levels],
           digits=0)

# %% [markdown]
# **Backpressure.** A server that accepts everything builds an unbounded backlog: latency grows
# without limit and memory with it. Ours admits at most `max_num_seqs` running plus
# `--max-queued` waiting sequences (8 + 8 here) and answers the rest at once with `429 Too Many
# Requests` and a `Retry-After` header — a client can back off or try another replica. A burst
# of 40 simultaneous requests:

# %%
burst = await load(server.url, 40, 40, max_tokens=48, tag="burst ")
codes = burst["codes"]
print(f"429 answered: {429 in codes}; every other answer 200: {set(codes) <= {200, 429}}")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"{codes.count(200)} served, {codes.count(429)} refused with 429 (room: 8 running + 8 queued)")

# %% [markdown]
# **Disconnects.** A client that closes its connection mid-stream must not keep its sequence
# running: the server notices, aborts the request, and the engine frees its KV-cache blocks at
# the next step. The `tutx:kv_cache_usage_perc` gauge shows it:

# %%
with httpx.stream("POST", f"{server.url}/v1/completions",
                  json={"model": "tiny", "prompt": "HAMLET:", "max_tokens": 400, "ignore_eos": True,
                        "temperature": 0, "stream": True}) as r:
    lines = r.iter_lines()
    for _ in range(6):
        next(lines)
    in_use = metric("tutx:kv_cache_usage_perc")
    print(f"while streaming: KV cache in use > 0: {in_use > 0}, running: {metric('tutx:num_requests_running'):.0f}")
# leaving the block closed the connection after a few tokens
for _ in range(100):
    if metric("tutx:kv_cache_usage_perc") == 0:
        break
    time.sleep(0.05)
aborted = metric('tutx:request_success_total{finished_reason="abort"')
print(f"after the disconnect: KV cache in use {100 * metric('tutx:kv_cache_usage_perc'):.1f}%, "
      f"running: {metric('tutx:num_requests_running'):.0f}, aborted so far: {aborted:.0f}")

# %% [markdown]
# The same holds for a non-streaming request whose client gives up (the handler polls for the
# disconnect while it waits), for a per-request timeout (`--request-timeout`, answered `408`), and
# for `SIGTERM`: the server then **drains** — new requests and `/health` get `503` so a balancer
# stops sending, running requests finish for up to `--shutdown-timeout` seconds, then it exits.
#
# ## 5. A response cache
#
# Many requests repeat: the same system prompt and question, an evaluation rerun. A greedy
# request (or a sampled one with a `seed`) always gets the same answer, so the server can keep
# it. The cache is an LRU dictionary with a time-to-live; what matters is the **key**. Keying by
# `hash(str(request))` breaks three ways: Python salts `hash` per process, two equal requests
# can print differently (`1` vs `1.0`, key order, `stop` order), and fields that do not change
# the answer (`stream`, `user`) would split entries. Our key is a SHA-256 of the *normalised*
# request: defaults filled, the prompt as token ids, `stop` sorted, sampling knobs dropped for
# greedy requests, the model name included:

# %%
from tutx.serve.cache import canonical_key

tutx.show(canonical_key)

# %%
body = {"model": "tiny", "prompt": "OTHELLO:\n", "max_tokens": 48, "temperature": 0}
hits0 = metric("tutx:response_cache_hits_total")
t0 = time.perf_counter()
first = http.post(f"{server.url}/v1/completions", json=body).json()
miss_s = time.perf_counter() - t0
hit_s = []
for user in ("ann", "bob", "cy", "dee", "eve"):  # `user` does not change the answer: same key
    t0 = time.perf_counter()
    again = http.post(f"{server.url}/v1/completions", json={**body, "user": user}).json()
    hit_s.append(time.perf_counter() - t0)
    assert again["choices"] == first["choices"]
print(f"cache hits: {metric('tutx:response_cache_hits_total') - hits0:.0f} of 5 repeats, same answer every time")

# %%
# NBVAL_IGNORE_OUTPUT
print(f"miss (the engine generates 48 tokens): {1e3 * miss_s:.1f} ms; hit: {1e3 * np.median(hit_s):.1f} ms "
      f"({miss_s / np.median(hit_s):.0f}x faster)")

# %% [markdown]
# ## 6. Scaling out: replicas behind a load balancer
#
# One process serves one model copy. More traffic needs **replicas** and something in front of
# them that picks one per request. The policies of `tutx serve-balancer` (after the SGLang and
# vLLM routers):
#
# - **round-robin** — in turn; blind to load, fine when all requests cost the same;
# - **least-outstanding** — the replica with the fewest requests in flight; needs a global view;
# - **power of two choices** — sample two replicas at random, take the less loaded. Almost as
#   good as least-outstanding (the maximum load drops from $\Theta(\log n / \log\log n)$ to
#   $\Theta(\log\log n)$, Mitzenmacher 2001) with no global state, so several balancers can run side by side;
# - **prefix affinity** — a consistent hash of the prompt's first characters, so requests that
#   share a prefix meet the same replica's prefix cache, falling back to the least loaded when
#   that replica is much busier.
#
# Active **health checks** (`GET /health` every interval) eject a replica that stops answering
# and re-admit it when it comes back; a request whose connection fails before any byte reached
# the client is **retried** on another replica. We start two replicas and the balancer, run 40
# requests, and kill one replica (SIGKILL, no drain) after the tenth answer:

# %%
server.stop()  # one server at a time on this machine
replicas = [start_server("--max-num-seqs", "8", "--cache-size", "0", wait=False) for _ in range(2)]
for r in replicas:
    r.wait_healthy()
balancer = start_server(*[a for r in replicas for a in ("--backend", r.url)], "--policy", "power-of-two",
                        "--health-interval", "0.2", command="serve-balancer")


async def run_and_kill(url: str, total: int, kill_after: int) -> list[int]:
    codes = []
    sem = asyncio.Semaphore(4)
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        async def one(i):
            async with sem:
                r = await c.post("/v1/completions", json={"model": "tiny", "prompt": f"Scene {i}:", "max_tokens": 16,
                                                          "temperature": 0})
                codes.append(r.status_code)
                if len(codes) == kill_after:
                    replicas[0].kill()
        await asyncio.gather(*(one(i) for i in range(total)))
    return codes


codes = await run_and_kill(balancer.url, 40, 10)
time.sleep(0.5)  # a health check or two
status = http.get(f"{balancer.url}/balancer/replicas").json()
print(f"{codes.count(200)} of {len(codes)} requests answered 200 although replica 0 died mid-run")
print("healthy:", [s["healthy"] for s in status])

# %% [markdown]
# The production path is the same shape with **nginx** in front: `deploy/nginx/tutx.conf` in the
# repository uses `least_conn`, turns `proxy_buffering` off so server-sent events pass through
# chunk by chunk, sets long read timeouts for long generations, and retries the next replica
# when a connection fails (`proxy_next_upstream`). A test starts Debian's nginx with it in front
# of two replicas and kills one mid-run, as above. The upstream block:

# %%
from pathlib import Path

conf = Path(tutx.__file__).resolve().parents[1] / "deploy" / "nginx" / "tutx.conf"
if conf.exists():  # a source checkout (pip installs from git do not ship deploy/)
    text = conf.read_text()
    print(text[text.index("upstream tutx_replicas"):text.index("server {")].strip())

# %%
http.close()
for proc in (balancer, *replicas):
    proc.stop()
print("all servers stopped:", all(p.process.poll() is not None for p in (balancer, *replicas)))

# %% [markdown]
# ## Exercises
#
# Each exercise has a check: write your function in the cell, run it, and the check tells you
# whether it is right (it prints "not solved yet" until you fill in the body). The checks use
# cases they generate themselves. Worked solutions are hidden below each exercise.
#
# ```{exercise}
# :label: ch07-cache-key
#
# Write `my_canonical_request(request)`, the normalised request a cache key is made of. Return
# None when the request samples (`temperature > 0`) without a `seed`. Otherwise return a dict
# with `model`, `prompt` and every key of `ch07.DEFAULTS` (missing ones filled from it; other
# keys such as `stream` and `user` dropped); `stop` a sorted list without duplicates (a string
# becomes a one-item list, None `[]`); `temperature` and `top_p` as floats; and for a greedy
# request `top_p` and `seed` set to None. Why may a sampled request with a seed be cached,
# and what would go wrong if the cache ignored `n`?
# ```

# %%
from tutx.exercises import ch07

print("DEFAULTS =", ch07.DEFAULTS)


def my_canonical_request(request):
    ...  # your code here


ch07.check_canonical_request(my_canonical_request)

# %% [markdown]
# ```{solution-start} ch07-cache-key
# :class: dropdown
# ```
# A seeded request draws from its own generator, so its output is a function of the request —
# cacheable. `n` changes how many choices come back: two requests that differ only in `n` must
# not share an entry.

# %% [solution]
def canonical_request_solution(request):
    r = dict(ch07.DEFAULTS)
    r.update({k: v for k, v in request.items() if k in ch07.DEFAULTS})
    if r["temperature"] > 0 and r["seed"] is None:
        return None
    stop = r["stop"]
    r.update(model=request["model"], prompt=request["prompt"],
             stop=sorted({stop} if isinstance(stop, str) else set(stop or [])),
             temperature=float(r["temperature"]), top_p=float(r["top_p"]))
    if r["temperature"] == 0:
        r["top_p"] = r["seed"] = None
    return r


ch07.check_canonical_request(canonical_request_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch07-power-of-two
#
# Write `my_power_of_two(loads, seed, num_requests)`: `loads[i]` is replica `i`'s requests in
# flight. Send `num_requests` requests one after the other: with `rng = random.Random(seed)`
# (one for the whole run), each samples two distinct replicas with
# `rng.sample(range(len(loads)), 2)`, goes to the one with fewer requests (the first sampled
# on a tie) and adds one to its load; with a single replica it goes there. Return the final
# loads. Then compare the largest load after 10,000 requests on 100 replicas with one random
# choice per request.
# ```

# %%
def my_power_of_two(loads, seed, num_requests):
    ...  # your code here


ch07.check_power_of_two(my_power_of_two)

# %% [markdown]
# ```{solution-start} ch07-power-of-two
# :class: dropdown
# ```
# With one random choice the fullest of 100 replicas ends far above the mean of 100; with two
# choices it stays within a few requests of it — the "power of two choices".

# %% [solution]
import random


def power_of_two_solution(loads, seed, num_requests):
    loads, rng = list(loads), random.Random(seed)
    for _ in range(num_requests):
        if len(loads) == 1:
            loads[0] += 1
            continue
        i, j = rng.sample(range(len(loads)), 2)
        loads[j if loads[j] < loads[i] else i] += 1
    return loads


ch07.check_power_of_two(power_of_two_solution)
rng = random.Random(0)
one_choice = [0] * 100
for _ in range(10_000):
    one_choice[rng.randrange(100)] += 1
print(f"largest load, 10,000 requests on 100 replicas: one random choice {max(one_choice)}, "
      f"two choices {max(power_of_two_solution([0] * 100, 0, 10_000))} (mean 100)")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch07-sse
#
# Write `my_parse_sse(text)`: the events of a server-sent-events stream, in order, JSON payloads
# decoded and `"[DONE]"` kept as the string. Events end at a blank line; an event's several
# `data:` lines join with `"\n"`; one space after `data:` is dropped; lines starting with `:`
# are comments; other fields (`event:`, `id:`, `retry:`) are ignored; `\r\n` ends lines too; an
# unfinished last event (the connection broke) is dropped.
# ```

# %%
def my_parse_sse(text):
    ...  # your code here


ch07.check_parse_sse(my_parse_sse)

# %% [markdown]
# ```{solution-start} ch07-sse
# :class: dropdown
# ```

# %% [solution]
import json


def parse_sse_solution(text):
    events, data = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line == "":
            if data:
                payload = "\n".join(data)
                events.append(payload if payload == "[DONE]" else json.loads(payload))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
    return events


ch07.check_parse_sse(parse_sse_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ## Summary
#
# - One worker thread owns the engine; handlers post to an inbox and read their own output
#   queue, so all clients share the engine's batches — the server returned exactly the
#   engine's greedy text.
# - The OpenAI wire format (completions, chat, SSE streaming, usage, logprobs, field-naming
#   `400`s) lets every existing client talk to our model.
# - A healthy server refuses work it cannot queue (`429` + `Retry-After`), aborts the work of
#   clients that left (their KV blocks come back at once), times out, and drains on `SIGTERM`.
# - Prometheus metrics make TTFT, inter-token latency, queue time and KV usage visible;
#   Chapter 8's serving benchmark drives this server and reads them.
# - A cache keyed by the canonical request answers repeats without the engine.
# - Replicas scale out behind a balancer with health checks and retries, or behind nginx.
#
# `scripts/bench_serve.py` measures the server's own overhead against the engine, cache-hit
# throughput and 64 streaming clients against offline generation.
#
# ## References
#
# - vLLM's OpenAI-compatible server and its metrics: https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html
# - W. Kwon et al., *Efficient Memory Management for Large Language Model Serving with PagedAttention*, SOSP 2023.
# - M. Mitzenmacher, *The Power of Two Choices in Randomized Load Balancing*, IEEE TPDS 12(10), 2001.
# - SGLang router (cache-aware load balancing): https://docs.sglang.ai/router/router.html
# - The OpenAI API reference: https://platform.openai.com/docs/api-reference
# - WHATWG HTML Living Standard, *Server-sent events*: https://html.spec.whatwg.org/multipage/server-sent-events.html
# - nginx `ngx_http_upstream_module` and `proxy_buffering`: https://nginx.org/en/docs/http/ngx_http_upstream_module.html
