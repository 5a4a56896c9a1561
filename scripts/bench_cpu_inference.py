"""CPU inference, Chapter 5: ONNX Runtime fp32/INT8 against PyTorch eager, torch.compile and PyTorch INT8.

    .venv/bin/python scripts/bench_cpu_inference.py --rounds 9 --threads 1 2

Exports the tiny LM (KV cache as inputs/outputs) and MiniLM with both exporters (dynamo, the
default, and TorchScript), times each export and checks each graph against PyTorch (area
``cpu_export``); quantizes the dynamo graphs with ORT dynamic INT8; then times every backend in
one process, interleaved round by round, with the same thread count (areas ``cpu_tiny_lm`` and
``cpu_minilm``, see ``tutx.cpu.measure_cpu_inference``), once per thread count asked for: one
thread (the fair per-core comparison on a machine shared with other work, where PyTorch's
OpenMP threads wait on each other when a core is taken away) and the physical core count
(the setting a dedicated machine would use). Writes
``tutx/results/cpu_inference-cpu<cores>c-<date>.json``; Chapter 5 reads it with
``tutx.bench.latest("cpu_tiny_lm")``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

from tutx.bench.environment import cpu_name

ROOT = Path(__file__).resolve().parents[1]




def environment(threads: list[int], argv: list[str]) -> dict:
    import onnx
    import onnxruntime
    import onnxscript
    import torch
    import transformers

    from tutx.cpu import physical_cores

    return {"device": f"{cpu_name()} ({physical_cores()} cores)", "machine": platform.machine(), "threads": threads,
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(["bench_cpu_inference.py", *argv]), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__,
            "load_average_start": os.getloadavg()[0]}


def export_checks(out: Path) -> list[dict]:
    """Both exporters on both models: export seconds and max |ORT - PyTorch| on a fixed input."""
    import torch

    from tutx.cpu import (OrtCausalLM, OrtEncoder, compare_causal_lm, compare_encoder, export_causal_lm,
                          export_encoder)
    from tutx.models import heldout_text, load_minilm, load_tiny

    lm, tok = load_tiny()
    enc, etok = load_minilm()
    ids = torch.tensor([tok.encode(heldout_text())[:24]] * 2)
    sentences = ["To be, or not to be, that is the question.", "The weather is fine today.", "Hi"]
    rows = []
    for exporter in ("dynamo", "torchscript"):
        for name, model, export in (("tiny_lm", lm, export_causal_lm), ("minilm", enc, export_encoder)):
            path = out / exporter / f"{name}.onnx"
            start = time.perf_counter()
            export(model, path, exporter=exporter)
            row = {"model": name, "exporter": exporter, "export_s": round(time.perf_counter() - start, 1),
                   "file_mb": round(path.stat().st_size / 2**20, 2)}
            if name == "tiny_lm":
                row.update(compare_causal_lm(model, OrtCausalLM(path), ids, max_new_tokens=32))
            else:
                row.update(compare_encoder(model, OrtEncoder(path), etok, sentences))
            rows.append(row)
            print(row, flush=True)
    return rows


def main(argv: list[str] | None = None) -> Path:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="thread counts to measure, each for every backend (default: 1 and the physical cores)")
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--minilm-batch", type=int, default=8)
    p.add_argument("--out", type=Path, default=ROOT / "tutx" / "results")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")

    from tutx.cpu import measure_cpu_inference, physical_cores, quantize_onnx_int8
    from tutx.cpu.measure import MODEL_FILES

    threads = sorted(set(args.threads or [1, physical_cores()]))
    env = environment(threads, argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        exports = export_checks(tmp)
        paths = {k: tmp / "dynamo" / v for k, v in MODEL_FILES.items()}  # measure the dynamo graphs
        for name in ("tiny_lm", "minilm"):
            quantize_onnx_int8(paths[name], paths[f"{name}_int8"])
        for k in ("tiny_lm_int8", "minilm_int8"):
            exports.append({"model": k, "exporter": "ort quantize_dynamic (per-channel)",
                            "file_mb": round(paths[k].stat().st_size / 2**20, 2)})
        data = {"environment": env, "cpu_export": exports, "cpu_tiny_lm": [], "cpu_minilm": [], "errors": {}}
        for n in threads:
            results = measure_cpu_inference(paths, threads=n, rounds=args.rounds,
                                            decode_tokens=args.decode_tokens, minilm_batch=args.minilm_batch)
            for area in ("cpu_tiny_lm", "cpu_minilm"):
                data[area] += results[area]
            data["errors"].update({f"{k} ({n} threads)": v for k, v in results["errors"].items()})
            print(n, "threads done", flush=True)
    env["load_average_end"] = os.getloadavg()[0]
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H%M")
    path = args.out / f"cpu_inference-cpu{physical_cores()}c-{stamp}.json"
    path.write_text(json.dumps(data, indent=1) + "\n")
    for area in ("cpu_tiny_lm", "cpu_minilm"):
        for row in data[area]:
            print(area, row)
    print("wrote", path)
    return path


if __name__ == "__main__":
    main()
