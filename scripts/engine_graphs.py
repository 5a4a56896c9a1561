"""Chapter 5: launch overhead of the engine's decode step, and what ``enforce_eager=False`` removes.

Profiles eager decode steps of the tiny LM (how much of a step is Python and dispatch), then runs
the same greedy requests through an eager engine and a static-shape one (``torch.compile`` on a
CPU, CUDA graphs on a GPU), interleaved, and writes
``tutx/results/engine_graphs-<tag>-<date>.json`` with areas ``ch05_decode_profile``,
``ch05_decode_forward`` (the forward pass alone) and ``ch05_decode_graphs`` (whole engine steps) (read by the Chapter 5 notebook with ``tutx.bench.latest``).

    OMP_NUM_THREADS=1 python scripts/engine_graphs.py --threads 1 --batches 1 4 8
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def environment(args, device) -> dict:
    import transformers

    import tutx

    env = {"device": tutx.device.name(), "machine": platform.machine(), "threads": torch.get_num_threads(),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "command": "engine_graphs.py " + " ".join(sys.argv[1:]), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "load_average_start": os.getloadavg()[0]}
    if device.type == "cuda":
        import triton

        env["triton"] = triton.__version__
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tag", default=None, help="file name tag (default: cpu<threads>t or the GPU)")
    parser.add_argument("--out-dir", default=str(ROOT / "tutx" / "results"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import tutx
    from tutx.engine.graph_bench import compare_decode, compare_forward, profile_decode_step
    from tutx.models import heldout_text, load_tiny

    device = tutx.device.get()
    model, tok = load_tiny(device)
    ids = tok.encode(heldout_text())
    env = environment(args, device)
    profile = [profile_decode_step(model, ids, b) for b in args.batches]
    for row in profile:
        print(row, flush=True)
    forward = []
    for b in args.batches:
        forward.append(compare_forward(model, ids, b))
        print(forward[-1], flush=True)
    graphs = []
    for b in args.batches:
        graphs.append(compare_decode(model, ids, b, max_tokens=args.max_tokens, rounds=args.rounds))
        print(graphs[-1], flush=True)
    env["load_average_end"] = os.getloadavg()[0]
    tag = args.tag or (f"cpu{args.threads}t" if device.type == "cpu" else
                       torch.cuda.get_device_name().replace(" ", "-"))
    out = Path(args.out_dir) / f"engine_graphs-{tag}-{datetime.now(timezone.utc):%Y-%m-%dT%H%M}.json"
    out.write_text(json.dumps({"environment": env, "ch05_decode_profile": profile, "ch05_decode_forward": forward,
                               "ch05_decode_graphs": graphs},
                              indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
