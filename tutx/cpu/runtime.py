"""ONNX Runtime sessions on the CPU: the optional import, the thread count, the optimisation level.

ONNX Runtime parallelises one operator (a matrix product) over ``intra_op_num_threads`` threads.
On a CPU, more threads than *physical* cores only make hyper-threads fight over the same
vector units, so the default is the number of physical cores this process may run on; the
inter-op pool (independent branches run in parallel) stays at one thread, as a transformer's
graph is one chain. Graph optimisations (constant folding, fusing LayerNorm, GELU, attention
and MatMul+Add) are all on by default: that is most of ORT's lead over eager PyTorch.
"""
from __future__ import annotations

import os
from pathlib import Path

from tutx._validate import check_choice, check_int

INSTALL_HINT = 'pip install "tutx[cpu]"'
"""How to get onnx, onnxruntime and onnxscript (the ``cpu`` extra)."""

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
"""Names for ORT's ``GraphOptimizationLevel`` (``"all"`` adds layout optimisations to ``"extended"``)."""


def require_onnxruntime():
    """Import and return ``onnxruntime``; an ``ImportError`` saying how to install it when it is missing."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            f"tutx.cpu needs onnxruntime (and onnx, onnxscript to export): {INSTALL_HINT}") from err
    return onnxruntime


def require_onnx():
    """Import and return ``onnx`` (needed to export and to quantize), with the same install hint."""
    try:
        import onnx
    except ImportError as err:
        raise ImportError(f"exporting to ONNX needs the onnx package: {INSTALL_HINT}") from err
    return onnx


def available_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may use: logical CPUs divided by hardware threads per core."""
    logical = available_cpus()
    try:
        import psutil
        per_core = max(1, (psutil.cpu_count(logical=True) or 1) // (psutil.cpu_count(logical=False) or 1))
    except (ImportError, TypeError):
        per_core = 1
    return max(1, logical // per_core)


def check_threads(name: str, threads) -> int:
    """``threads`` is an int in ``[1, available_cpus()]``: more threads than CPUs only oversubscribe."""
    return check_int(name, threads, minimum=1, maximum=available_cpus())


def session_options(threads: int | None = None, optimization: str = "all"):
    """``SessionOptions`` with ``threads`` intra-op threads (default: physical cores), 1 inter-op thread."""
    ort = require_onnxruntime()
    threads = physical_cores() if threads is None else check_threads("threads", threads)
    check_choice("optimization", optimization, OPTIMIZATION_LEVELS)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    opts.log_severity_level = 3  # errors only: no warnings about unused initialisers
    return opts


def make_session(path: str | Path, threads: int | None = None, optimization: str = "all"):
    """An ``onnxruntime.InferenceSession`` on the CPU for the model file at ``path``.

    ``threads``: intra-op threads (default :func:`physical_cores`); ``optimization``: one of
    ``OPTIMIZATION_LEVELS``.
    """
    ort = require_onnxruntime()
    if not isinstance(path, (str, Path)):
        raise TypeError(f"path: expected a str or Path to an .onnx file, got {type(path).__name__}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"path: no ONNX model at {path}")
    opts = session_options(threads, optimization)
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


__all__ = ["INSTALL_HINT", "OPTIMIZATION_LEVELS", "require_onnxruntime", "require_onnx", "available_cpus",
           "physical_cores", "check_threads", "session_options", "make_session"]
