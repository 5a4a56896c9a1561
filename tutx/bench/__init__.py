"""Benchmarking helpers (Chapter 8 grows the full suite from these)."""
from tutx.bench.memory import peak_memory
from tutx.bench.report import markdown_table, show_table
from tutx.bench.results import RESULTS_DIR, Measured, latest, result_files  # RESULTS_DIR: for scripts/gpu_check.py
from tutx.bench.steps import run_steps
from tutx.bench.timing import Timing, percentile, timeit

__all__ = ["Timing", "timeit", "percentile", "markdown_table", "show_table", "Measured", "latest", "result_files", "peak_memory", "run_steps"]
