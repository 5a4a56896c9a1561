"""Serving metrics on hand-made timelines with known answers; SLO parsing; arrivals; the SSE reader."""
from __future__ import annotations

import math
import statistics

import pytest

from tutx.bench.arrivals import arrival_times, parse_rate, sample_prompts
from tutx.bench.serving import SSEReader
from tutx.bench.serving_metrics import RequestRecord, meets_slos, parse_goodput, serving_summary, slo_break, summarise_ms


def _rec(send, chunks, end, tokens, prompt=10, error=None):
    return RequestRecord(send=send, prompt_tokens=prompt, chunk_times=list(chunks), end=end, output_tokens=tokens,
                         error=error)


# A: sent at 0, first token at 0.1, then chunks every 0.02 s; 5 tokens, ends at 0.18.
# B: sent at 1.0, first token at 1.3, one chunk carrying 3 tokens at 1.5; 4 tokens, ends at 1.5.
A = _rec(0.0, [0.1, 0.12, 0.14, 0.16, 0.18], 0.18, 5)
B = _rec(1.0, [1.3, 1.5], 1.5, 4, prompt=20)
FAILED = _rec(2.0, [], None, 0, error="HTTP 500: boom")


def test_per_request_ttft_tpot_itl_e2el():
    assert A.ttft == pytest.approx(0.1) and B.ttft == pytest.approx(0.3)
    assert A.e2el == pytest.approx(0.18) and B.e2el == pytest.approx(0.5)
    assert A.tpot == pytest.approx(0.08 / 4)  # (E2E - TTFT) / (tokens - 1): the first token excluded
    assert B.tpot == pytest.approx(0.2 / 3)  # one chunk with 3 tokens: TPOT still per token
    assert A.itl == pytest.approx([0.02] * 4) and B.itl == pytest.approx([0.2])  # ITL: per chunk gap
    assert _rec(0, [0.1], 0.1, 1).tpot is None  # one token: no TPOT
    assert not FAILED.ok and A.ok


def test_serving_metrics_known_answers():
    m = serving_summary([A, B, FAILED], duration=2.0)
    assert (m["completed"], m["failed"]) == (2, 1)
    assert m["failures"] == {"HTTP 500: boom": 1}
    assert m["total_input_tokens"] == 30 and m["total_output_tokens"] == 9  # failed requests do not count
    assert m["request_throughput"] == pytest.approx(1.0)
    assert m["output_throughput"] == pytest.approx(4.5)
    assert m["total_token_throughput"] == pytest.approx(19.5)
    assert m["ttft_ms"]["mean"] == pytest.approx(200) and m["ttft_ms"]["median"] == pytest.approx(200)
    assert m["ttft_ms"]["p90"] == pytest.approx(100 + 0.9 * 200)  # linear between the two order statistics
    assert m["tpot_ms"]["mean"] == pytest.approx(1e3 * (0.02 + 0.2 / 3) / 2)
    itl = [20, 20, 20, 20, 200]  # pooled over requests
    assert m["itl_ms"]["mean"] == pytest.approx(statistics.fmean(itl))
    assert m["itl_ms"]["median"] == pytest.approx(20) and m["itl_ms"]["p99"] == pytest.approx(20 + 0.96 * 180)
    assert m["e2el_ms"]["median"] == pytest.approx(340)
    assert "request_goodput" not in m


def test_percentiles_match_numpy():
    np = pytest.importorskip("numpy")
    values = [0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 1.5]
    s = summarise_ms(values)
    for key, q in (("median", 50), ("p90", 90), ("p99", 99)):
        assert s[key] == pytest.approx(1e3 * np.percentile(values, q))
    assert summarise_ms([]) == {"mean": 0.0, "median": 0.0, "p90": 0.0, "p99": 0.0}


def test_goodput():
    # A: TTFT 100 ms, TPOT 20 ms, E2E 180 ms; B: TTFT 300 ms, TPOT 66.7 ms, E2E 500 ms.
    assert meets_slos(A, {"ttft": 100, "tpot": 20}) and not meets_slos(B, {"ttft": 299})
    assert not meets_slos(FAILED, {"ttft": 1e9})
    assert meets_slos(_rec(0, [0.1], 0.1, 1), {"tpot": 1})  # no TPOT with one token: that SLO holds
    m = serving_summary([A, B, FAILED], duration=2.0, slos={"ttft": 200, "e2el": 1000})
    assert m["good_requests"] == 1 and m["request_goodput"] == pytest.approx(0.5)
    assert serving_summary([A, B], 1.0, {"tpot": 70})["good_requests"] == 2
    assert serving_summary([A, B], 1.0, {"tpot": 50})["good_requests"] == 1


def test_slo_break_is_the_first_rate_below_90_percent():
    rows = [{"request_rate": r, "completed": 10, "failed": 0, "good_requests": g} for r, g in ((1, 10), (2, 9), (4, 8), (8, 2))]
    assert slo_break(rows)["request_rate"] == 4
    assert slo_break(rows[:2]) is None
    assert slo_break([{"request_rate": 1, "completed": 5, "failed": 5, "good_requests": 5}])["request_rate"] == 1
    assert slo_break([{"request_rate": 1, "completed": 5, "failed": 0}]) is None  # no SLO given


def test_parse_goodput():
    assert parse_goodput("ttft:500 tpot:50") == {"ttft": 500.0, "tpot": 50.0}
    assert parse_goodput(["ttft:500", "e2el:2000.5"]) == {"ttft": 500.0, "e2el": 2000.5}
    assert parse_goodput("ttft:500,tpot:50") == {"ttft": 500.0, "tpot": 50.0}
    for bad, match in (("ttft", "key:ms"), ("latency:5", "ttft"), ("ttft:abc", "milliseconds"),
                       ("ttft:-1", "> 0"), ("ttft:0", "> 0"), ("ttft:1 ttft:2", "twice"), ("", "at least one"),
                       ("tpot:inf", "finite"), ("tpot:nan", "> 0")):
        with pytest.raises(ValueError, match=match):
            parse_goodput(bad)
    with pytest.raises(TypeError, match="goodput"):
        parse_goodput(500)


def test_serving_metrics_checks_duration():
    with pytest.raises(ValueError, match="duration"):
        serving_summary([A], 0)


def test_arrivals_poisson_and_gamma_statistics():
    n, rate = 4000, 10.0
    for burstiness in (1.0, 0.25, 4.0):
        t = arrival_times(n, rate, burstiness, seed=1)
        gaps = [b - a for a, b in zip(t, t[1:])]
        assert t[0] == 0 and all(g >= 0 for g in gaps)
        assert statistics.fmean(gaps) == pytest.approx(1 / rate, rel=0.1)  # the rate holds for any burstiness
        cv = statistics.pstdev(gaps) / statistics.fmean(gaps)  # gamma: CV = 1 / sqrt(shape)
        assert cv == pytest.approx(1 / math.sqrt(burstiness), rel=0.15)
    assert arrival_times(50, 3.0, seed=7) == arrival_times(50, 3.0, seed=7) != arrival_times(50, 3.0, seed=8)
    assert arrival_times(3, math.inf) == [0.0, 0.0, 0.0]


def test_arrival_and_rate_errors():
    with pytest.raises(ValueError, match="request_rate"):
        arrival_times(3, 0)
    with pytest.raises(TypeError, match="request_rate"):
        arrival_times(3, "2")
    with pytest.raises(ValueError, match="burstiness"):
        arrival_times(3, 1.0, burstiness=0)
    with pytest.raises(ValueError, match="num_requests"):
        arrival_times(0, 1.0)
    assert parse_rate("inf") == math.inf and parse_rate("2.5") == 2.5
    with pytest.raises(ValueError, match="request rate"):
        parse_rate("fast")
    with pytest.raises(ValueError, match="request_rate"):
        parse_rate("-1")


class CharTokenizer:  # one token per character: the sampling logic without loading transformers
    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(map(chr, ids))


def test_sample_prompts_lengths_and_seed():
    tok = CharTokenizer()
    fixed = sample_prompts(6, 32, 16, seed=3, tokenizer=tok)
    assert [p.prompt_len for p in fixed] == [32] * 6 and [p.output_len for p in fixed] == [16] * 6
    assert fixed == sample_prompts(6, 32, 16, seed=3, tokenizer=tok) != sample_prompts(6, 32, 16, seed=4, tokenizer=tok)
    spread = sample_prompts(40, 100, 50, range_ratio=0.5, seed=0, tokenizer=tok)
    assert all(50 <= p.prompt_len <= 150 and 25 <= p.output_len <= 75 for p in spread)
    assert len({p.prompt_len for p in spread}) > 10
    assert all(tok.encode(p.text) == list(p.token_ids) for p in spread)
    from tutx.models import heldout_text
    assert all(p.text in heldout_text() for p in fixed)  # spans of the held-out plays
    with pytest.raises(ValueError, match="range_ratio"):
        sample_prompts(2, 8, 8, range_ratio=1.5, tokenizer=tok)
    with pytest.raises(ValueError, match="input_len"):
        sample_prompts(2, 10_000, 8, tokenizer=tok, text="too short")


def test_sse_reader_handles_split_and_odd_streams():
    r = SSEReader()
    assert r.feed(b"data: {\"a\"") == [] and r.pending
    assert r.feed(b": 1}\r\n\r\n: a comment\n\nevent: x\ndata: [DO") == ['{"a": 1}']
    assert r.feed(b"NE]\n\n") == ["[DONE]"] and not r.pending
    assert SSEReader().feed("data: one\ndata: two\n\ndata:x\n\n") == ["one\ntwo", "x"]
