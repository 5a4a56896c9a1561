"""The OpenAI API end to end: the official ``openai`` client and httpx against a real uvicorn server."""
from __future__ import annotations

import httpx
import openai
import pytest

from tutx.engine import SamplingParams
from tutx.serve import ServerConfig, create_app, parse_sse

from _serve_helpers import make_engine, thread_server


@pytest.fixture(scope="module")
def client(server):
    url, _, _ = server
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tiny):
    """Greedy completions from LLMEngine.generate, for the server to match."""
    engine = make_engine(tiny)
    prompts = ["ROMEO:", "JULIET:\nO", "First Citizen:\nBefore we proceed"]
    outs = engine.generate(prompts, SamplingParams(temperature=0, max_tokens=12), progress=False)
    return {p: o for p, o in zip(prompts, outs)}


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["tiny"]


def test_greedy_completion_equals_engine(client, reference):
    for prompt, ref in reference.items():
        r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0)
        assert r.choices[0].text == ref.text
        assert r.choices[0].finish_reason == ref.finish_reason
        assert r.usage.prompt_tokens == len(ref.prompt_token_ids)
        assert r.usage.completion_tokens == len(ref.token_ids)
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_token_id_prompts_echo_and_batches(client, reference, tiny):
    tok = tiny[1]
    prompt, ref = next(iter(reference.items()))
    r = client.completions.create(model="tiny", prompt=tok.encode(prompt), max_tokens=12, temperature=0, echo=True)
    assert r.choices[0].text == prompt + ref.text
    r = client.completions.create(model="tiny", prompt=list(reference), max_tokens=12, temperature=0, n=2)
    assert len(r.choices) == 6 and [c.index for c in r.choices] == list(range(6))
    assert [c.text for c in r.choices] == [o.text for o in reference.values() for _ in range(2)]
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=0, echo=True)
    assert r.choices[0].text == prompt and r.usage.completion_tokens == 0


def test_streaming_completion_matches_non_streaming(client, reference, server):
    prompt, ref = next(iter(reference.items()))
    server[2].state.tutx.cache.clear()  # stream from the engine, not a replay of the cache
    chunks = list(client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == ref.finish_reason
    assert chunks[-1].usage.completion_tokens == len(ref.token_ids)
    assert sum(1 for c in chunks if c.choices) >= 3  # it streamed, not one blob


def test_chat_streaming_and_n(client):
    msgs = [{"role": "user", "content": "What news?"}]
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=16, temperature=0)
    text = full.choices[0].message.content
    assert full.choices[0].message.role == "assistant" and full.choices[0].finish_reason in ("stop", "length")
    assert "\n\n" not in text  # the turn ends at a blank line
    stream = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=16, temperature=0, stream=True)
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(parts) == text
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=1.0, n=3, seed=7)
    again = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=1.0, n=3, seed=7)
    assert len(r.choices) == 3 and [c.message.content for c in r.choices] == [c.message.content for c in again.choices]


def test_sampling_seed_and_extra_body(client):
    kw = dict(model="tiny", prompt="KING:", max_tokens=10, temperature=0.9, top_p=0.9, extra_body={"top_k": 20})
    a = client.completions.create(seed=1, **kw).choices[0].text
    assert a == client.completions.create(seed=1, **kw).choices[0].text
    assert len({client.completions.create(seed=s, **kw).choices[0].text for s in range(2, 6)}) > 1


def test_stop_strings(client, reference):
    prompt, ref = next(iter(reference.items()))
    stop = ref.text[4:6]
    r = client.completions.create(model="tiny", prompt=prompt, max_tokens=12, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == ref.text[: ref.text.find(stop)]


@pytest.mark.parametrize("body, param", [
    ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "a", "max_tokens": -3}, "max_tokens"),
    ({"prompt": "a", "model": "gpt-4"}, "model"),
    ({"prompt": "a", "n": 0}, "n"),
    ({"prompt": "a", "n": 99}, "n"),
    ({"prompt": "a", "stop": ""}, "stop"),
    ({"prompt": "a", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "a", "temperature": -1}, "temperature"),
    ({"prompt": "hello " * 600}, "prompt"),
    ({"prompt": "a", "max_tokens": 600}, "max_tokens"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": [5000]}, "prompt"),
    ({}, "prompt"),
])
def test_bad_requests_name_the_field(server, body, param):
    url = server[0]
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", **body}, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and param in err["message"]


def test_malformed_json_and_unknown_route(server):
    url = server[0]
    r = httpx.post(f"{url}/v1/completions", content=b'{"model": "tiny", "prompt": ', timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.get(f"{url}/v1/nothing", timeout=30)
    assert r.status_code == 404 and "error" in r.json()
    with pytest.raises(openai.BadRequestError, match="model"):
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0).completions.create(model="gpt", prompt="a")


def test_request_id_tokenize_detokenize(server, tiny):
    url, tok = server[0], tiny[1]
    r = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "ROMEO:", "max_tokens": 2},
                   headers={"X-Request-Id": "my-id-42"}, timeout=30)
    assert r.headers["x-request-id"] == "my-id-42" and r.json()["id"] == "cmpl-my-id-42"
    assert len(httpx.get(f"{url}/health", timeout=5).headers["x-request-id"]) == 32  # made up when absent
    t = httpx.post(f"{url}/tokenize", json={"prompt": "ROMEO: hello"}, timeout=5).json()
    assert t["tokens"] == tok.encode("ROMEO: hello") and t["count"] == len(t["tokens"]) and t["max_model_len"] == 512
    d = httpx.post(f"{url}/detokenize", json={"tokens": t["tokens"]}, timeout=5).json()
    assert d["prompt"] == "ROMEO: hello"
    assert httpx.post(f"{url}/detokenize", json={"tokens": [-1]}, timeout=5).status_code == 400


def test_cache_hits_and_metrics(server):
    url, engine, app = server
    body = {"model": "tiny", "prompt": "HAMLET:\nTo be", "max_tokens": 8, "temperature": 0}
    first = httpx.post(f"{url}/v1/completions", json=body, timeout=30).json()
    cache = app.state.tutx.cache
    hits = cache.hits
    second = httpx.post(f"{url}/v1/completions", json={**body, "user": "someone else"}, timeout=30).json()
    assert cache.hits == hits + 1 and second["choices"] == first["choices"] and second["usage"] == first["usage"]
    events = parse_sse(httpx.post(f"{url}/v1/completions", json={**body, "stream": True}, timeout=30).text)
    assert cache.hits == hits + 2 and events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == first["choices"][0]["text"]
    sampled = {**body, "temperature": 0.8}
    httpx.post(f"{url}/v1/completions", json=sampled, timeout=30)
    httpx.post(f"{url}/v1/completions", json=sampled, timeout=30)
    assert cache.hits == hits + 2  # unseeded sampling is never cached
    text = httpx.get(f"{url}/metrics", timeout=5).text
    for name in ("tutx:time_to_first_token_seconds_bucket", "tutx:inter_token_latency_seconds_bucket",
                 "tutx:e2e_request_latency_seconds_count", "tutx:request_queue_time_seconds_count",
                 "tutx:prompt_tokens_total", "tutx:generation_tokens_total", "tutx:num_requests_running",
                 "tutx:num_requests_waiting", "tutx:kv_cache_usage_perc", "tutx:num_preemptions_total",
                 "tutx:response_cache_hits_total", "tutx:response_cache_misses_total",
                 'tutx:request_success_total{finished_reason="length",model_name="tiny"}',
                 'tutx:http_requests_total{endpoint="/v1/completions",model_name="tiny",status="200"}'):
        assert name in text, name
    assert 'tutx:kv_cache_usage_perc{model_name="tiny"} 0.0' in text


def test_auth_and_body_limit(tiny):
    app = create_app(make_engine(tiny), ServerConfig(api_key="s3cret", max_body_bytes=2000))
    with thread_server(app) as url:
        body = {"model": "tiny", "prompt": "a", "max_tokens": 1}
        r = httpx.post(f"{url}/v1/completions", json=body, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.post(f"{url}/v1/completions", json=body, headers={"Authorization": "Bearer wrong"},
                          timeout=30).status_code == 401
        ok = openai.OpenAI(base_url=f"{url}/v1", api_key="s3cret", max_retries=0)
        assert ok.completions.create(model="tiny", prompt="a", max_tokens=1).choices
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # probes need no key
        big = {**body, "prompt": "x" * 5000}
        r = httpx.post(f"{url}/v1/completions", json=big, headers={"Authorization": "Bearer s3cret"}, timeout=30)
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunked():
            yield b'{"model": "tiny", "prompt": "'
            for _ in range(10):
                yield b"y" * 500
            yield b'"}'
        r = httpx.post(f"{url}/v1/completions", content=chunked(), timeout=30,
                       headers={"Authorization": "Bearer s3cret", "content-type": "application/json"})
        assert r.status_code == 413


def test_logprobs_completion_chat_and_scoring(client, tiny):
    import torch

    model, tok = tiny
    r = client.completions.create(model="tiny", prompt="ROMEO:", max_tokens=5, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == r.choices[0].text
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):  # greedy: the chosen token is the likeliest
        assert 3 <= len(top) <= 4 and chosen == pytest.approx(max(top.values()), abs=1e-5)
    # lm-evaluation-harness's local-completions: echo + logprobs + max_tokens=0 scores a text
    text = "ROMEO:\nBut soft, what light"
    s = client.completions.create(model="tiny", prompt=text, max_tokens=0, echo=True, logprobs=1, temperature=0)
    ids = tok.encode(text)
    got = s.choices[0].logprobs
    assert s.choices[0].text == text and got.token_logprobs[0] is None and len(got.token_logprobs) == len(ids)
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)  # [S, V]
    want = [ref[i - 1, ids[i]].item() for i in range(1, len(ids))]
    assert got.token_logprobs[1:] == pytest.approx(want, abs=1e-3)
    c = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Speak."}], max_tokens=4,
                                       temperature=0, logprobs=True, top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert len(content) == c.usage.completion_tokens and all(len(t.top_logprobs) == 2 for t in content)
    stream = client.completions.create(model="tiny", prompt="KING:", max_tokens=4, temperature=0.5, seed=3,
                                       logprobs=1, stream=True)
    assert sum(len(ch.choices[0].logprobs.tokens) for ch in stream if ch.choices and ch.choices[0].logprobs) == 4


def test_concurrent_clients_share_engine_steps(server):
    """Requests from many clients run in the same engine steps (no per-request lock)."""
    import asyncio

    url, _, app = server
    sizes = []
    hook = lambda stats, outputs: sizes.append(len(outputs))  # noqa: E731 (runs in the worker thread)
    front = app.state.tutx.front
    front.step_hooks.append(hook)
    try:
        async def run():
            async with httpx.AsyncClient(base_url=url, timeout=60) as c:
                body = {"model": "tiny", "max_tokens": 24, "temperature": 0, "ignore_eos": True}
                return await asyncio.gather(*(c.post("/v1/completions", json={**body, "prompt": f"Lord {i}:"})
                                              for i in range(6)))
        assert all(r.status_code == 200 for r in asyncio.run(run()))
    finally:
        front.step_hooks.remove(hook)
    assert max(sizes) >= 4, sizes
