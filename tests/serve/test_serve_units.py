"""The plain-Python pieces of the server: cache, canonical key, SSE parsing, policies, template, config."""
from __future__ import annotations

import random

import pytest

from tutx.serve import Balancer, Replica, ResponseCache, ServerConfig, canonical_key, parse_sse, power_of_two
from tutx.serve.cache import is_deterministic
from tutx.serve.protocol import ChatMessage, apply_chat_template
from tutx.serve.sse import format_event


def test_cache_lru_and_ttl():
    now = [0.0]
    cache = ResponseCache(maxsize=2, ttl=10, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)  # evicts b
    assert cache.get("b") is None and cache.get("c") == 3
    now[0] = 10.5
    assert cache.get("a") is None and len(cache) == 1  # expired entries go
    assert (cache.hits, cache.misses) == (2, 2)
    off = ResponseCache(maxsize=0)
    off.put("x", 1)
    assert off.get("x") is None
    with pytest.raises(ValueError, match="ttl"):
        ResponseCache(ttl=0)
    with pytest.raises(TypeError, match="maxsize"):
        ResponseCache(maxsize=1.5)


def test_canonical_key():
    base = {"endpoint": "completion", "model": "tiny", "prompt": [[1, 2]], "max_tokens": 8, "temperature": 0,
            "top_p": 1, "top_k": None, "seed": None, "stop": ["b", "a"], "n": 1, "echo": False}
    same = dict(reversed(list(base.items())))
    same.update(temperature=0.0, top_p=0.9, top_k=-1, seed=5, stop=["a", "b"])  # greedy: sampling fields moot
    assert canonical_key(base) == canonical_key(same)
    for change in ({"model": "other"}, {"prompt": [[1, 3]]}, {"max_tokens": 9}, {"stop": ["a"]}, {"n": 2},
                   {"echo": True}):
        assert canonical_key({**base, **change}) != canonical_key(base), change
    sampled = {**base, "temperature": 0.7, "seed": 1}
    assert canonical_key(sampled) != canonical_key({**sampled, "seed": 2})
    assert len(canonical_key(base)) == 64
    assert is_deterministic(0, None) and is_deterministic(0.5, 3) and not is_deterministic(0.5, None)


def test_parse_sse_rules():
    text = ('data: {"a": 1}\n\n: a comment\n\nevent: x\ndata: {"b":\ndata: 2}\n\r\n'
            'data:{"c":3}\n\ndata: [DONE]\n\ndata: {"half": ')
    assert parse_sse(text) == [{"a": 1}, {"b": 2}, {"c": 3}, "[DONE]"]
    assert parse_sse(format_event({"x": "é"}) + format_event("[DONE]")) == [{"x": "é"}, "[DONE]"]


def test_policies():
    reps = [Replica(f"http://r{i}") for i in range(4)]
    rr = Balancer("round-robin")
    assert [rr.choose(reps).url for _ in range(5)] == ["http://r0", "http://r1", "http://r2", "http://r3", "http://r0"]
    reps[0].outstanding, reps[1].outstanding, reps[2].outstanding, reps[3].outstanding = 3, 1, 2, 5
    assert Balancer("least-outstanding").choose(reps).url == "http://r1"
    rng = random.Random(0)
    picks = [power_of_two(reps, rng).url for _ in range(400)]
    assert "http://r3" not in picks  # the busiest never wins a pair
    assert picks.count("http://r1") > picks.count("http://r0")
    pa = Balancer("prefix-affinity")
    for r in reps:
        r.outstanding = 0
    owner = pa.choose(reps, "ROMEO: a long shared system prompt")
    assert all(pa.choose(reps, "ROMEO: a long shared system prompt").url == owner.url for _ in range(5))
    owners = {pa.choose(reps, f"prompt {i}").url for i in range(64)}
    assert len(owners) == 4  # keys spread over the ring
    owner.outstanding = 50  # much busier than the rest: falls back to the least loaded
    assert pa.choose(reps, "ROMEO: a long shared system prompt").url != owner.url
    keys = [f"k{i}" for i in range(200)]  # consistent hashing: removing a replica moves only its keys
    before = {k: pa.ring_owner(reps, k).url for k in keys}
    after = {k: pa.ring_owner(reps[:3], k).url for k in keys}
    assert all(before[k] == after[k] for k in keys if before[k] != "http://r3")
    with pytest.raises(ValueError, match="policy"):
        Balancer("random")
    with pytest.raises(ValueError, match="replicas"):
        rr.choose([])


def test_chat_template():
    msgs = [ChatMessage(role="system", content="A room in the castle."), ChatMessage(role="user", content="Hi"),
            ChatMessage(role="assistant", content="Hail."), ChatMessage(role="user", content="Who?", name="Ophelia")]
    assert apply_chat_template(msgs) == ("[A room in the castle.]\n\nHORATIO:\nHi\n\nHAMLET:\nHail.\n\n"
                                         "OPHELIA:\nWho?\n\nHAMLET:\n")


def test_server_config_checks():
    with pytest.raises(ValueError, match="max_queued"):
        ServerConfig(max_queued=-1)
    with pytest.raises(TypeError, match="request_timeout"):
        ServerConfig(request_timeout="1")
    with pytest.raises(ValueError, match="api_key"):
        ServerConfig(api_key="")


def test_cli_reports_bad_settings():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "tutx.serve.cli", "serve", "--max-queued", "-1"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "max_queued" in r.stderr
    r = subprocess.run([sys.executable, "-m", "tutx.serve.cli", "serve-balancer", "--backend", "nowhere"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "backends" in r.stderr


def test_start_server_checks_its_arguments():
    from tutx.serve import start_server

    with pytest.raises(ValueError, match="command"):
        start_server(command="serve-everything")
    with pytest.raises(ValueError, match="port"):
        start_server(port=0)
    with pytest.raises(TypeError, match="threads"):
        start_server(threads="2")
