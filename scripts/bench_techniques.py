"""Measure the course's optimisation table on the tiny LM, on this machine, in one run.

    .venv/bin/python scripts/bench_techniques.py [--rounds 7] [--threads 2] [--out tutx/results]

Builds every variant (INT8, INT4 RTN and GPTQ, head and FFN pruning, their combination, fused vs
naive attention, GQA vs MHA, MQA vs GQA), times them interleaved (``tutx.bench.technique_table``),
evaluates the held-out perplexity, and writes ``techniques-cpu<threads>t-<date>.json`` with an
``environment`` and the area ``bench_techniques`` that Chapter 8 reads with
``tutx.bench.latest("bench_techniques")``. Takes a few minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--gen-len", type=int, default=16)
    ap.add_argument("--out", type=Path, default=ROOT / "tutx" / "results")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.threads < 1:
        raise SystemExit("--rounds and --threads: expected ints >= 1")
    import torch

    torch.set_num_threads(args.threads)
    from tutx.bench.environment import describe_environment, write_results
    from tutx.bench.technique_table import measure_techniques
    from tutx.models import load_tiny

    model, tok = load_tiny()
    command = " ".join(["scripts/bench_techniques.py"] + (argv if argv is not None else sys.argv[1:]))
    env = describe_environment(command, threads=args.threads, torch_threads=torch.get_num_threads())
    rows = measure_techniques(model, tok, rounds=args.rounds, prompt_len=args.prompt_len, gen_len=args.gen_len)
    import os

    env["load_average_end"] = round(os.getloadavg()[0], 2)
    path = write_results(args.out / f"techniques-cpu{args.threads}t-{env['date'][:16].replace(':', '')}.json",
                         {"bench_techniques": rows}, env)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
