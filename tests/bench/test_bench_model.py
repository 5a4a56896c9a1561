"""The offline suite, its statistics, the SLO search and the cold-cache helpers."""
import random
import statistics

import pytest
import torch

from _tiny_llama import tiny_llama
from tutx.bench import benchmark_model, bootstrap_ci, flush_l2, percentile, rotating_calls, summarize, tensor_peak
from tutx.bench.model import check_grid, decode_latency_fn, memory_model, weight_bytes
from tutx.bench.slo import max_throughput_under_slo


# ---- statistics on known data ----------------------------------------------------------------

def test_bootstrap_ci_on_known_data():
    assert bootstrap_ci([5.0] * 10) == (5.0, 5.0)  # no spread, no uncertainty
    data = list(range(1, 102))  # median 51
    lo, hi = bootstrap_ci(data, confidence=0.9, n_resamples=400, seed=1)
    assert lo < 51 < hi and hi - lo < 30
    assert bootstrap_ci(data, seed=3) == bootstrap_ci(data, seed=3)  # seeded: reproducible
    wide = bootstrap_ci(data, confidence=0.99, n_resamples=400, seed=1)
    assert wide[0] <= lo and wide[1] >= hi


def test_bootstrap_ci_matches_the_exercise_protocol():
    from tutx.exercises.ch08 import _solution_bootstrap_ci

    samples = [1.0, 2.5, 2.0, 9.0, 1.5, 2.2, 1.9]
    assert bootstrap_ci(samples, 0.95, 300, 7) == pytest.approx(_solution_bootstrap_ci(samples, 0.95, 300, 7))


def test_summarize_and_percentiles():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0])
    assert s["median"] == 3.0 and s["n"] == 5 and s["p10"] == pytest.approx(1.4) and s["iqr"] == pytest.approx(2.0)
    assert s["ci_lo"] <= 3.0 <= s["ci_hi"]
    assert percentile([10, 20, 30, 40], 50) == 25


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"samples": []}, ValueError, "samples: expected at least one"),
    ({"samples": ["a"]}, TypeError, "samples"),
    ({"samples": [1.0], "confidence": 1.0}, ValueError, "confidence"),
    ({"samples": [1.0], "n_resamples": 0}, ValueError, "n_resamples"),
])
def test_bootstrap_ci_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        bootstrap_ci(**kwargs)


# ---- the offline suite ------------------------------------------------------------------------

def test_benchmark_model_rows_and_memory_split():
    model = tiny_llama()
    rows = benchmark_model(model, batch_sizes=[1, 3], prompt_lens=[5], gen_lens=[3], repeat=2, warmup=0, progress=False)
    assert [(r["batch"], r["prompt_len"], r["gen_len"]) for r in rows] == [(1, 5, 3), (3, 5, 3)]
    cfg = model.config
    for r in rows:
        assert r["prefill_ms"] > 0 and r["decode_ms"] > 0
        assert r["prefill_ms_p10"] <= r["prefill_ms"] <= r["prefill_ms_p90"]
        assert r["prefill_ms_ci"][0] <= r["prefill_ms"] <= r["prefill_ms_ci"][1]
        assert r["decode_tok_s"] == pytest.approx(r["batch"] / (r["decode_ms"] / 1e3))
        kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 4 * r["batch"] * (5 + 3 - 1)
        assert r["kv_cache_mb"] * 2**20 == kv_bytes
        assert r["weights_mb"] * 2**20 == weight_bytes(model)
        assert r["activations_mb"] > 0  # at least the logits
    assert rows[1]["activations_mb"] > rows[0]["activations_mb"]


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"batch_sizes": []}, ValueError, "batch_sizes: expected at least one value"),
    ({"batch_sizes": [0]}, ValueError, r"batch_sizes\[0\]"),
    ({"prompt_lens": [4, -1]}, ValueError, r"prompt_lens\[1\]"),
    ({"gen_lens": [1]}, ValueError, "gen_lens: expected lengths >= 2"),
    ({"batch_sizes": "1"}, TypeError, "batch_sizes"),
    ({"repeat": 0}, ValueError, "repeat"),
    ({"cold_cache": 1}, TypeError, "cold_cache"),
])
def test_benchmark_model_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        benchmark_model(tiny_llama(layers=1), progress=False, **kwargs)


def test_check_grid_accepts_an_int():
    assert check_grid("batch_sizes", 4) == [4]
    with pytest.raises(TypeError, match="batch_sizes\\[0\\]"):
        check_grid("batch_sizes", [True])


def test_tensor_peak_counts_live_tensors():
    def work():
        a = torch.ones(1000, 250)  # 1 MB
        b = a * 2  # 2 MB live
        del a
        c = b + 1  # 2 MB live again
        return c.view(-1)[:10].sum()  # views add nothing

    _, peak = tensor_peak(work)
    assert peak == pytest.approx(2 * 1_000_000, rel=0.01)
    with pytest.raises(TypeError, match="fn"):
        tensor_peak(3)


def test_decode_latency_fn_and_memory_model():
    model = tiny_llama(layers=1)
    measure = decode_latency_fn(model, prompt_len=4, gen_len=2)
    assert measure(2) > 0
    mem = memory_model(model, seq_len=10)
    per_token = 2 * 1 * 2 * 8 * 4
    assert mem(3) - mem(1) == 2 * 10 * per_token and mem(0) == weight_bytes(model)


def test_cold_cache_helpers_on_cpu():
    flush_l2("cpu")  # a no-op without a GPU
    made = []
    run, calls = rotating_calls(lambda: made.append(1) or (lambda: None), weight_bytes=1024, device="cpu")
    assert calls == 1 and len(made) == 1
    run()
    with pytest.raises(TypeError, match="make_call"):
        rotating_calls(3, 10, "cpu")


# ---- max throughput under a latency SLO --------------------------------------------------------

def _fake(knee_ms: float = 30.0, noise: float = 0.05, seed: int = 0):
    rng = random.Random(seed)
    return lambda batch: (10 + 0.5 * batch) * rng.uniform(1 - noise, 1 + noise) / 1e3  # 30 ms at batch 40


def test_slo_search_finds_a_known_knee():
    found = max_throughput_under_slo(_fake(), slo=0.0305, repeat=7, progress=False)
    assert found.knee in (40, 41)  # true knee: 10 + 0.5 b <= 30.5 -> b = 41; ±5% noise blurs it by one
    assert found.stop == "slo" and 0 <= found.confidence <= 1
    assert found.throughput == pytest.approx(found.knee / found.latency)
    batches = [p["batch"] for p in found.points]
    assert {1, 2, 4, 8, 16, 32, 64} <= set(batches) and len(batches) <= 13  # doubling, then bisection (sorted)


def test_slo_search_stops_at_the_memory_limit_and_max_batch():
    found = max_throughput_under_slo(_fake(), slo=1.0, repeat=3, memory_fn=lambda b: b * 1e6, memory_limit=20e6,
                                     progress=False)
    assert found.knee == 20 and found.stop == "memory"
    capped = max_throughput_under_slo(_fake(), slo=1.0, repeat=3, max_batch=50, progress=False)
    assert capped.knee == 50 and capped.stop == "max_batch"
    none = max_throughput_under_slo(_fake(), slo=0.001, repeat=3, progress=False)
    assert none.knee is None and none.throughput == 0.0


def test_slo_search_stops_on_out_of_memory():
    def measure(batch):
        if batch > 10:
            raise RuntimeError("CUDA out of memory. Tried to allocate")
        return 0.001

    found = max_throughput_under_slo(measure, slo=1.0, repeat=2, progress=False)
    assert found.knee == 10 and found.stop == "oom"


@pytest.mark.parametrize("kwargs, exc, match", [
    ({"measure": 3}, TypeError, "measure"),
    ({"slo": 0}, ValueError, "slo"),
    ({"repeat": 0}, ValueError, "repeat"),
    ({"memory_limit": 10.0}, ValueError, "memory_fn, memory_limit"),
])
def test_slo_search_errors(kwargs, exc, match):
    args = {"measure": lambda b: 0.01, "slo": 0.1, **kwargs}
    with pytest.raises(exc, match=match):
        max_throughput_under_slo(args.pop("measure"), args.pop("slo"), progress=False, **args)
