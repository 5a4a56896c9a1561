"""Chapter 7's checks: their references agree with tutx.serve, and learners' answers are judged right."""
from __future__ import annotations

import json
import random

import pytest

from tutx.exercises import ch07
from tutx.serve import Replica, canonical_key, parse_sse, power_of_two


def test_canonical_request_agrees_with_the_server_key():
    """Equal canonical requests <=> equal server cache keys (on the fields both consider)."""
    cases = [c[0] for c in ch07._cache_cases(seed=3, n=80)]
    seen: dict[str, str] = {}
    for req in cases:
        canon = ch07._solution_canonical_request(req)
        if canon is None:
            assert req.get("temperature", 1.0) > 0 and req.get("seed") is None
            continue
        key = canonical_key({"endpoint": "completion", **canon})
        blob = json.dumps(canon, sort_keys=True)
        assert seen.setdefault(blob, key) == key


def test_power_of_two_reference_matches_the_balancer():
    for seed in range(20):
        rng = random.Random(seed)
        loads = [rng.randrange(5) for _ in range(rng.randint(2, 6))]
        steps = rng.randint(1, 30)
        replicas = [Replica(f"r{i}", outstanding=x) for i, x in enumerate(loads)]
        pick_rng = random.Random(seed)
        for _ in range(steps):
            power_of_two(replicas, pick_rng).outstanding += 1
        assert [r.outstanding for r in replicas] == ch07._solution_power_of_two(loads, seed, steps)


def test_a_learners_answers_pass(capsys):
    def canonical(request):
        r = dict(ch07.DEFAULTS)
        r.update({k: request[k] for k in request if k in ch07.DEFAULTS})
        if r["temperature"] != 0 and r["seed"] is None:
            return None
        stop = r["stop"] if isinstance(r["stop"], list) else [r["stop"]] if r["stop"] else []
        r.update(model=request["model"], prompt=request["prompt"], stop=sorted(set(stop)),
                 temperature=float(r["temperature"]), top_p=float(r["top_p"]))
        if r["temperature"] == 0:
            r["top_p"] = r["seed"] = None
        return r

    def p2c(loads, seed, n):
        loads, rng = loads[:], random.Random(seed)
        for _ in range(n):
            if len(loads) < 2:
                loads[0] += 1
                continue
            a, b = rng.sample(range(len(loads)), 2)
            loads[b if loads[b] < loads[a] else a] += 1
        return loads

    def sse(text):
        events, data = [], []
        for line in text.replace("\r\n", "\n").split("\n"):
            if not line:
                if data:
                    joined = "\n".join(data)
                    events.append(joined if joined == "[DONE]" else json.loads(joined))
                data = []
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        return events

    ch07.check_canonical_request(canonical)
    ch07.check_power_of_two(p2c)
    ch07.check_parse_sse(sse)
    assert capsys.readouterr().out.count("✅") == 3


def test_parse_sse_reference_is_the_servers():
    text = 'data: {"a": 1}\n\ndata: [DONE]\n\n'
    assert ch07._solution_parse_sse(text) == parse_sse(text) == [{"a": 1}, "[DONE]"]


def test_wrong_answers_name_the_case():
    with pytest.raises(AssertionError, match="check_power_of_two: case"):
        ch07.check_power_of_two(ch07._wrong_power_of_two)
