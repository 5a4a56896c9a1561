"""Time the Chapter 6 engine benchmark (64 greedy requests on the tiny LM), optionally against an older engine.

The workload is the notebook's Section 5 (and ``scripts/gpu_checks/engine.py``'s): 64 requests,
prompts of 16–256 held-out tokens, outputs of 8–128 tokens, greedy, end-of-sequence ignored,
all queued at once into ``LLMEngine(EngineConfig(max_num_seqs=64))``.

    PYTHONPATH=. python scripts/bench_engine_64.py [--repeat 5] [--threads 1] [--before DIR]

``--before DIR``: a directory holding a package ``old_engine`` (a copy of an earlier
``tutx/engine`` with its ``tutx.engine.`` imports renamed), timed *interleaved* with the current
engine in the same process — the only fair comparison on a shared machine. Prints each run, the
medians and the ratio, and checks that both engines produce the same tokens.
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time

import torch

from tutx.engine.load import benchmark_requests
from tutx.models import load_tiny


def run_engine(pkg, model, tok, prompts, output_lens, max_num_seqs: int = 64):
    """Queue every request, step to the end; ``(wall seconds, CPU seconds, completions, steps)``."""
    engine = pkg.LLMEngine(model, tok, pkg.EngineConfig(max_num_seqs=max_num_seqs))
    start, cpu = time.perf_counter(), time.process_time()
    for i, (prompt, n) in enumerate(zip(prompts, output_lens)):
        engine.add_request(prompt, pkg.SamplingParams(temperature=0, max_tokens=n, ignore_eos=True),
                           request_id=str(i))
    done, steps = {}, 0
    while engine.has_unfinished():
        done.update((o.request_id, o.token_ids) for o in engine.step() if o.finished)
        steps += 1
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return seconds, cpu, [done[str(i)] for i in range(len(prompts))], steps


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--before", default=None, help="directory holding a package 'old_engine'")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import tutx.engine as new
    engines = {"after": new}
    if args.before:
        sys.path.insert(0, args.before)
        engines = {"before": importlib.import_module("old_engine"), "after": new}
    model, tok = load_tiny()
    prompts, output_lens = benchmark_requests(tok, args.requests)
    warm = ([p[:16] for p in prompts[:4]], [4] * 4)
    for pkg in engines.values():
        run_engine(pkg, model, tok, *warm)
    times: dict[str, list[float]] = {k: [] for k in engines}
    cpu_times: dict[str, list[float]] = {k: [] for k in engines}
    outs = {}
    for r in range(args.repeat):
        order = list(engines) if r % 2 == 0 else list(engines)[::-1]  # alternate who goes first
        for name in order:
            seconds, cpu, outs[name], steps = run_engine(engines[name], model, tok, prompts, output_lens)
            times[name].append(seconds)
            cpu_times[name].append(cpu)
            print(f"run {r} {name:6s}: {seconds:.2f} s wall, {cpu:.2f} s CPU, "
                  f"{sum(output_lens) / seconds:.0f} tokens/s, {steps} steps", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"threads": args.threads, "requests": args.requests, "requested_tokens": sum(output_lens),
              "median_s": med}
    for k, v in med.items():
        print(f"{k}: median {v:.3f} s ({sum(output_lens) / v:.0f} requested tokens/s) over {args.repeat} runs")
    if "before" in med:
        pairs = sorted(b / a for b, a in zip(times["before"], times["after"]))  # each pair ran back to back
        result["pair_ratios"] = pairs
        result["median_pair_ratio"] = statistics.median(pairs)
        print("before/after time ratio of each back-to-back pair: " + ", ".join(f"{r:.2f}" for r in pairs)
              + f"; median {result['median_pair_ratio']:.2f}")
        result["speedup"] = med["before"] / med["after"]
        cpu_med = {k: statistics.median(v) for k, v in cpu_times.items()}
        result["cpu_speedup"] = cpu_med["before"] / cpu_med["after"]
        print(f"CPU time (process_time, less sensitive to other load): median {cpu_med['before']:.2f} s before, "
              f"{cpu_med['after']:.2f} s after: {result['cpu_speedup']:.2f}x")
        result["identical"] = outs["before"] == outs["after"]
        print(f"after is {result['speedup']:.2f}x before (median time ratio); "
              f"same tokens: {result['identical']}")
    return result


if __name__ == "__main__":
    main()
