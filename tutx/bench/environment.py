"""The ``environment`` block of a results file (device, threads, versions, date, command) and the writer.

Every file in ``tutx/results/`` starts with one, so :func:`tutx.bench.latest` and a reader can name
the machine and software behind each number.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def describe_environment(command: str | None = None, threads: int | None = None, notes: str | None = None, **extra) -> dict:
    """``{"device", "threads", "torch", "transformers", "httpx", "tutx", "python", "date", "command", ...}``.

    ``device`` names the CPU and ``threads`` (default: the CPUs this process may use); ``command``
    defaults to this process's command line; ``extra`` keys are added as they are.
    """
    if threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env = {"device": f"{cpu_name()} ({threads} threads)", "threads": threads, "machine": platform.machine(),
           "python": platform.python_version()}
    for dist in ("torch", "transformers", "httpx", "tutx"):
        v = _version(dist)
        if v:
            env[dist] = v
    env["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env["command"] = command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    if hasattr(os, "getloadavg"):
        env["load_average"] = round(os.getloadavg()[0], 2)
    if notes:
        env["notes"] = notes
    env.update(extra)
    return env


def _jsonable(value):
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"  # JSON has no infinity
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def write_results(path, areas: dict, env: dict) -> Path:
    """Write ``{"environment": env, **areas}`` (each area a list of row dicts) to ``path`` as JSON."""
    if not isinstance(areas, dict) or not all(isinstance(v, list) for v in areas.values()):
        raise TypeError("areas: expected a dict of area name -> list of row dicts")
    if "environment" in areas:
        raise ValueError("areas: 'environment' is reserved for the environment block")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable({"environment": env, **areas}), indent=1, allow_nan=False) + "\n")
    return path


__all__ = ["cpu_name", "describe_environment", "write_results"]
