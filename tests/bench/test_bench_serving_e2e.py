"""The serving benchmark end to end on loopback: against our server (in this process, tiny LM),
against the stub (errors, malformed SSE, cut streams), an unreachable URL, and the CLI."""
from __future__ import annotations

import json
import math
import threading
import time

import pytest
import torch

from tutx.bench.arrivals import Prompt, sample_prompts
from tutx.bench.serving import benchmark_serving, sweep
from tutx.bench.stub_server import StubServer, client_overhead
from tutx.serve.launch import free_port


@pytest.fixture(scope="module")
def our_server():
    """``(url, tokenizer)``: ``tutx serve``'s app on the tiny LM, uvicorn in a thread, cache off."""
    import uvicorn

    from tutx.engine import EngineConfig, LLMEngine
    from tutx.models import load_tiny
    from tutx.serve import ServerConfig, create_app

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    model, tok = load_tiny()
    app = create_app(LLMEngine(model, tok, EngineConfig(max_num_seqs=8)), ServerConfig(model_name="tiny", cache_size=0))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", tok
    finally:
        server.should_exit = True
        thread.join(30)
        torch.set_num_threads(n)


def test_against_our_server(our_server):
    url, tok = our_server
    prompts = sample_prompts(6, 16, 8, seed=0, tokenizer=tok)
    run = benchmark_serving(url, prompts, "tiny", request_rate=50.0, max_concurrency=4, slos={"ttft": 60_000},
                            timeout=60)
    m = run.metrics
    assert (m["completed"], m["failed"]) == (6, 0), m["failures"]
    assert m["total_output_tokens"] == 48 and m["total_input_tokens"] == 96  # usage from the server
    assert m["good_requests"] == 6
    for r in run.records:
        assert r.output_tokens == 8 and 0 < r.ttft <= r.e2el and r.tpot > 0
        assert r.chunk_times == sorted(r.chunk_times)
    assert 0 < m["ttft_ms"]["median"] <= m["e2el_ms"]["median"] and m["itl_ms"]["mean"] > 0
    row = run.row()
    assert row["request_rate"] == 50.0 and row["model"] == "tiny" and row["max_concurrency"] == 4


def test_sweep_and_cli_write_a_results_file(our_server, tmp_path, capsys):
    from tutx.bench import latest
    from tutx.serve.cli import main

    url, tok = our_server
    out = sweep(url, sample_prompts(3, 8, 4, seed=1, tokenizer=tok), [math.inf, 20.0], "tiny", progress=False,
                slos={"e2el": 60_000}, timeout=60)
    assert [r["request_rate"] for r in out["rows"]] == [math.inf, 20.0] and out["slo_break"] is None
    path = tmp_path / "serving-test.json"
    rc = main(["bench", "serve", "--base-url", url, "--num-prompts", "3", "--input-len", "8", "--output-len", "4",
               "--request-rate", "inf", "--goodput", "ttft:60000", "--area", "serving_test", "--notes", "a test",
               "--save-result", str(path)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "Serving Benchmark Result" in printed and "Successful requests:" in printed
    data = json.loads(path.read_text())
    assert data["environment"]["notes"] == "a test" and data["environment"]["command"].startswith("tutx bench serve")
    measured = latest("serving_test", tmp_path)
    assert measured.rows[0]["completed"] == 3 and measured.rows[0]["request_rate"] == "inf"
    assert measured.rows[0]["model"] == "tiny"  # the first id /v1/models lists


def test_unreachable_url_fails_fast():
    url = f"http://127.0.0.1:{free_port()}"  # nobody listens
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="cannot reach"):
        benchmark_serving(url, [Prompt("x", (1,), 2)], "m", connect_timeout=2.0)
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("mode, reason", [("error", "HTTP 500"), ("malformed", "malformed SSE: not JSON"),
                                          ("truncated", "without [DONE]"), ("error_event", "error event: ")])
def test_bad_servers_count_as_failures(mode, reason):
    with StubServer(chunks=4, mode=mode) as url:
        run = benchmark_serving(url, [Prompt("x", (1,), 4)] * 3, max_concurrency=2)
    m = run.metrics
    assert (m["completed"], m["failed"]) == (0, 3) and run.config["warmup_failed"] == 1
    [(message, count)] = m["failures"].items()
    assert reason in message and count == 3


def test_stub_ok_and_client_overhead():
    with StubServer(chunks=5) as url:
        run = benchmark_serving(url, [Prompt("x", (1,), 5)] * 4, endpoint="chat")
    assert run.metrics["completed"] == 4 and run.metrics["total_output_tokens"] == 20
    assert all(len(r.chunk_times) == 5 for r in run.records)
    row = client_overhead(num_requests=20, chunks=8, max_concurrency=4, process=False)
    assert row["completed"] == 20 and row["failed"] == 0
    assert row["max_request_rate"] > 0 and row["client_cpu_ms_per_request"] > 0


def test_cli_errors(capsys):
    from tutx.serve.cli import main

    for args, message in ((["--goodput", "ttft"], "key:ms"), (["--request-rate", "fast"], "request rate"),
                          (["--num-prompts", "0"], "num_prompts")):
        with pytest.raises(SystemExit) as err:
            main(["bench", "serve", "--base-url", "http://127.0.0.1:9", *args])
        assert err.value.code == 2 and message in capsys.readouterr().err
    t0 = time.monotonic()
    assert main(["bench", "serve", "--base-url", f"http://127.0.0.1:{free_port()}", "--num-prompts", "1"]) == 1
    assert "cannot reach" in capsys.readouterr().err and time.monotonic() - t0 < 30


def test_cli_report(tmp_path):
    report = pytest.importorskip("tutx.bench.report")
    if not hasattr(report, "performance_report"):
        pytest.skip("tutx.bench.report.performance_report is not there yet")
    from tutx.bench.environment import describe_environment, write_results
    from tutx.serve.cli import main

    rows = [{"request_rate": r, "completed": 4, "failed": 0, "request_throughput": min(r, 3.0),
             "output_throughput": 10 * min(r, 3.0),
             "ttft_ms": {"mean": 5.0, "median": 5.0, "p90": 6.0, "p99": 7.0},
             "tpot_ms": {"mean": 1.0, "median": 1.0, "p90": 1.0, "p99": 1.0}} for r in (1.0, math.inf)]
    path = write_results(tmp_path / "r.json", {"serving_test": rows}, describe_environment(command="test"))
    assert json.loads(path.read_text())["serving_test"][1]["request_rate"] == "inf"  # JSON has no infinity
    assert main(["bench", "report", str(path), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "report.md").read_text().count("serving_test") >= 1
    assert (tmp_path / "report" / "figures" / "serving_test_latency_throughput.png").is_file()
