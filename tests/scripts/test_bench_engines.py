"""The engine-comparison harness's pure parts (no engine runs): workloads, summaries, the vLLM refusal."""
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_engines", ROOT / "scripts" / "bench_engines.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tok():
    from tutx.models import load_tiny_tokenizer
    return load_tiny_tokenizer()


def test_workloads_are_deterministic_and_shaped_as_described(bench, tok):
    shapes = {"ch6": (64, 16, 256, 8, 128), "chat": (32, 8, 32, 128, 256), "summary": (32, 300, 450, 8, 16),
              "prefix": (64, 216, 264, 32, 64)}
    for name, (n, plo, phi, olo, ohi) in shapes.items():
        work = bench.build_workload(name, tok)
        assert work == bench.build_workload(name, tok), name  # same seed, same requests
        assert work != bench.build_workload(name, tok, seed=1), name
        assert len(work["prompts"]) == len(work["output_lens"]) == n
        assert all(plo <= len(p) <= phi for p in work["prompts"]), name
        assert all(olo <= k <= ohi for k in work["output_lens"]), name
        assert all(isinstance(t, int) for p in work["prompts"] for t in p)
    prefix = bench.build_workload("prefix", tok)["prompts"]
    assert all(p[:200] == prefix[0][:200] for p in prefix)  # the shared system prompt
    assert bench.build_workload("ch6_80m", tok)["prompts"] == bench.build_workload("ch6", tok)["prompts"]
    with pytest.raises(ValueError, match="workload"):
        bench.build_workload("nope", tok)


def test_the_ch6_workload_is_the_chapter_benchmarks(bench, tok):
    from tutx.engine.load import benchmark_requests
    prompts, output_lens = benchmark_requests(tok)
    work = bench.build_workload("ch6", tok)
    assert (work["prompts"], work["output_lens"]) == (prompts, output_lens)
    # the totals Chapter 6 and the recorded race print
    assert (sum(map(len, prompts)), sum(output_lens)) == (9569, 4621)


def test_percentiles_and_summary(bench):
    from tutx.bench import percentile
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 99) == pytest.approx(9.9)
    assert percentile([5.0], 99) == 5.0
    runs = [{"seconds": 2.0, "ttft": [0.1, 0.2, 0.3], "tpot": [0.01, 0.02, 0.03]},
            {"seconds": 4.0, "ttft": [0.3, 0.4, 0.5], "tpot": [0.03, 0.04, 0.05]},
            {"seconds": 1.0, "ttft": [0.2, 0.3, 0.4], "tpot": [0.02, 0.03, 0.04]}]
    s = bench.summarise(runs, output_tokens=100)
    assert s["tokens_per_s"]["runs"] == [50.0, 25.0, 100.0]
    assert (s["tokens_per_s"]["median"], s["tokens_per_s"]["min"], s["tokens_per_s"]["max"]) == (50.0, 25.0, 100.0)
    assert s["ttft_s"]["p50"] == pytest.approx(0.3)  # median over runs of each run's p50
    assert s["tpot_s"]["p50"] == pytest.approx(0.03)
    assert s["ttft_s"]["p99"] == pytest.approx(0.398)  # runs' p99s: 0.298, 0.498, 0.398


def test_clock_ttft_and_tpot(bench):
    clock = bench._Clock(2)
    clock.t0 = 0.0
    clock.first, clock.last = [1.0, 2.0], [3.0, 2.0]
    out = clock.result([[1, 2, 3], [4]], output_lens=[3, 1])
    assert out["ttft"] == [1.0, 2.0] and out["tpot"] == [1.0, 0.0]


def test_refuses_clearly_without_vllm(bench, tmp_path):
    with pytest.raises(SystemExit, match="vLLM is not installed.*make bench-vllm"):
        bench.main(["--vllm-python", str(tmp_path / "no-python"), "--workloads", "ch6", "--out", str(tmp_path)])
    assert not list(tmp_path.glob("*.json"))  # nothing written


def test_both_tutx_configs_run_and_agree(bench, tok):
    """``tutx`` (the defaults) and ``tutx_mixed`` (chunked prompts in decode steps) give the same tokens."""
    from tutx.models import load_tiny
    model, _ = load_tiny()
    assert set(bench.TUTX_CONFIGS) < set(bench.ENGINES)
    work = bench.build_workload("summary", tok)
    work = {"prompts": work["prompts"][:6], "output_lens": work["output_lens"][:6]}
    out = {}
    for name, config in bench.TUTX_CONFIGS.items():
        state = {"model": model, "tok": tok}
        out[name] = bench._run_tutx(state, work, config)
        assert state["engine"].config.mixed_batches == config.get("mixed_batches", False)
        assert [len(t) for t in out[name]["tokens"]] == work["output_lens"]
        assert all(f > 0 for f in out[name]["ttft"])
    assert out["tutx"]["tokens"] == out["tutx_mixed"]["tokens"]
