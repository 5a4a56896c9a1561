# %% [markdown]
# # Chapter 6 — Deployment
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tutx-course/scaling-and-optimization/blob/main/notebooks/06_deployment.ipynb)
#
# A model that generates text in a notebook is not yet a service. A service must first *fit* —
# weights and KV cache on the devices you can afford — and then serve many users at once,
# each with a prompt of a different length who wants a different number of tokens, as fast as
# the hardware allows. This chapter builds the pieces every inference server is made of, in our
# own code, and measures each one on the tiny Shakespeare model:
#
# **You will learn to**
#
# - plan where a 70-billion-parameter model's layers go across GPUs and CPU, with room for the
#   KV cache, and read the error when it does not fit;
# - measure why batching pays, and why **static batching** wastes much of what it computes
#   when requests differ in length;
# - trade latency for throughput with a **dynamic batcher** and its `max_wait_ms`;
# - follow a **continuous-batching engine** step by step: iteration-level scheduling, a paged
#   KV cache with block tables, preemption when memory runs out, and prefix sharing;
# - compare, on the same 64 requests, sequential generation, static batches and our engine.

# %%
# Set-up: on Colab, install tutx first (elsewhere it is already installed by `make lab`).
import sys

if "google.colab" in sys.modules:
    %pip install -q "tutx @ git+https://github.com/tutx-course/scaling-and-optimization"

# %%
import random
import re
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text progress bars

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

import tutx
from tutx.bench import latest, show_table, timeit
from tutx.configs import get_spec
from tutx.engine import DynamicBatcher, EngineConfig, LLMEngine, SamplingParams, greedy_generate, pad_batch
from tutx.engine.cpu_threads import pick_cpu_threads
from tutx.engine.load import benchmark_requests, poisson_arrivals, replay
from tutx.engine.timeline import StepRecorder, plot_block_tables, plot_timeline, run_to_end, state_legend
from tutx.models import heldout_text, load_tiny
from tutx.parallel import dispatch_, plan_device_map

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
GiB = 2**30
device = tutx.device.get()
model, tok = load_tiny(device)
ids = tok.encode(heldout_text())  # held-out Shakespeare: the model never saw it in training
print(f"tiny LM: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters; "
      f"{len(ids):,} held-out tokens to draw prompts from")

# %% [markdown]
# Everything we time in this chapter is the tiny model doing small matrix products, where extra
# CPU threads gain little and, on a shared machine, can cost a lot. `pick_cpu_threads` times a
# short probe with the default thread count and with one thread and keeps the default only if it
# is clearly faster (on a GPU it changes nothing). The timings below name the count it chose.

# %%
# NBVAL_IGNORE_OUTPUT
probe = [ids[500 * i: 500 * i + 32] for i in range(4)]
threads = pick_cpu_threads(lambda: greedy_generate(model, probe, max_new_tokens=4), device)
print(f"measured on {tutx.device.name()}, {threads} torch thread(s)")

# %% [markdown]
# ## 1. Will it fit? Planning memory across devices
#
# Before any batching, the model has to be somewhere. In 16-bit precision the weights alone take
# $2N$ bytes — for a 70B model more than any single GPU holds — and every sequence in
# flight keeps a KV cache of $2 \cdot L \cdot H_{kv} \cdot d \cdot S \cdot p$ bytes next to them
# (Chapter 1). The simplest way to use several devices is to give each one a contiguous run of
# whole decoder layers: the hidden state hops from device to device, one layer after the other
# ("naive" pipeline parallelism, what `device_map="auto"` does in Hugging Face). Only one device
# works at a time, but the model runs.
#
# `plan_device_map` makes that plan from a model's config alone: it builds the model on
# PyTorch's `meta` device (shapes, no memory), counts every layer's bytes, and fills the devices
# in order, each layer with its share of a KV-cache reserve.
#
# A GPU's memory is not all for weights and KV cache. The forward pass needs room for its
# activations (a prefill of a long prompt holds `[tokens, hidden]` and `[tokens, intermediate]`
# tensors at once), the process's CUDA context and the libraries' workspaces take their share,
# and the caching allocator loses some to fragmentation. A plan that fills a card to its last
# byte fails at the first long prompt. So we keep a **headroom** fraction of every GPU budget
# out of the plan (`headroom=0.1`: 10%; CPU budgets are planned in full). Here is Llama-3.1-70B in
# bf16 on two 80 GiB GPUs with a CPU as spill-over, keeping room for 8 sequences of 8k tokens:

# %%
HEADROOM = 0.1
budgets = {"cuda:0": "80GiB", "cuda:1": "80GiB", "cpu": "256GiB"}
plan = plan_device_map("Llama-3.1-70B", budgets, reserve_kv=dict(batch=8, seq_len=8192), dtype="bf16",
                       headroom=HEADROOM)
print(plan)
print(plan.summary())
spec = get_spec("Llama-3.1-70B")
print(f"\nper decoder layer: {spec.non_embedding_params / spec.num_layers * 2 / GiB:.2f} GiB of weights "
      f"+ {plan.kv_per_layer / GiB:.2f} GiB of KV reserve; "
      f"embedding table {spec.vocab_size * spec.hidden_size * 2 / GiB:.2f} GiB")


def on_cpu(batch, headroom=HEADROOM):
    p = plan_device_map("Llama-3.1-70B", budgets, reserve_kv=dict(batch=batch, seq_len=8192), dtype="bf16",
                        headroom=headroom)
    return p.layers_per_device()["cpu"]


fits = max(b for b in range(1, 9) if on_cpu(b) == 0)
print(f"\nwith {HEADROOM:.0%} headroom per GPU: {on_cpu(8)} decoder layers on the CPU for 8 x 8k; "
      f"the largest reserve with every layer on the GPUs is {fits} x 8k")
print(f"planning the GPUs to the last byte (headroom=0): {on_cpu(8, 0.0)} layers on the CPU for 8 x 8k")

# %% [markdown]
# Each GPU holds a run of layers, each layer with its weights and its share of the KV reserve;
# the first GPU also holds the embedding table. With the headroom kept free, 8 sequences of 8k
# tokens no longer fit on the two cards: the last layers, the final norm and the `lm_head` spill
# onto the CPU, where they would run at CPU speed on every token. A planner that ignored the
# headroom would have put everything on the GPUs — and the first long prefill would have run
# out of memory. The printout says what does fit: a smaller KV reserve. The same planner
# answers the other questions a deployment starts with. What happens as the KV reserve grows,
# or with a model without grouped-query attention?

# %%
scenarios = [
    ("Llama-3.1-70B", {"cuda:0": "80GiB", "cuda:1": "80GiB", "cpu": "256GiB"}, 8, 8192),
    ("Llama-3.1-70B", {"cuda:0": "80GiB", "cuda:1": "80GiB", "cpu": "256GiB"}, 32, 8192),
    ("Llama-3.1-70B", {"cuda:0": "80GiB", "cuda:1": "80GiB"}, 32, 8192),
    ("Llama-2-7B", {"cuda:0": "24GiB"}, 4, 4096),
    ("Llama-2-7B", {"cuda:0": "24GiB"}, 16, 4096),
]
rows = []
for name, devs, batch, seq_len in scenarios:
    spec = get_spec(name)
    row = {"model": name, "devices": " + ".join(devs), "KV MiB/token": spec.kv_cache_bytes_per_token() / 2**20,
           "weights GiB": spec.weight_bytes() / GiB, "KV reserve": f"{batch} x {seq_len // 1024}k",
           "KV GiB": spec.kv_cache_bytes(batch, seq_len) / GiB}
    try:
        p = plan_device_map(name, devs, reserve_kv=dict(batch=batch, seq_len=seq_len), dtype="bf16",
                            headroom=HEADROOM)
        row["layers per device"] = ", ".join(f"{d}: {n}" for d, n in p.layers_per_device().items() if n)
    except ValueError as err:
        row["layers per device"] = "does not fit"
        print(f"{name} on {row['devices']}, KV for {row['KV reserve']}:\n  ValueError: {err}\n")
    rows.append(row)
show_table(rows)
# What the next paragraph says, checked:
assert on_cpu(32) > on_cpu(8)  # a bigger KV reserve pushes more layers onto the CPU
assert rows[3]["KV MiB/token"] > rows[0]["KV MiB/token"]  # Llama-2-7B (no GQA) vs Llama-3.1-70B
assert rows[4]["layers per device"] == "does not fit" and rows[4]["weights GiB"] < 24 * (1 - HEADROOM)

# %% [markdown]
# Quadrupling the KV reserve pushes more layers of the 70B model onto the CPU — it still "fits",
# but those layers would now run at CPU speed, so in practice you would rather serve fewer
# sequences or add a GPU. Without the CPU the plan fails, and the message says by how much and
# what to change. Llama-2-7B has no GQA: every query head has its own key/value head, so each
# of its tokens carries more KV cache than a token of the ten-times-larger Llama-3.1-70B (the
# `KV MiB/token` column), and a reserve for 16 sequences of 4k tokens does not fit next to its
# weights on a 24 GiB card, although the weights alone would, headroom included.
#
# `dispatch_` carries out a plan: it moves every module to its device and hooks in the hops. We
# can try it without GPUs: `"cpu:N"` labels are *simulated* devices (all the real CPU), so the
# tiny model can be split three ways and checked against the unsplit one:

# %%
plan = plan_device_map(model, {"cpu:0": "7MiB", "cpu:1": "5.1MiB", "cpu:2": "8MiB"})
print(plan.summary())
split_model, _ = load_tiny()
hops = dispatch_(split_model, plan)
x = torch.tensor([ids[:200]])
with torch.inference_mode():
    same = torch.equal(split_model(x).logits, model.cpu()(x).logits)
model.to(device)
print(f"\nhidden state path: {' → '.join(hops.trace)}")
print(f"device hops per forward: {hops.hops}; logits identical to the unsplit model: {same}")

# %% [markdown]
# The tied `lm_head` shares its weight with the embedding table, so it stays on `cpu:0` and the
# last hidden state hops back there for the logits. On real GPUs each hop copies one
# `[batch, tokens, hidden]` activation — far fewer bytes than a layer's weights — but while `cuda:1` computes,
# `cuda:0` idles. Chapter 5's tensor parallelism keeps every GPU busy instead, at the price of
# communication inside every layer.
#
# ## 2. Why batch, and why static batches waste
#
# Generating a token means reading every weight of the model once. Doing that for 16 sequences
# at a time shares that read: Chapter 1's roofline predicts that on a GPU, where decoding is
# bound by memory traffic, a step of a small batch costs little more than a step of one (a
# prediction; this notebook does not measure it on a GPU). On a CPU the arithmetic grows with the
# batch, so the gain is smaller — let us measure it: one call of our batched greedy loop,
# `greedy_generate`, for 16 new tokens at growing batch sizes:

# %%
# NBVAL_IGNORE_OUTPUT
rows = []
for b in (1, 2, 4, 8, 16, 32):
    batch = [ids[700 * i: 700 * i + 32] for i in range(b)]  # b prompts of 32 tokens
    t = timeit(lambda: greedy_generate(model, batch, max_new_tokens=16), warmup=1, repeat=3).median
    rows.append({"batch": b, "ms per call": t * 1e3, "tokens/s": b * 16 / t})
show_table(rows, digits=0)
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot([r["batch"] for r in rows], [r["tokens/s"] for r in rows], "o-")
ax.set(xscale="log", xlabel="batch size", ylabel="generated tokens/s",
       title=f"Batching the tiny LM ({tutx.device.name()[:40]})")
plt.show()

# %% [markdown]
# So servers batch. The simplest way is **static batching**: take the next $B$ requests, pad
# their prompts (on the left, so every last prompt token sits in the same column) to the
# longest one, and decode until the longest requested output is done. Real requests differ in
# length, and every padded prompt slot and every step a finished sequence keeps riding along is
# computed for nothing. Our benchmark workload — used again in Section 5 — has 64 requests with
# prompts of 16–256 tokens of held-out Shakespeare and outputs of 8–128 tokens. Here is what a
# static batch of its first 16 requests computes:

# %%
N_REQ = 64
prompts, output_lens = benchmark_requests(tok, N_REQ, seed=0)  # tutx.engine.load: the same requests the scripts time
prompt_lens = [len(p) for p in prompts]

P16, O16 = prompt_lens[:16], output_lens[:16]
width_p, width_o = max(P16), max(O16)
slots = np.zeros((16, width_p + width_o), dtype=int)  # 0 padding, 1 prompt, 2 requested output, 3 wasted step
for i, (p, o) in enumerate(zip(P16, O16)):
    slots[i, width_p - p:width_p] = 1
    slots[i, width_p:width_p + o] = 2
    slots[i, width_p + o:] = 3
fig, ax = plt.subplots(figsize=(10, 3.4))
colors = ["0.88", "tab:orange", "tab:blue", "tab:red"]
ax.imshow(slots, cmap=ListedColormap(colors), vmin=0, vmax=3, aspect="auto", interpolation="nearest")
ax.axvline(width_p - 0.5, color="k", lw=1)
ax.set(xlabel="token position (prompt | generated)", ylabel="request", title="One static batch of 16 requests")
ax.grid(False)
ax.legend(handles=[Patch(color=c, label=l) for c, l in zip(colors, ["prompt padding", "prompt",
          "requested output", "decoded for nothing"])], loc="upper left", fontsize=8, framealpha=0.9)
plt.show()
pad = 1 - sum(P16) / (16 * width_p)
idle = 1 - sum(O16) / (16 * width_o)
print(f"prompt slots that are padding: {pad:.0%}; decode slots after a request was done: {idle:.0%}")

# %% [markdown]
# Bigger batches amortise the weights better but tend to waste more, because the longest member
# of a bigger batch is longer (Exercise 4 counts it for the whole workload at every batch size).
# And waste is not the only cost: a request that wants a few tokens
# waits for its batch's longest, and new requests cannot join until the whole batch is done.
# Timing the 16-request batch above makes the waste concrete:

# %%
# NBVAL_IGNORE_OUTPUT
start = time.perf_counter()
static_out = greedy_generate(model, prompts[:16], max_new_tokens=width_o)
seconds = time.perf_counter() - start
print(f"static batch of 16: {seconds:.2f} s for {16 * width_o:,} generated tokens ({16 * width_o / seconds:.0f}/s), "
      f"of which {sum(O16):,} were requested: {sum(O16) / seconds:.0f} useful tokens/s")

# %% [markdown]
# ## 3. Dynamic batching: waiting for company
#
# A server does not receive 16 requests at once: they arrive one by one, at random moments. A
# **dynamic batcher** (Triton Inference Server, Ray Serve's `@serve.batch`) holds each request
# in a queue for at most `max_wait_ms`, hoping that others arrive to share the call; a batch
# leaves as soon as it is full or its oldest request has waited long enough. `DynamicBatcher`
# is that queue, for any function that maps a list of inputs to a list of outputs:

# %%
tutx.show(DynamicBatcher._run)

# %% [markdown]
# Let 40 clients send prompts of 16–48 tokens, each wanting 16 new tokens, at random moments
# with a mean rate of 25 requests per second (exponential gaps, seeded). `replay` submits each
# prompt at its moment to `DynamicBatcher(greedy_generate, max_batch_size=16)`; we sweep
# `max_wait_ms` and measure each request's latency (arrival to answer), the achieved throughput,
# and the throughput while the model was busy — what the server could sustain:

# %%
tutx.show(replay)

# %%
# NBVAL_IGNORE_OUTPUT
rng = random.Random(1)
N_CLIENTS, RATE, NEW = 40, 25.0, 16
client_prompts = [ids[(s := rng.randrange(len(ids) - 48)): s + rng.randint(16, 48)] for _ in range(N_CLIENTS)]
arrivals = poisson_arrivals(N_CLIENTS, RATE, seed=1)  # seconds


def generate_batch(batch):  # runs in a worker thread; the event loop keeps accepting requests
    return greedy_generate(model, batch, max_new_tokens=NEW)


sweep = []
for max_wait_ms in (0, 20, 50, 100, 200):
    r = await replay(generate_batch, client_prompts, arrivals, max_batch_size=16, max_wait_ms=max_wait_ms,
                     units_per_item=NEW)
    sweep.append({"max_wait_ms": max_wait_ms, "mean batch": r["mean batch"], "mean latency ms": r["mean latency ms"],
                  "p90 latency ms": r["p90 latency ms"], "tokens/s achieved": r["units/s achieved"],
                  "tokens per busy second": r["units per busy second"]})
show_table(sweep, digits=1)

# %%
fig, ax = plt.subplots(figsize=(7, 3.6))
waits = [r["max_wait_ms"] for r in sweep]
ax.plot(waits, [r["mean latency ms"] for r in sweep], "o-", color="tab:red", label="mean latency")
ax.set(xlabel="max_wait_ms", ylabel="mean latency (ms)", title=f"Dynamic batching at {RATE:.0f} requests/s")
ax2 = ax.twinx()
ax2.plot(waits, [r["tokens/s achieved"] for r in sweep], "s-", color="tab:blue", label="throughput achieved")
ax2.plot(waits, [r["tokens per busy second"] for r in sweep], "^--", color="tab:green",
         label="throughput while busy (capacity)")
ax2.set_ylabel("tokens/s")
ax2.grid(False)
fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88), fontsize=8)
plt.show()

# %% [markdown]
# Read the two throughput curves separately. The *achieved* throughput cannot exceed what the
# clients send: as long as the server keeps up, it is the arrival rate, whatever the batching.
# What waiting buys is **capacity**: bigger batches cost less compute per token, so the same
# machine could absorb a higher rate before its queue starts to grow. The price is paid in
# latency — every request may wait up to `max_wait_ms` for company. Even `max_wait_ms=0`
# batches: requests that arrive while a batch runs are grouped into the next one. The right
# setting depends on the service-level objective: a chat front-end wants a few milliseconds,
# an offline job as many as fill the batch.
#
# Dynamic batching still runs whole requests: a batch is as slow as its longest member (the
# waste of Section 2) and nobody joins a batch already running. That is what the next section
# removes.
#
# ## 4. Continuous batching, step by step
#
# Orca {cite}`yu2022orca` changed the unit of scheduling from the request to the *iteration*:
# after every forward pass the scheduler looks again. A sequence that has finished leaves at
# once and frees its place; a waiting one joins at the next step. vLLM {cite}`kwon2023efficient`
# added the memory manager that makes this practical: the KV cache is cut into fixed-size
# **blocks** (pages), handed out one at a time from a pool, so a sequence reserves memory for
# the tokens it has, not for the longest it might become. Our engine, `LLMEngine`, follows
# nano-vllm's split {cite}`nanovllm2025`: a `Sequence` (tokens, status, block table), a
# `BlockManager` (free list, reference counts, prefix cache), a `Scheduler`, and a `ModelRunner`
# that runs the Hugging Face model's own layers with our paged attention.
#
# Each step, the scheduler either admits waiting sequences for a **prefill** (first come, first
# served, within `max_num_seqs` and a token budget — the prompts of several requests are
# concatenated into one flat batch, with no padding) or runs one **decode** step for every
# running sequence. If a decoding sequence needs a new block and none is free, the most recently
# admitted sequence is **preempted**: its blocks are freed and it goes back to the head of the
# queue, to be recomputed later.

# %%
tutx.show(tutx.engine.Scheduler.schedule)
tutx.show(tutx.engine.Scheduler._slot_or_preempt)

# %% [markdown]
# To watch it work we give six requests to an engine with room for three at a time and record
# what every step ran. The engine reports each step as a `StepStats` record — prefill or decode,
# which requests ran, every running request's block table, the pool's occupancy — to the hooks
# registered with `engine.add_step_hook`; `StepRecorder` is such a hook that keeps them all
# (Chapter 7's metrics read the same records):

# %%
tutx.show(tutx.engine.StepStats)


def traced_engine(config):
    """An engine and the recorder of its steps."""
    engine = LLMEngine(model, tok, config)
    return engine, StepRecorder(engine)


lengths = [(11, 6), (29, 3), (6, 12), (18, 5), (14, 9), (9, 4)]  # (prompt tokens, tokens wanted)
requests = [(f"r{i}", ids[1000 * i: 1000 * i + p], n) for i, (p, n) in enumerate(lengths)]
labels = [f"{name}: {p} + {n}" for (name, _, _), (p, n) in zip(requests, lengths)]
roomy, roomy_log = traced_engine(EngineConfig(max_num_seqs=3, block_size=4, max_model_len=64))
roomy_out = run_to_end(roomy, requests)
fig, ax = plt.subplots(figsize=(10, 2.8))
plot_timeline(ax, roomy_log.steps, [r[0] for r in requests], labels)
ax.set_title("Continuous batching: 6 requests (prompt + wanted tokens), at most 3 running")
state_legend(fig)
plt.tight_layout(rect=(0, 0.1, 1, 1))
plt.show()
print(f"{len(roomy_log)} steps ({sum(s.is_prefill for s in roomy_log.steps)} prefill); "
      f"a static batch of 3 would take {sum(max(n for _, n in lengths[i:i + 3]) for i in (0, 3))} forward passes "
      f"and leave each batch's short requests idle")

# %% [markdown]
# Three requests start together. When `r1` is done after three tokens its seat is given to `r3`
# at the very next step — the running sequences pause for that one prefill step (prefill and
# decode never share a step in our engine, as in nano-vllm; vLLM's newer scheduler mixes them)
# and then all decode together again. No step ever computes a token for a request that is done.
#
# Where do their keys and values live? Every sequence owns a **block table**: logical block $i$
# (its tokens $4i \ldots 4i+3$ here) lives in pool block `block_table[i]`. The pool is one
# tensor per layer, `[num_blocks, block_size, Hkv, D]`, and the decode kernel reads each
# sequence's pages through its table. In the roomy pool above the tables stay almost
# contiguous, so let the same six requests share a pool of only 11 blocks (44 token slots) and
# look at the tables at the step when the pool is fullest:

# %%
tight, tight_log = traced_engine(EngineConfig(max_num_seqs=3, block_size=4, num_blocks=11, max_model_len=64))
tight_out = run_to_end(tight, requests)
fullest = tight_log.fullest()
plot_block_tables(fullest.block_tables, tight.config.num_blocks,
                  f"block tables at step {fullest.step} of the 11-block run (block_size = 4)")
plt.show()

# %% [markdown]
# Blocks are handed out from a free list and return to it when a request ends, so a table is
# rarely contiguous — which the kernel does not mind, since it looks each page up anyway. No
# sequence holds more than one partly filled block: at most `block_size - 1` slots per sequence
# are reserved but empty, instead of `max_model_len - len` for a contiguous cache
# {cite}`kwon2023efficient`.
#
# ### Preemption
#
# Eleven blocks are not enough for three of these requests at once. The engine checks that each
# request fits the pool on its own, admits what the free blocks allow, and preempts when a
# decoding sequence needs a block that is not there. The two runs side by side:

# %%
fig, axes = plt.subplots(2, 1, figsize=(10, 5.4))
steps = max(len(roomy_log), len(tight_log))
for ax, log, title in ((axes[0], roomy_log, f"{roomy.config.num_blocks} blocks"), (axes[1], tight_log, "11 blocks")):
    plot_timeline(ax, log.steps, [r[0] for r in requests], labels, steps)
    ax.set_title(title, fontsize=10)
state_legend(fig)
plt.tight_layout(rect=(0, 0.06, 1, 1))
plt.show()
print(f"preemptions: {tight.scheduler.num_preemptions}; steps: {len(tight_log)} instead of {len(roomy_log)}; "
      f"same completions as with the roomy pool: {tight_out == roomy_out}")

# %% [markdown]
# Each red stretch is a sequence whose blocks were taken back; when it is readmitted, its prompt
# *and the tokens it had generated so far* are prefilled again (recompute — vLLM can also swap
# blocks out to CPU memory instead). Its freed blocks keep their contents until they are handed
# out again, so the prefix cache often gives part of them back. Greedy completions do not change: preemption costs time,
# never correctness. A server sizes its pool so that this is rare, and `max_num_seqs` so that
# the running sequences' caches usually fit.
#
# ### Prefix sharing
#
# Many requests start the same way — a system prompt, a few-shot preamble, the previous turns
# of a chat. A full block is identified by a hash of its tokens chained with the hash of every
# block before it, so two sequences whose first $k$ blocks hash alike share those blocks
# (reference counts), and the second one's prefill skips them. Two questions after the same
# 40-token context, with blocks of 8 tokens:

# %%
context = ids[2000:2040]  # 40 shared tokens = 5 full blocks of 8
sharing = [("a", context + ids[3000:3006], 5), ("b", context + ids[4000:4009], 5)]
shared, shared_log = traced_engine(EngineConfig(block_size=8, max_num_seqs=4, max_model_len=128))
for name, prompt, n in sharing:
    shared.add_request(prompt, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), request_id=name)
first = {out.request_id: out for out in shared.step()}  # one prefill step admits both
bm = shared.block_manager
for name, prompt, _ in sharing:
    table, cached = shared_log.steps[0].block_tables[name], first[name].num_cached_tokens
    print(f"{name}: block table {table}, reference counts {[bm.blocks[b].ref_count for b in table]}; "
          f"prefill computed {len(prompt) - cached} of its {len(prompt)} prompt positions "
          f"({cached} came from the prefix cache)")
plot_block_tables(shared_log.steps[0].block_tables, 10, "prefix sharing: hatched blocks are held by both sequences")
plt.show()
completions = run_to_end(shared, [])  # decode both to the end
alone = run_to_end(LLMEngine(model, tok, EngineConfig(block_size=8, enable_prefix_caching=False)), sharing)
print("same completions as without sharing:", completions == alone)

# %% [markdown]
# `b`'s prefill computed only the positions after the shared context. Both requests were
# admitted in the *same* step: `a`'s new blocks are registered at allocation, and the flat
# prefill writes their keys and values before any sequence reads them. The block holding a prompt's last token is never
# shared, so every prefill still computes at least one position (whose logits give the next
# token). A freed block keeps its hash until it is handed out again, so a request arriving
# later with the same context would hit the cache too.
#
# ## 5. Measured: sequential, static batches, continuous batching
#
# Time for the full comparison on the workload of Section 2: the same 64 requests (prompts of
# 16–256 held-out tokens, outputs of 8–128 tokens), greedy, with end-of-sequence ignored so
# that every request gets exactly the number of tokens it asked for:
#
# - **sequential** — Hugging Face `generate`, one request at a time, `max_new_tokens` =
#   `min_new_tokens` = the request's length;
# - **static batches** — `generate` on batches of 16 (and of 64) requests, left-padded to the
#   longest prompt; `generate` cannot stop rows at different lengths, so each batch runs to
#   its longest request and we **count only the requested tokens** as output;
# - **continuous batching** — our `LLMEngine`, all 64 requests queued at once, `max_num_seqs=64`.
#
# Throughput is requested tokens divided by wall time, each method timed once in this process
# after a short warm-up.

# %%
@torch.inference_mode()
def hf_sequential(prompts, output_lens):
    outs = []
    for prompt, n in zip(prompts, output_lens):
        x = torch.tensor([prompt], device=device)
        out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=n,
                             min_new_tokens=n, pad_token_id=tok.pad_token_id)
        outs.append(out[0, len(prompt):].tolist())
    return outs


@torch.inference_mode()
def hf_static(prompts, output_lens, batch_size):
    outs = []
    for i in range(0, len(prompts), batch_size):
        lens = output_lens[i:i + batch_size]
        input_ids, mask = pad_batch(prompts[i:i + batch_size], tok.pad_token_id, side="left")  # [B, S_max]
        n = max(lens)  # the whole batch runs until its longest request is done
        out = model.generate(input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=n, min_new_tokens=n, pad_token_id=tok.pad_token_id)
        outs += [row[:k] for row, k in zip(out[:, input_ids.shape[1]:].tolist(), lens)]  # requested tokens only
    return outs


def continuous(prompts, output_lens, max_num_seqs=64):
    engine = LLMEngine(model, tok, EngineConfig(max_num_seqs=max_num_seqs))
    for i, (prompt, n) in enumerate(zip(prompts, output_lens)):
        engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=n, ignore_eos=True), request_id=str(i))
    done, steps = {}, 0
    while engine.has_unfinished():
        done.update((out.request_id, out) for out in engine.step() if out.finished)
        steps += 1
    outs = [done[str(i)] for i in range(len(prompts))]
    return [o.token_ids for o in outs], steps, sum(o.num_cached_tokens for o in outs)


warm = ([p[:16] for p in prompts[:4]], [4] * 4)  # first calls pay one-off costs: not timed
hf_sequential(*warm), hf_static(*warm, 4), continuous(*warm)
results, outputs = {}, {}
for name, fn in [("sequential HF generate", lambda: hf_sequential(prompts, output_lens)),
                 ("static batches of 16, HF generate", lambda: hf_static(prompts, output_lens, 16)),
                 ("static batch of 64, HF generate", lambda: hf_static(prompts, output_lens, 64)),
                 ("continuous batching, LLMEngine", lambda: continuous(prompts, output_lens))]:
    start = time.perf_counter()
    outputs[name] = fn()
    results[name] = time.perf_counter() - start
engine_tokens, engine_steps, engine_cached = outputs.pop("continuous batching, LLMEngine")
outputs["continuous batching, LLMEngine"] = engine_tokens

# %%
# NBVAL_IGNORE_OUTPUT
useful = sum(output_lens)
engine_tps = useful / results["continuous batching, LLMEngine"]
show_table([{"method": name, "seconds": s, "requested tokens/s": useful / s,
             "engine is × faster": engine_tps / (useful / s)} for name, s in results.items()], digits=2)
print(f"{N_REQ} requests, {sum(prompt_lens):,} prompt tokens, {useful:,} requested output tokens; "
      f"measured on {tutx.device.name()}")

# %% [markdown]
# All four produce the same tokens — the engine runs Hugging Face's weights with our attention,
# our scheduling and, on a CPU, our C kernels for the rest of a layer's glue (Section 6):

# %%
ref = outputs["sequential HF generate"]
for name, out in outputs.items():
    same = sum(a == b for a, b in zip(out, ref))
    print(f"{name:36s} {same}/{N_REQ} requests identical to sequential generate")

# %% [markdown]
# How much work did each method do? Count the forward passes and the token positions each one
# pushed through the model's layers (prompt positions, padding included, plus one position per
# row and decode step):

# %%
def static_work(batch_size):
    passes = slots = 0
    for i in range(0, N_REQ, batch_size):
        p, o = prompt_lens[i:i + batch_size], output_lens[i:i + batch_size]
        passes += max(o)  # one prefill pass (gives token 1), then max(o) - 1 decode passes
        slots += len(p) * max(p) + len(p) * (max(o) - 1)
    return passes, slots


work = {
    "sequential HF generate": (sum(output_lens), sum(prompt_lens) + sum(n - 1 for n in output_lens)),
    "static batches of 16, HF generate": static_work(16),
    "static batch of 64, HF generate": static_work(64),
    "continuous batching, LLMEngine": (engine_steps, sum(prompt_lens) - engine_cached
                                       + sum(n - 1 for n in output_lens)),
}
needed = work["sequential HF generate"][1]
show_table([{"method": name, "forward passes": passes, "token positions computed": slots,
             "× the positions needed": slots / needed} for name, (passes, slots) in work.items()], digits=2)

# %% [markdown]
# The engine does the least work of the three batched methods *and* needs far fewer forward
# passes than generating sequentially: it computes only the positions that were asked for, in
# batches that stay as full as the queue allows. What that buys in wall time depends on what a
# forward pass costs on the device. On this machine, from the measurements above:

# %%
# NBVAL_IGNORE_OUTPUT
engine_s = results["continuous batching, LLMEngine"]
for name in results:
    if name != "continuous batching, LLMEngine":
        print(f"engine vs {name}: {results[name] / engine_s:.1f}× faster (wall time, same requested tokens)")
vs_static = [n for n in results if "static" in n]
static_slots = min(work[n][1] for n in vs_static) / work["continuous batching, LLMEngine"][1]
print(f"\nThe static batches compute {static_slots:.1f}× the engine's token positions: the most the engine could "
      "gain from skipping waste if a forward pass cost only what its positions cost.\n")
show_table([{"method": name, "ms per forward pass": results[name] / work[name][0] * 1e3,
             "µs per position computed": results[name] / work[name][1] * 1e6} for name in results], digits=1)
fig, ax = plt.subplots(figsize=(7, 2.6))
names = list(results)
ax.barh(names, [useful / results[n] for n in names], color=["0.6", "tab:orange", "tab:orange", "tab:blue"])
ax.invert_yaxis()
ax.set(xlabel="requested tokens/s", title=f"Same 64 requests, greedy ({tutx.device.name()[:45]})")
plt.show()

# %% [markdown]
# Two effects decide these numbers on a CPU. First, the cost of a forward pass grows with the
# positions it computes — for a model this small the arithmetic, not reading the weights, is the
# bottleneck — so skipping the waste of static batching is worth at most the ratio of positions
# printed above. Second, the last table compares what each method pays *per position*: our
# engine's CPU path gathers every sequence's pages into a dense copy in plain PyTorch at every
# layer of every decode step (the paged Triton kernel is for GPUs) and rebuilds its block tables
# in Python each step, while `generate` appends to one contiguous cache. Where the engine pays
# more per position than `generate`, that overhead eats the work it saves, and the speed-ups
# printed above fall short of the work ratio.
#
# Continuous batching is built for the other regime. *Prediction, not measured here:* on a GPU,
# where decoding the tiny model is bound by reading weights and launching kernels rather than by
# arithmetic, a decode step of many sequences should cost little more than a step of one, so
# the wall time would follow the *forward passes* — where static batching pays for every padded
# row and every step its longest member takes, and sequential generation pays one pass per
# token. The GPU check below is how that prediction gets tested.
#
# The GPU check (`scripts/gpu_checks/engine.py`) runs the same comparison with the tiny model in
# fp16 on CUDA, and times our paged-decode Triton kernel against the dense flash-decoding kernel
# of Chapter 4 at a real size. Its latest results:

# %%
measured = latest("engine")
if measured is None:
    print("No GPU results recorded yet: run `PYTHONPATH=. python scripts/gpu_check.py --only engine` "
          "on a CUDA machine; the table will appear here.")
else:
    kernel = [r for r in measured.rows if r.get("op") == "paged decode"]
    runs = [r for r in measured.rows if r.get("op") == "generate"]
    if kernel:
        show_table([{"shape": r["shape"], "dtype": r["dtype"], "max abs error vs reference": r["max_abs_err"],
                     "paged ms": r["ms"], "dense decode_attention ms": r["baseline_ms"],
                     "dense ms / paged ms": r["ratio"], "KV GB/s": r["kv_gbps"]} for r in kernel], digits=3)
    if runs:
        show_table([{"method": r["method"], "model": r["model"], "requests": r["requests"],
                     "requested tokens/s": r["tokens_per_s"], "engine is × faster": r["ratio"],
                     "identical to engine": r["identical"]} for r in runs], digits=2)
    print(measured.source)

# %% [markdown]
# ## 6. Against vLLM
#
# Hugging Face `generate` is the easy baseline. The engine people actually deploy is vLLM, and
# its CPU build runs the same tiny Llama on the same machine. `scripts/bench_engines.py`
# (`make bench-vllm`, which installs vLLM into its own environment, `.venv-vllm`) sends the
# same requests to four engines — HF static batches of 16, our `LLMEngine` with its defaults,
# our `LLMEngine` with vLLM's scheduling policy (`mixed_batches=True`, below) and vLLM's offline
# engine — each in its own long-lived process with the same thread count, start-up and warm-up
# timed apart, and the timed runs **interleaved** (A B C D, B C D A, …) so that a busy patch of
# a shared machine hits all of them alike. Every engine must return exactly the tokens of `generate`
# run one request at a time. The workloads: the Chapter 6 mix of Section 5; *chat* (short
# prompts, long answers); *summary* (long prompts, short answers); *prefix* (the same
# 200-token system prompt before every request, where prefix caching pays); and the Chapter 6
# mix on an ~80M-parameter Llama with random weights, where matrix products rather than Python
# dominate. Per request the harness records the time to the first token (TTFT) and the time per
# output token after it (TPOT). The table and plot below are read from the newest results file;
# nothing is typed in.

# %%
ENGINE_NAMES = {"hf": "HF static (16)", "tutx": "tutx LLMEngine", "tutx_mixed": "tutx, mixed steps",
                "vllm": "vLLM (CPU)"}
engines_run = latest("engines")
if engines_run is None:
    print("Engine comparison not recorded yet: run `make bench-vllm` (it writes tutx/results/engines-*.json); "
          "the table and plot will appear here.")
else:
    env = engines_run.environment
    table = []
    for row in engines_run.rows:
        for key, label in ENGINE_NAMES.items():
            if key not in row:
                continue
            r = row[key]
            tps = r["tokens_per_s"]
            table.append({"workload": row["workload"], "engine": label, "tokens/s (median)": tps["median"],
                          "min": tps["min"], "max": tps["max"],
                          "× vLLM": tps["median"] / row["vllm"]["tokens_per_s"]["median"] if "vllm" in row else None,
                          "TTFT p50 ms": r["ttft_s"]["p50"] * 1e3, "TPOT p50 ms": r["tpot_s"]["p50"] * 1e3,
                          "TPOT p99 ms": r["tpot_s"]["p99"] * 1e3, "warm-up s": r.get("warmup_s"),
                          "same tokens as generate": r.get("identical_to_hf_generate", "?")})
    show_table(table, digits=2)
    print(f"{env.get('device', '?')}, {env.get('threads', '?')} threads for every engine, "
          f"{env.get('rounds', '?')} interleaved rounds; {env.get('date', '?')[:16].replace('T', ' ')} UTC; "
          f"tutx {env.get('tutx_version', '?')}, vLLM {env.get('vllm_version', '?')}, torch {env.get('torch', '?')}; "
          f"`{env.get('command', '?')}` ({engines_run.path.name})")
    workloads = [row["workload"] for row in engines_run.rows]
    fig, ax = plt.subplots(figsize=(7.5, 3))
    width = 0.8 / len(ENGINE_NAMES)
    for j, (key, label) in enumerate(ENGINE_NAMES.items()):
        xs = [i for i, row in enumerate(engines_run.rows) if key in row]
        med = [engines_run.rows[i][key]["tokens_per_s"]["median"] for i in xs]
        lo = [m - engines_run.rows[i][key]["tokens_per_s"]["min"] for i, m in zip(xs, med)]
        hi = [engines_run.rows[i][key]["tokens_per_s"]["max"] - m for i, m in zip(xs, med)]
        ax.bar([i + (j - (len(ENGINE_NAMES) - 1) / 2) * width for i in xs], med, width, yerr=[lo, hi],
               capsize=3, label=label)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_yscale("log")  # the 80M model runs an order of magnitude slower than the tiny one
    ax.set(ylabel="output tokens/s (median, min–max)",
           title=f"{env.get('device', '?')[:40]}, {env.get('threads', '?')} threads")
    ax.legend(fontsize=8)
    plt.show()

# %% [markdown]
# **What each engine does that the other does not.** Both schedule at the iteration level, keep
# the KV cache in fixed-size blocks and share identical prompt blocks between requests (the
# harness empties both prefix caches before every run, so each run pays for its prompts). vLLM
# compiles the model's graph (part of its warm-up time in the table). The schedulers differ by
# default: ours runs a step of whole prompts *or* a step of decodes (nano-vllm's policy), so
# requests admitted early in a burst wait through every later prefill step; vLLM's puts the
# running requests' decodes in every step and fills the rest of the token budget with *chunks*
# of prompts, a long prompt split over several steps. `EngineConfig(mixed_batches=True)` is that
# policy in our engine (the "mixed steps" rows), from `Scheduler.schedule_mixed` and a prompt's
# `num_computed_tokens`; a chunk's blocks join the prefix cache only once their keys and values
# are computed. Which policy wins depends on the workload and the budget: compare the two tutx
# rows per workload, and see `tutx/results/PERF_NOTES.md` for budgets from 512 to 4,096 tokens
# (on a burst of prompts the budget only moves the median request's wait between its TTFT and its
# TPOT).
# `EngineConfig(mixed_prefill_budget=N)` caps the prompt tokens of a step that also decodes, which
# trades throughput for a shorter time per output token during a burst of prompts.
# On the CPU both engines do the same three things below the Python: attention in C over the
# paged cache, linear layers with weights reordered once at start-up, and the elementwise glue of
# a layer (norms, rotary embedding, SiLU) fused into single passes. vLLM's products run through
# oneDNN; ours through our own register-blocked kernel, which on this AVX-512 machine beats
# oneDNN at every row count from a decode step's few dozen to a prefill step's thousands, and
# which computes the MLP's gate and up products and SiLU-and-multiply in one pass.
#
# **What moved the numbers.** `tutx/results/PERF_NOTES.md` ("Engine on CPU") records every
# lever tried, with its prediction written before the measurement and the outcome from
# `scripts/engine_levers.py` (engine variants timed interleaved in one process). A profile of the
# Chapter 6 mix showed where a decode step went: matrix products, decode attention — most of it
# the copy that gathered every sequence's pages into a dense block — and, on a model this small,
# dozens of tiny operators per layer, each a few microseconds of dispatch. These changes moved
# the numbers — the cell below shows the latest measurement of the switchable ones, one engine
# per row: a C kernel (`tutx/kernels/csrc/paged_decode_cpu.c`, built on first use) that reads
# the pages in place; linear weights prepacked for oneDNN, with the q/k/v and gate/up products
# fused (`EngineConfig(prepack_weights=True)`); the layer glue in C (`tutx.kernels.llama_cpu_ops`);
# for prompts, the same C file's prefill path, which puts a KV head's query heads for a few
# consecutive prompt tokens into the 16 lanes of a vector register so that every key row feeds
# 16 scores at once; keys stored *transposed* within each block of the pool, so that the decode
# kernel scores 16 keys with one vector multiply-add per dimension and head (and asks for the
# next block before it needs it: the pages lie anywhere in a pool larger than the caches); and
# the matrix products through our own register-blocked kernel (`tutx.kernels.linear_cpu`), with
# the gate and up products and SiLU in one pass; its first version reached only ~73% of the
# CPU's peak because the compiler sent the weight vectors through the stack, and it beat oneDNN
# only below ~48 rows until that was found. And one that is not in the table, since it is
# process-wide: malloc keeps a step's freed activations for the next step
# (`tutx.engine.cpu_memory.keep_freed_memory`) instead of page-faulting them in afresh. Others did
# not: `torch.compile` of the decode step (minutes of compiling, no faster), pinning each thread
# to a core (slower here), a first prefill kernel that put *keys* in the lanes (slower), and two
# earlier rewrites of the decode kernel's inner loops (no faster in the engine). Greedy output
# stays token-identical to `generate` with every option, as the table's last column checks. In
# the lever table each row turns more of them off, cumulatively; `fused_silu`, `few_rows`,
# `keys_transposed` and `c_glue` are switches of the measuring script (they reach into the model
# runner), the others `EngineConfig` fields.

# %%
levers_log = Path(tutx.__file__).parent / "results" / "logs" / "engine_levers.log"
blocks = levers_log.read_text().strip().split("\n# ")[::-1] if levers_log.exists() else []
block = next((b for b in blocks if "workload ch6," in b.splitlines()[0] and '"few_rows": false' in b
              and '"c_glue": false' in b), None)
if block is None:
    print("No lever measurements recorded yet: run scripts/engine_levers.py.")
else:
    LINE = re.compile(r"^(\{.*?\})\s+(\d+) tok/s\s+time ([\d.]+)x.*?min-max (\d+)-(\d+)\s+CPU ([\d.]+) s"
                      r"\s+(?:TTFT p50 (\d+) ms\s+)?TPOT p50 ([\d.]+) ms")
    rows = [m.groups() for m in map(LINE.match, block.splitlines()[1:]) if m]
    show_table([{"engine (EngineConfig changes)": f"`{r[0]}`", "tokens/s (median)": int(r[1]), "min": int(r[3]),
                 "max": int(r[4]), "time vs first row": float(r[2]), "CPU s": float(r[5]),
                 "TTFT p50 ms": None if r[6] is None else int(r[6]), "TPOT p50 ms": float(r[7])} for r in rows],
               digits=2)
    print(block.splitlines()[0].lstrip("# "))

# %% [markdown]
# ## Exercises
#
# Each exercise has a check: write your function in the cell, run it, and the check tells you
# whether it is right (it prints "not solved yet" until you fill in the body). Worked solutions
# are hidden below each exercise.
#
# ```{exercise}
# :label: ch06-can-allocate
#
# Write `my_can_allocate(num_tokens, block_size, num_free_blocks, num_held_blocks)`: can a
# sequence of `num_tokens` tokens that already holds `num_held_blocks` blocks get the blocks it
# still needs from `num_free_blocks` free ones? (`num_held_blocks = 0` is the admission of a new
# request; a running sequence that just grew by one token needs a new block only when it
# crosses a block boundary.)
# ```

# %%
from tutx.exercises import ch06


def my_can_allocate(num_tokens, block_size, num_free_blocks, num_held_blocks):
    ...  # your code here


ch06.check_can_allocate(my_can_allocate)

# %% [markdown]
# ```{solution-start} ch06-can-allocate
# :class: dropdown
# ```
# A sequence of $n$ tokens needs $\lceil n / \text{block\_size} \rceil$ blocks — the last one
# may be partly empty — minus those it already holds:

# %% [solution]
def can_allocate_solution(num_tokens, block_size, num_free_blocks, num_held_blocks):
    needed = (num_tokens + block_size - 1) // block_size
    return num_free_blocks >= needed - num_held_blocks


ch06.check_can_allocate(can_allocate_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch06-blocks-to-admit
#
# **Build it: admission with prefix sharing.** The engine's `BlockManager.can_allocate` does
# not ask for all of a prompt's blocks when the prefix cache already holds some of them. Write
# `my_blocks_to_admit(prompt, block_size, cached)`: how many *free* blocks does admitting
# `prompt` (a list of token ids) take? `cached` maps a prefix — a tuple of the first
# `k * block_size` tokens of some earlier sequence — to `True` if the pool block that ends it is
# held by a running sequence, `False` if it is free but still holds its content. Look the
# prompt's leading full blocks up in order and stop at the first miss. A held block is shared
# for free; a free cached block is reused but still leaves the free list; and the block that
# holds the prompt's last token is never shared (its logits must be computed). The check runs
# your function on hidden cases taken from a real `BlockManager`.
# ```

# %%
def my_blocks_to_admit(prompt, block_size, cached):
    ...  # your code here


ch06.check_blocks_to_admit(my_blocks_to_admit)

# %% [markdown]
# ```{solution-start} ch06-blocks-to-admit
# :class: dropdown
# ```
# Walk the full blocks from the start. A block ending at position `end` may be shared only if
# the prompt goes on past it; the first prefix the cache does not know ends the walk, because a
# block's identity is its whole prefix (the chained hash of Section 4).

# %% [solution]
def blocks_to_admit_solution(prompt, block_size, cached):
    needed = -(-len(prompt) // block_size)
    shared = 0
    for i in range(needed):
        end = (i + 1) * block_size
        if end >= len(prompt):  # the block with the last token is computed, never shared
            break
        held = cached.get(tuple(prompt[:end]))
        if held is None:  # first miss: no later block can be a hit
            break
        shared += held  # a free cached block is reused but still comes off the free list
    return needed - shared


ch06.check_blocks_to_admit(blocks_to_admit_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch06-schedule
#
# Write `my_schedule_rule(waiting, num_running, max_num_seqs, max_num_batched_tokens,
# num_free_blocks, block_size)`: `waiting` lists the lengths (in tokens) of the waiting
# sequences, oldest first. Return the indices of those one prefill step admits: first come,
# first served, while the running plus admitted sequences stay within `max_num_seqs`, the
# admitted tokens within `max_num_batched_tokens`, and each admitted sequence's blocks fit the
# blocks still free; stop at the first one that does not fit. Why should a short request not
# overtake a long one that does not fit?
# ```

# %%
def my_schedule_rule(waiting, num_running, max_num_seqs, max_num_batched_tokens, num_free_blocks, block_size):
    ...  # your code here


ch06.check_schedule_rule(my_schedule_rule)

# %% [markdown]
# ```{solution-start} ch06-schedule
# :class: dropdown
# ```
# One pass over the queue, spending the three budgets. Stopping at the first misfit is what
# makes the queue fair: if short requests could always overtake, a long prompt under steady
# load might never find a step with enough room — it would starve.

# %% [solution]
def schedule_rule_solution(waiting, num_running, max_num_seqs, max_num_batched_tokens, num_free_blocks, block_size):
    admitted, tokens, free = [], 0, num_free_blocks
    for i, n in enumerate(waiting):
        blocks = (n + block_size - 1) // block_size
        if num_running + len(admitted) >= max_num_seqs or tokens + n > max_num_batched_tokens or blocks > free:
            break
        admitted.append(i)
        tokens, free = tokens + n, free - blocks
    return admitted


ch06.check_schedule_rule(schedule_rule_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch06-static-waste
#
# Write `my_static_batch_waste(prompt_lens, output_lens, batch_size)`: cut the requests into
# consecutive batches of `batch_size` (the last may be smaller); each batch pads its prompts to
# its longest prompt and decodes until its longest output is done. Return the fraction of the
# token slots computed (rows × (longest prompt + longest output), summed over batches) that
# nobody asked for. Which batch size wastes least on Section 2's workload, and why is that not
# the fastest one?
# ```

# %%
def my_static_batch_waste(prompt_lens, output_lens, batch_size):
    ...  # your code here


ch06.check_static_batch_waste(my_static_batch_waste)

# %% [markdown]
# ```{solution-start} ch06-static-waste
# :class: dropdown
# ```

# %% [solution]
def static_batch_waste_solution(prompt_lens, output_lens, batch_size):
    slots = useful = 0
    for i in range(0, len(prompt_lens), batch_size):
        p, o = prompt_lens[i:i + batch_size], output_lens[i:i + batch_size]
        slots += len(p) * (max(p) + max(o))
        useful += sum(p) + sum(o)
    return 1 - useful / slots


ch06.check_static_batch_waste(static_batch_waste_solution)
print({b: round(static_batch_waste_solution(prompt_lens, output_lens, b), 3) for b in (1, 2, 4, 8, 16, 32, 64)})

# %% [markdown]
# Batch size 1 wastes nothing — and is the slowest, because every token then costs a whole
# forward pass for one row (Section 2's first measurement). Static batching can only trade
# one loss for the other; continuous batching removes the trade.
#
# ```{solution-end}
# ```
#
# ## Summary
#
# - A device map places whole decoder layers on devices within their budgets, KV cache
#   included; `plan_device_map` computes it from a config on the `meta` device and says exactly
#   how far a plan is from fitting. Layers on the CPU fit but run at CPU speed.
# - Batching multiplies throughput because one pass over the weights serves many sequences.
#   Static batches waste the padding of short prompts and the steps finished sequences ride
#   along — we counted it on a realistic mix of lengths.
# - A dynamic batcher's `max_wait_ms` trades latency for capacity: waiting fills batches, which
#   lowers the compute per token, but every request may wait that long.
# - Continuous batching schedules every iteration: finished sequences leave, waiting ones join,
#   nothing is padded. A paged KV cache hands out memory a block at a time; when it runs out,
#   the newest sequence is preempted and recomputed later, and identical prompt prefixes share
#   blocks.
# - On the same 64 requests our engine computes only the positions that were asked for, in
#   about as few forward passes as one big static batch; the speed-ups measured on this machine
#   are printed above, with the reason a CPU limits them (a forward pass there costs in
#   proportion to the positions it computes).
#
# ## References
#
# {cite}`yu2022orca,kwon2023efficient,nanovllm2025,dubey2024llama3,touvron2023llama2,ainslie2023gqa`
