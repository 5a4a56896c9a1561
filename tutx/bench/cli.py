"""``tutx bench``: the serving benchmark, a sweep over request rates, and the report::

    tutx bench serve --base-url http://127.0.0.1:8000 --model tiny --request-rate 4 --num-prompts 64 \\
        --input-len 128 --output-len 64 --goodput ttft:500 tpot:50 --save-result run.json
    tutx bench sweep --base-url http://127.0.0.1:8000 --request-rates 1 2 4 8 inf --goodput ttft:500
    tutx bench report run.json --out report/

Prompts are spans of the held-out plays tokenized by the tiny LM's tokenizer; by default they are
sent as token ids (exact lengths; the server must share that tokenizer — ``--send-text`` sends the
text instead). Results files have the layout of ``tutx/results`` (an ``environment`` block and
one list of rows per area), so ``tutx.bench.latest(area)`` reads them.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    p.add_argument("--model", default=None, help="the model id to send (default: the first /v1/models lists)")
    p.add_argument("--endpoint", default="completions", choices=("completions", "chat"))
    p.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most (default: no cap)")
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=128, help="prompt tokens (mean)")
    p.add_argument("--output-len", type=int, default=64, help="tokens to generate (mean; end-of-sequence ignored)")
    p.add_argument("--range-ratio", type=float, default=0.0, help="lengths uniform in len*(1±ratio); 0: fixed")
    p.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of the arrival gaps; 1: Poisson")
    p.add_argument("--goodput", nargs="+", default=None, metavar="KEY:MS", help="SLOs, e.g. ttft:500 tpot:50 e2el:5000")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup", type=int, default=1, help="requests sent first and not counted")
    p.add_argument("--send-text", action="store_true", help="send prompt text, not token ids")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a request may take")
    p.add_argument("--api-key", default=None)
    p.add_argument("--area", default="serving", help="the results file's key for the rows")
    p.add_argument("--notes", default=None, help="a line for the results file's environment")
    p.add_argument("--save-result", type=Path, default=None, metavar="PATH", help="write the results JSON here")


def add_bench_parser(sub) -> None:
    """Add ``bench`` (with ``serve``, ``sweep``, ``report``) to the ``tutx`` subcommands ``sub``."""
    bench = sub.add_parser("bench", help="benchmark a serving endpoint; write a report",
                           description="The serving benchmark, a sweep over request rates, and the report.")
    actions = bench.add_subparsers(dest="bench_command", required=True)
    serve = actions.add_parser("serve", help="one run against an OpenAI-compatible server")
    _common(serve)
    serve.add_argument("--request-rate", default="inf", help="requests/s (Poisson/gamma arrivals), or inf")
    sweep = actions.add_parser("sweep", help="one run per request rate: the latency-throughput curve")
    _common(sweep)
    sweep.add_argument("--request-rates", nargs="+", required=True, help="requests/s, e.g. 1 2 4 inf")
    report = actions.add_parser("report", help="a Markdown/HTML performance report from a results JSON")
    report.add_argument("results", type=Path)
    report.add_argument("--out", type=Path, default=Path("report"), help="folder for the report (default ./report)")


def print_summary(row: dict, file=sys.stdout) -> None:
    """The run's metrics, laid out as ``vllm bench serve`` prints them."""
    def line(name, value, fmt="{:.2f}"):
        print(f"{name + ':':<40}{fmt.format(value) if not isinstance(value, str) else value:>12}", file=file)
    print(f"{' Serving Benchmark Result ':=^52}", file=file)
    line("Successful requests", row["completed"], "{}")
    line("Failed requests", row["failed"], "{}")
    line("Request rate configured (req/s)", "inf" if math.isinf(row["request_rate"]) else f"{row['request_rate']:.2f}")
    line("Benchmark duration (s)", row["duration_s"])
    line("Total input tokens", row["total_input_tokens"], "{}")
    line("Total generated tokens", row["total_output_tokens"], "{}")
    line("Request throughput (req/s)", row["request_throughput"])
    if "request_goodput" in row:
        line("Request goodput (req/s)", row["request_goodput"])
    line("Output token throughput (tok/s)", row["output_throughput"])
    line("Total token throughput (tok/s)", row["total_token_throughput"])
    for key, title in (("ttft_ms", "Time to First Token"), ("tpot_ms", "Time per Output Token (excl. 1st token)"),
                       ("itl_ms", "Inter-token Latency"), ("e2el_ms", "End-to-end Latency")):
        print(f"{title:-^52}", file=file)
        short = key.split("_")[0].upper()
        for stat in ("mean", "median", "p90", "p99"):
            line(f"{stat.capitalize() if stat in ('mean', 'median') else stat.upper()} {short} (ms)", row[key][stat])
    for reason, n in row.get("failures", {}).items():
        print(f"failed ({n}x): {reason}", file=file)
    print("=" * 52, file=file)


def _workload(args):
    from tutx.bench.arrivals import sample_prompts
    return sample_prompts(args.num_prompts, args.input_len, args.output_len, args.range_ratio, args.seed)


def _kwargs(args, slos) -> dict:
    return dict(burstiness=args.burstiness, max_concurrency=args.max_concurrency, warmup=args.warmup,
                endpoint=args.endpoint, token_ids=not args.send_text, slos=slos, seed=args.seed,
                timeout=args.timeout, api_key=args.api_key)


def _save(args, rows, argv) -> None:
    if args.save_result is None:
        return
    from tutx.bench.environment import describe_environment, write_results
    env = describe_environment(command="tutx " + " ".join(shlex.quote(a) for a in argv), notes=args.notes,
                      base_url=args.base_url)
    print(f"wrote {write_results(args.save_result, {args.area: rows}, env)}")


def _report(args) -> int:
    try:
        from tutx.bench.report import performance_report
    except ImportError:
        raise SystemExit("tutx bench report: this tutx has no tutx.bench.report.performance_report yet") from None
    if not args.results.is_file():
        raise SystemExit(f"tutx bench report: no such file {str(args.results)!r}")
    results = json.loads(args.results.read_text())
    for rows in results.values():  # JSON has no infinity: the files say "inf" for "all at once"
        for row in rows if isinstance(rows, list) else []:
            if isinstance(row, dict) and row.get("request_rate") == "inf":
                row["request_rate"] = math.inf
    report = performance_report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    if hasattr(report, "save"):
        written = report.save(args.out)
    else:
        written = [args.out / "report.md", args.out / "report.html"]
        written[0].write_text(report.to_markdown())
        written[1].write_text(report.to_html())
    print(f"wrote {written}")
    return 0


def run_bench(args, parser: argparse.ArgumentParser, argv=None) -> int:
    """Run a parsed ``tutx bench ...`` command; bad settings end as ``parser.error`` (exit 2)."""
    from tutx.bench.arrivals import parse_rate
    from tutx.bench.serving_metrics import parse_goodput

    argv = list(sys.argv[1:] if argv is None else argv)
    if args.bench_command == "report":
        return _report(args)
    try:
        slos = parse_goodput(args.goodput) if args.goodput else None
        rates = [parse_rate(r) for r in (args.request_rates if args.bench_command == "sweep" else [args.request_rate])]
        prompts = _workload(args)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    from tutx.bench.serving import benchmark_serving, sweep
    try:
        if args.bench_command == "serve":
            run = benchmark_serving(args.base_url, prompts, args.model, request_rate=rates[0], **_kwargs(args, slos))
            rows = [run.row()]
            print_summary(rows[0])
        else:
            out = sweep(args.base_url, prompts, rates, args.model, **_kwargs(args, slos))
            rows = out["rows"]
            broke = out["slo_break"]
            if slos:
                print("SLOs met at every rate" if broke is None else
                      f"SLOs break at {broke['request_rate']} req/s ({broke['good_requests']} of "
                      f"{broke['completed'] + broke['failed']} requests good)")
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    except (ConnectionError, RuntimeError) as exc:
        print(f"tutx bench: {exc}", file=sys.stderr)
        return 1
    _save(args, rows, argv)
    return 0


def main(argv=None) -> int:
    """``python -m tutx.bench.cli serve ...`` (the same as ``tutx bench serve ...``)."""
    parser = argparse.ArgumentParser(prog="tutx")
    add_bench_parser(parser.add_subparsers(dest="command", required=True))
    argv = ["bench", *(sys.argv[1:] if argv is None else argv)]
    return run_bench(parser.parse_args(argv), parser, argv)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["add_bench_parser", "run_bench", "print_summary", "main"]
