"""Time engine variants against each other, interleaved in one process: how PERF_NOTES.md measures a lever.

    .venv/bin/python scripts/engine_levers.py --workload ch6 --rounds 8 \\
        '{}' '{"c_glue": false}' '{"prepack_weights": false}' '{"attention_backend": "sdpa", "prepack_weights": false}'

Each argument is one engine: ``EngineConfig`` fields as JSON (``max_num_seqs=64`` unless given),
plus measurement-only switches: ``"c_glue": false`` turns off the C layer glue
(``ModelRunner.cpu_ops``) and leaves the rest; ``"keys_transposed": false`` keeps the C path's keys
in rows (``ModelRunner.keys_transposed``); ``"few_rows": false`` runs every product through oneDNN
(``PackedLinears.few_rows``); ``"fused_silu": false`` runs the MLP's gate|up product and its SiLU
apart (``PackedLinears.fused_silu``); ``"keep_freed_memory": false`` puts glibc's malloc settings back
before each of that engine's runs (:func:`tutx.engine.cpu_memory.keep_freed_memory`; the others run
with the engine's). All engines share one model, get the workload of
``scripts/bench_engines.py`` (the same requests, greedy, eos ignored), one warm-up run each, then
``--rounds`` timed runs in alternating order (A B C, C B A, ...), so that a slow patch of a shared
machine hits all of them. Tokens must be identical across engines and runs. Prints, and appends to
``tutx/results/logs/engine_levers.log``, each engine's median output tokens/s, its time relative to
the first engine, min–max, median CPU time, TTFT p50 and TPOT p50.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import bench_engines  # noqa: E402  (the workloads and the step loop that timestamps tokens)


def main(argv=None) -> list[str]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+", help="one JSON object of EngineConfig fields per engine")
    ap.add_argument("--workload", default="ch6", choices=bench_engines.WORKLOADS)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log", type=Path, default=ROOT / "tutx" / "results" / "logs" / "engine_levers.log")
    args = ap.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tutx.bench.environment import cpu_name
    from tutx.engine import EngineConfig, LLMEngine
    from tutx.engine.cpu_memory import keep_freed_memory
    from tutx.models import load_tiny_tokenizer

    torch.set_num_threads(args.threads)
    work = bench_engines.build_workload(args.workload, load_tiny_tokenizer())
    path = bench_engines.model_dir(args.workload, ROOT / "_build" / "bench_engines")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    engines = []
    for text in args.configs:
        spec = json.loads(text)
        glue, transposed = spec.pop("c_glue", True), spec.pop("keys_transposed", True)
        few_rows, keep = spec.pop("few_rows", True), spec.pop("keep_freed_memory", True)
        fused_silu = spec.pop("fused_silu", True)
        engine = LLMEngine(model, tok, EngineConfig(**{"max_num_seqs": 64, **spec}))
        engine.runner.linear.few_rows = engine.runner.linear.few_rows and few_rows
        engine.runner.linear.fused_silu = fused_silu
        engine.runner.cpu_ops = engine.runner.cpu_ops and glue
        engine.runner.keys_transposed = engine.runner.keys_transposed and transposed and glue
        state = {"model": model, "tok": tok, "engine": engine}
        keep_freed_memory(keep)
        engines.append({"label": text, "state": state, "keep": keep,
                        "ref": bench_engines._run_tutx(state, work)["tokens"],
                        "wall": [], "cpu": [], "tpot": [], "ttft": []})
    if any(e["ref"] != engines[0]["ref"] for e in engines):
        raise SystemExit("the engines produced different tokens")
    for r in range(args.rounds):
        for e in engines if r % 2 == 0 else engines[::-1]:
            keep_freed_memory(e["keep"])
            cpu = time.process_time()
            out = bench_engines._run_tutx(e["state"], work)
            e["cpu"].append(time.process_time() - cpu)
            e["wall"].append(out["seconds"])
            e["tpot"].append(statistics.median(out["tpot"]))
            e["ttft"].append(statistics.median(out["ttft"]))
            if out["tokens"] != e["ref"]:
                raise SystemExit(f"{e['label']}: tokens changed between runs")
    n_out = sum(work["output_lens"])
    first = statistics.median(engines[0]["wall"])
    lines = [f"# {datetime.now(timezone.utc).isoformat(timespec='seconds')} {cpu_name()}, {args.threads} threads, "
             f"workload {args.workload}, {args.rounds} interleaved rounds, torch {torch.__version__}"]
    for e in engines:
        wall = statistics.median(e["wall"])
        lines.append(f"{e['label']:60s} {n_out / wall:6.0f} tok/s  time {wall / first:5.3f}x of the first  "
                     f"min-max {n_out / max(e['wall']):.0f}-{n_out / min(e['wall']):.0f}  "
                     f"CPU {statistics.median(e['cpu']):.2f} s  TTFT p50 {statistics.median(e['ttft']) * 1e3:.0f} ms  "
                     f"TPOT p50 {statistics.median(e['tpot']) * 1e3:.1f} ms")
    print("\n".join(lines))
    args.log.parent.mkdir(parents=True, exist_ok=True)
    with args.log.open("a") as f:
        f.write("\n".join(lines) + "\n")
    return lines


if __name__ == "__main__":
    main()
