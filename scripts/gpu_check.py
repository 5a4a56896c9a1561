"""The GPU check: run every chapter's GPU correctness checks and benchmarks in one short call.

Each module in ``scripts/gpu_checks/`` exposes ``run(results: dict) -> None`` and adds its rows
under its own key. This driver records the device, library versions, date and command, and
writes one JSON file per run (``tutx/results/gpu_check-<device>-<date>T<hhmm>.json`` by default: package data, so an installed tutx finds it), which
the notebooks read. Nobody edits those files by hand.

    PYTHONPATH=. python3 scripts/gpu_check.py                    # all checks
    PYTHONPATH=. python3 scripts/gpu_check.py --only attention   # one area
    PYTHONPATH=. python3 scripts/gpu_check.py --out $OUT         # write the JSON there
"""
from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import re
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CHECKS = Path(__file__).resolve().parent / "gpu_checks"


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(f"gpu_checks.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _environment() -> dict:
    import tutx

    info = tutx.device.describe()
    info["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    info["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=None, help="names of modules in scripts/gpu_checks")
    parser.add_argument("--out", type=Path, default=ROOT / "tutx" / "results", help="folder for the JSON")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("no CUDA GPU: the GPU check only runs on a machine with one")
    modules = sorted(p for p in CHECKS.glob("*.py") if not p.name.startswith("_"))
    if args.only:
        unknown = set(args.only) - {p.stem for p in modules}
        if unknown:
            parser.error(f"--only: unknown check(s) {sorted(unknown)}; known: {[p.stem for p in modules]}")
        modules = [p for p in modules if p.stem in args.only]

    results: dict = {"environment": _environment(), "errors": {}, "seconds": {}}
    device = re.sub(r"[^A-Za-z0-9]+", "-", results["environment"]["device"]).strip("-")
    stamp = results["environment"]["date"][:16].replace(":", "")  # 2026-11-26T1041: one file per run
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / f"gpu_check-{device}-{stamp}.json"
    for path in modules:
        start = time.perf_counter()
        print(f"== {path.stem}", flush=True)
        try:
            _load(path).run(results)
        except Exception:  # one area failing must not lose the others' results
            results["errors"][path.stem] = traceback.format_exc()
            print(results["errors"][path.stem], flush=True)
        results["seconds"][path.stem] = round(time.perf_counter() - start, 1)
        # written after every area, so a run stopped at its time limit keeps what it measured
        target.write_text(json.dumps(results, indent=1, default=str) + "\n")
        print(f"wrote {target}", flush=True)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
