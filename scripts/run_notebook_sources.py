"""Run the chapter notebooks top to bottom from their percent-format sources, without Jupyter.

For machines that have the course's runtime but not nbval/nbclient/ipykernel — the lent GPU image
is one. Each chapter runs in its own process, its cells in one namespace, in order: the
notebook's own ``assert``s are the checks (stored outputs are CPU outputs, so they are not
compared here; where nbval is installed, ``pytest --nbval-lax`` does the same through Jupyter).
IPython magics (``%pip`` in the Colab cell) are skipped; top-level ``await`` works as in Jupyter;
figures go to the Agg backend. A chapter whose packages are missing (``fastapi`` for Chapter 7)
is reported as skipped, not failed.

    PYTHONPATH=. python3 scripts/run_notebook_sources.py [01 03 ...] [--out DIR]

Prints one line per chapter (passed / failed at cell N / skipped, seconds, device) and writes
``notebook_runs.json`` to ``--out`` (default: the current folder).
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "notebooks" / "src"
NEEDS = {"07": ["fastapi", "uvicorn", "openai", "prometheus_client"]}


def code_cells(path: Path) -> list[str]:
    """The code (and solution) cells of a percent-format source, magics replaced by ``pass``."""
    cells: list[list[str]] = []
    kinds: list[str] = []
    for line in path.read_text().splitlines():
        if line.startswith("# %%"):
            kinds.append("markdown" if "[markdown]" in line else "code")
            cells.append([])
            continue
        if cells:
            stripped = line.lstrip()
            if kinds[-1] == "code" and stripped.startswith(("%", "!")):
                line = line[: len(line) - len(stripped)] + "pass  # magic skipped: " + stripped
            cells[-1].append(line)
    return ["\n".join(c) for c, k in zip(cells, kinds) if k == "code"]


def run_chapter(path: Path) -> dict:
    """Execute one chapter's cells in this process; ``{"status", "cell", "error", "seconds"}``."""
    import matplotlib

    matplotlib.use("Agg")
    os.chdir(ROOT / "notebooks")  # notebooks run from their folder
    try:
        from IPython.display import display
    except ImportError:
        display = print
    namespace = {"__name__": "__main__", "display": display}
    loop = asyncio.new_event_loop()
    start = time.perf_counter()
    for i, source in enumerate(code_cells(path), start=1):
        try:
            code = compile(source, f"{path.name}:cell{i}", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            result = eval(code, namespace)  # noqa: S307 - our own notebook sources
            if asyncio.iscoroutine(result):
                loop.run_until_complete(result)
        except Exception as exc:  # noqa: BLE001 - report the first failing cell and stop
            return {"status": "failed", "cell": i, "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-3000:], "seconds": time.perf_counter() - start}
        finally:
            import matplotlib.pyplot as plt
            plt.close("all")
    return {"status": "passed", "cells": i, "seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("chapters", nargs="*", help="chapter numbers such as 01 (default: all)")
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one source in this process
    ap.add_argument("--timeout", type=int, default=900, help="seconds per chapter")
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(run_chapter(Path(args.one))), flush=True)
        return 0
    sources = sorted(SRC.glob("[0-9][0-9]_*.py"))
    if args.chapters:
        sources = [s for s in sources if s.name[:2] in args.chapters]
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    results = {"device": device, "torch": torch.__version__, "chapters": {}}
    failed = 0
    for src in sources:
        missing = []
        for mod in NEEDS.get(src.name[:2], []):
            try:
                __import__(mod)
            except ImportError:
                missing.append(mod)
        if missing:
            res = {"status": "skipped", "reason": f"missing {', '.join(missing)}"}
        else:
            env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
            try:
                proc = subprocess.run([sys.executable, __file__, "--one", str(src)], capture_output=True, text=True,
                                      env=env, timeout=args.timeout)
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                res = json.loads(lines[-1][7:]) if lines else {"status": "failed", "error": proc.stderr[-3000:]}
            except subprocess.TimeoutExpired:
                res = {"status": "failed", "error": f"timed out after {args.timeout} s"}
        failed += res["status"] == "failed"
        results["chapters"][src.stem] = res
        where = f" at cell {res['cell']}: {res['error']}" if "cell" in res and res["status"] == "failed" else \
            (f": {res.get('error') or res.get('reason')}" if res["status"] != "passed" else "")
        print(f"{src.stem}: {res['status']}{where} ({res.get('seconds', 0):.0f} s on {device})", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "notebook_runs.json").write_text(json.dumps(results, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
