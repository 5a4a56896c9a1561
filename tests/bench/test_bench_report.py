import json

import pytest

from tutx.bench import Report, performance_report


def _offline_rows():
    rows = []
    for b in (1, 4):
        for p in (16, 64):
            rows.append({"batch": b, "prompt_len": p, "gen_len": 4, "prefill_ms": 1.0 * b * p, "prefill_ms_p10": 0.9 * b * p,
                         "prefill_ms_p90": 1.1 * b * p, "prefill_ms_ci": [0.95 * b * p, 1.05 * b * p], "decode_ms": 2.0 + b,
                         "prefill_tok_s": 1000.0, "decode_tok_s": b / (2.0 + b) * 1e3, "weights_mb": 16.0,
                         "kv_cache_mb": 0.01 * b * p, "activations_mb": 0.1 * b * p})
    return rows


def _serving_rows():
    return [{"request_rate": r, "output_throughput": 10.0 * r, "completed": 8, "failed": 0,
             "ttft_ms": {"mean": 5.0 * r, "median": 5.0 * r, "p90": 7.0 * r, "p99": 9.0 * r},
             "tpot_ms": {"mean": 2.0, "median": 2.0, "p90": 3.0, "p99": 4.0}} for r in (1.0, 2.0, 4.0)]


def test_report_has_header_tables_and_figures(tmp_path):
    results = {"environment": {"device": "Test CPU (2 threads)", "torch": "2.x", "date": "2026-12-02T00:00"},
               "bench_offline": _offline_rows(), "serve_sweep": _serving_rows()}
    rep = performance_report(results, title="T")
    assert isinstance(rep, Report)
    md = rep.to_markdown()
    assert md.startswith("# T\n") and "**device**: Test CPU (2 threads)" in md and "**baseline**: batch 1, prompt 16" in md
    assert "## bench_offline" in md and "## serve_sweep" in md and "ttft_ms_p99" in md
    assert set(rep.figures) == {"bench_offline_latency_vs_batch", "bench_offline_throughput_vs_batch",
                                "bench_offline_memory_vs_seq_len", "serve_sweep_latency_throughput"}
    assert "| 4 | 64 | 4 | 256.00 |" in md  # a row, formatted
    html = rep.to_html()
    assert html.count("<img") == 4 and "<table>" in html and "<b>device</b>" in html
    out = rep.save(tmp_path / "out")
    assert (out / "report.md").read_text().count("figures/") == 4
    assert len(list((out / "figures").glob("*.png"))) == 4 and (out / "report.html").is_file()


def test_report_from_a_path_names_the_given_baseline(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"environment": {"device": "x"}, "other": [{"a": 1, "b": [1.0, 2.0]}]}))
    rep = performance_report(path, baseline="HF fp32")
    assert "**baseline**: HF fp32" in rep.to_markdown() and "| 1 | 1.000–2.000 |" in rep.to_markdown()
    assert rep.figures == {}


def test_report_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="results: no such file"):
        performance_report(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        performance_report(tmp_path / "bad.json")
    with pytest.raises(TypeError, match="results: expected a results dict"):
        performance_report(3)
    with pytest.raises(ValueError, match="no area with rows"):
        performance_report({"environment": {}, "x": []})
