"""Benchmarking: trustworthy timing and memory, the offline model suite, profiling, reports,
and the measured optimisation table (Chapter 8)."""
from tutx.bench.cache import flush_l2, rotating_calls
from tutx.bench.memory import peak_memory
from tutx.bench.model import benchmark_model
from tutx.bench.profile import Profile, decode_step_breakdown, profile_call
from tutx.bench.report import Report, markdown_table, performance_report, show_table
from tutx.bench.results import RESULTS_DIR, Measured, latest, result_files  # RESULTS_DIR: for scripts/gpu_check.py
from tutx.bench.slo import SLOSearch, max_throughput_under_slo
from tutx.bench.stats import bootstrap_ci, summarize
from tutx.bench.steps import run_steps
from tutx.bench.technique_table import display_rows, gpu_rows, measure_techniques
from tutx.bench.techniques import Technique, default_techniques
from tutx.bench.tensor_memory import tensor_peak
from tutx.bench.timing import Timing, percentile, timeit

__all__ = ["Timing", "timeit", "percentile", "markdown_table", "show_table", "Measured", "latest", "result_files",
           "peak_memory", "run_steps",
           # Chapter 8 (H8b): offline suite, statistics, cold cache, report
           "benchmark_model", "bootstrap_ci", "summarize", "tensor_peak", "flush_l2", "rotating_calls",
           "Report", "performance_report", "max_throughput_under_slo", "SLOSearch", "profile_call",
           "decode_step_breakdown", "Profile", "Technique", "default_techniques", "measure_techniques", "display_rows",
           "gpu_rows"]

# ---- Chapter 8, serving benchmark (H8a): names added below --------------------------------------
from tutx.bench.arrivals import Prompt, arrival_times, sample_prompts  # noqa: E402
from tutx.bench.environment import describe_environment, write_results  # noqa: E402
from tutx.bench.serving import ServingRun, SSEReader, benchmark_serving, sweep  # noqa: E402
from tutx.bench.serving_metrics import RequestRecord, parse_goodput, serving_summary, slo_break  # noqa: E402
from tutx.bench.stub_server import StubServer, client_overhead  # noqa: E402

__all__ += ["benchmark_serving", "sweep", "ServingRun", "SSEReader", "RequestRecord", "serving_summary", "parse_goodput",
            "slo_break", "arrival_times", "sample_prompts", "Prompt", "StubServer", "client_overhead", "describe_environment",
            "write_results"]
