# %% [markdown]
# # Chapter 1 — Scaling Challenges
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tutx-course/scaling-and-optimization/blob/main/notebooks/01_scaling_challenges.ipynb)
#
# A transformer that answers one question on a laptop is easy. Serving it to thousands of users,
# with long prompts, on hardware you pay for by the hour, is where the work begins. This chapter
# builds the back-of-the-envelope tools the rest of the course uses to decide *what* to optimise.
#
# **You will learn to**
#
# - name the four dimensions along which transformer workloads grow, and the five metrics that
#   tell you whether a deployment is good enough (latency, throughput, memory, cost, quality);
# - measure those metrics on a real model — the tiny Shakespeare LM that ships with `tutx`;
# - compute parameters, weight memory, KV-cache memory, activation memory and FLOPs of any
#   Hugging Face model from its config, exactly, without downloading it;
# - use the **roofline** to see why generating text is limited by memory bandwidth, not by FLOP/s,
#   and what that means for tokens per second and dollars per million tokens.

# %%
# Set-up: on Colab, install tutx first (elsewhere it is already installed by `make lab`).
import sys

if "google.colab" in sys.modules:
    %pip install -q "tutx @ git+https://github.com/tutx-course/scaling-and-optimization"

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text progress bars

import matplotlib.pyplot as plt
import numpy as np
import torch

import tutx
from tutx.bench import show_table, timeit
from tutx.configs import get_spec
from tutx.hardware import HARDWARE, get_hardware
from tutx.scaling import ModelSpec, cost_per_million_tokens, decode_ceiling, memory_bound_batch

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
GiB = 2**30

# %% [markdown]
# ## 1. The scaling problem
#
# Every cost of running a transformer is a product of a few numbers. Call them the **four
# scaling dimensions**:
#
# | dimension | symbol | grows when … |
# |---|---|---|
# | model size | $N$ parameters ($L$ layers of width $h$) | you want a smarter model |
# | sequence length | $S$ tokens of context | users paste documents, chat histories grow |
# | batch / concurrency | $B$ sequences at once | more users arrive |
# | precision | $p$ bytes per number | you choose fp32, bf16, int8, int4 |
#
# The formulas we will meet in this chapter are all built from them:
#
# $$
# \underbrace{N p}_{\text{weights}}
# \qquad
# \underbrace{2 \, L \, h_{kv} \, d \, S \, B \, p}_{\text{KV cache}}
# \qquad
# \underbrace{2N + 2 L S h}_{\text{FLOPs per token}}
# \qquad
# \underbrace{\frac{\text{memory bandwidth}}{\text{bytes read per token}}}_{\text{decode ceiling}}
# $$
#
# and whether a deployment is good enough is judged by five **metrics**:
#
# | metric | what we measure | unit |
# |---|---|---|
# | latency | time to first token (TTFT), time per output token (TPOT) | ms |
# | throughput | generated tokens per second, over all users | tokens/s |
# | memory | weights + KV cache + activations | bytes |
# | cost | dollars per million generated tokens | \$/M tokens |
# | quality | perplexity on held-out text (lower is better) | — |
#
# The course is about moving the first four without hurting the fifth. Before we optimise
# anything, we measure all five on a real model.

# %% [markdown]
# ## 2. The five metrics, measured on the tiny LM
#
# `tutx` ships a small Llama-architecture model trained on Shakespeare's plays (its model card
# is in `tutx/models/tiny/README.md`). It has the same parts as Llama 3 — rotary positions,
# RMSNorm, a SwiGLU MLP and grouped-query attention — only smaller, so every experiment in
# the course runs in seconds on a laptop.

# %%
device = tutx.device.get()
model, tokenizer = tutx.models.load_tiny(device=device)
spec = ModelSpec.from_config(model.config, name="tiny-shakespeare")
print(spec.summary())
print(f"parameters: ModelSpec says {spec.n_params:,}, the model has {sum(p.numel() for p in model.parameters()):,}")

# %% [markdown]
# `ModelSpec.from_config` reads only the config — it never sees the weights — and still gets
# the parameter count exactly right, because a transformer's shape fully determines it. Here is
# how the parameters split up:

# %%
tutx.show(ModelSpec.param_breakdown)

# %%
parts = spec.param_breakdown()
show_table([{"part": k, "parameters": v, "share": f"{v / spec.n_params:.1%}"} for k, v in parts.items()])

# %% [markdown]
# ### Quality: perplexity on plays the model never saw
#
# Perplexity is $\exp$ of the mean negative log-likelihood per token: a perplexity of 30 means the
# model is, on average, as unsure as if it picked uniformly among 30 tokens. We evaluate on the
# held-out plays in windows of 512 tokens (the model's context); a smaller `stride` would give
# each token more context, at more compute.

# %%
heldout = tutx.models.heldout_text()
n_tokens = len(tokenizer(heldout)["input_ids"])
ppl = tutx.models.perplexity(model, tokenizer, heldout, window=512, stride=512)
print(f"held-out text: {len(heldout):,} characters, {n_tokens:,} tokens")
print(f"held-out perplexity: {ppl:.2f}")

# %%
prompt = "ROMEO:\n"
ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
torch.manual_seed(0)
out = model.generate(ids, max_new_tokens=60, do_sample=True, temperature=0.8, top_k=50,
                     pad_token_id=tokenizer.pad_token_id)
print(tokenizer.decode(out[0], skip_special_tokens=True))

# %% [markdown]
# ### Memory: weights and KV cache
#
# Weights take $N p$ bytes. During generation the model also keeps, for every layer and every
# past token, a **key** and a **value** vector per KV head — the KV cache — so that each new
# token attends to the past without recomputing it. We measure both and compare them with the
# formulas.

# %%
tutx.show(ModelSpec.kv_cache_bytes_per_token)

# %%
weights_measured = sum(p.numel() * p.element_size() for p in model.parameters())
batch, seq = 4, 256
x = torch.randint(0, spec.vocab_size, (batch, seq), device=device)
with torch.inference_mode():
    kv_measured = tutx.models.kv_cache_nbytes(model(x, use_cache=True))
show_table([
    {"what": "weights (fp32)", "measured bytes": weights_measured, "formula bytes": int(spec.weight_bytes("fp32"))},
    {"what": f"KV cache, batch {batch} × {seq} tokens (fp32)", "measured bytes": kv_measured,
     "formula bytes": int(spec.kv_cache_bytes(batch, seq, "fp32"))},
])

# %% [markdown]
# ### Latency, throughput and cost
#
# Generation has two phases. **Prefill** runs the whole prompt through the model at once and
# produces the first token (that is the *time to first token*). **Decode** then produces one
# token per step, each step reading all the weights and the KV cache (that is the *time per
# output token*). Serving many users at once batches their decode steps together: the weights
# are read once per step for the whole batch.
#
# The timings below are measured on the device named in the output, so they differ from
# machine to machine (and nbval does not compare them).

# %%
# NBVAL_IGNORE_OUTPUT
# (timings depend on the machine)
PROMPT_LEN, NEW_TOKENS = 128, 32
gen = dict(do_sample=False, pad_token_id=tokenizer.pad_token_id, eos_token_id=None)
prompt_ids = tokenizer(heldout, return_tensors="pt").input_ids[:, :PROMPT_LEN].to(device)


def generate(batch_size, new_tokens):
    ids = prompt_ids.expand(batch_size, -1)
    with torch.inference_mode():
        return model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **gen)


ttft = timeit(lambda: generate(1, 1), warmup=1, repeat=5)
full = timeit(lambda: generate(1, NEW_TOKENS + 1), warmup=0, repeat=3)
tpot = (full.median - ttft.median) / NEW_TOKENS
rows = []
for b in (1, 4, 16, 64):
    t = timeit(lambda: generate(b, NEW_TOKENS), warmup=0, repeat=2)
    rows.append({"batch": b, "seconds": t.median, "tokens/s": b * NEW_TOKENS / t.median,
                 "ms per step": 1e3 * t.median / NEW_TOKENS})
print(f"device: {tutx.device.name()}")
print(f"time to first token ({PROMPT_LEN}-token prompt): {ttft.median_ms:.1f} ms")
print(f"time per output token (batch 1): {tpot * 1e3:.2f} ms")
show_table(rows)

# %%
# NBVAL_IGNORE_OUTPUT
# (plots measured timings)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
bs = [r["batch"] for r in rows]
ax[0].plot(bs, [r["tokens/s"] for r in rows], "o-")
ax[0].set(xscale="log", yscale="log", xlabel="batch size", ylabel="generated tokens/s", title="throughput")
ax[1].plot(bs, [r["ms per step"] for r in rows], "o-", color="C1")
ax[1].set(xscale="log", xlabel="batch size", ylabel="ms per decode step", title="latency of one step")
for a in ax:
    a.set_xticks(bs, [str(b) for b in bs])
fig.suptitle(f"Tiny LM, greedy decode, measured on {tutx.device.name()}", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# Throughput grows almost in proportion to the batch while each step gets only a little slower:
# a decode step is dominated by fixed costs (reading weights, launching work), which a batch
# shares. Hold on to that observation — the roofline below explains it.
#
# Cost follows from throughput and the price of the machine. The price is an **assumption**
# (change it to your own): a small 2-vCPU cloud VM rents for roughly \$0.10 an hour.

# %%
# NBVAL_IGNORE_OUTPUT
# (derived from the timings above)
CPU_DOLLARS_PER_HOUR = 0.10  # assumption: a 2-vCPU cloud VM; put your own price here
best = max(rows, key=lambda r: r["tokens/s"])
show_table([
    {"metric": "latency: time to first token", "value": f"{ttft.median_ms:.1f} ms"},
    {"metric": "latency: time per output token (batch 1)", "value": f"{tpot * 1e3:.2f} ms"},
    {"metric": f"throughput (batch {best['batch']})", "value": f"{best['tokens/s']:,.0f} tokens/s"},
    {"metric": "memory: weights fp32", "value": f"{weights_measured / 2**20:.1f} MiB"},
    {"metric": "memory: KV cache per token fp32", "value": f"{spec.kv_cache_bytes_per_token('fp32') / 1024:.1f} KiB"},
    {"metric": f"cost at ${CPU_DOLLARS_PER_HOUR:.2f}/h (batch {best['batch']})",
     "value": f"${cost_per_million_tokens(best['tokens/s'], CPU_DOLLARS_PER_HOUR):.3f} per M tokens"},
    {"metric": "quality: held-out perplexity", "value": f"{ppl:.2f}"},
])

# %% [markdown]
# ## 3. From the tiny model to real ones
#
# The same formulas size models we cannot run here. `tutx.configs` holds the real configs of
# well-known models (copied from their `config.json`, so nothing is downloaded); a test builds
# each of them with `transformers` on the `meta` device and checks that the parameter counts
# agree exactly.

# %%
names = ["GPT-2", "BERT-base", "Llama-2-7B", "Mistral-7B", "Llama-3.1-8B", "Llama-2-70B", "Llama-3.1-70B", "Llama-3.1-405B"]
rows = []
for name in names:
    s = get_spec(name)
    decoder = s.family != "bert"
    rows.append({
        "model": name,
        "params (B)": s.n_params / 1e9,
        "weights bf16 (GiB)": s.weight_bytes("bf16") / GiB,
        "KV / token bf16 (KiB)": s.kv_cache_bytes_per_token("bf16") / 1024 if decoder else "— (encoder)",
        "KV for 8k tokens (GiB)": s.kv_cache_bytes(1, 8192, "bf16") / GiB if decoder else "—",
        "GFLOPs / token (S=4k)": s.flops_per_token(4096) / 1e9,
    })
show_table(rows)

# %% [markdown]
# Two things stand out. The weights of a 70B model do not fit one 80 GB GPU in bf16 — that is
# what quantization (Chapter 3) and sharding (Chapter 6) are for. And grouped-query attention
# matters: Llama-2-7B keeps 32 KV heads and needs **512 KiB** of cache per token, Llama-3.1-8B
# keeps 8 and needs **128 KiB** — four times more users or four times longer contexts in the
# same memory (Chapter 4).
#
# ### Memory versus sequence length and batch
#
# For serving, memory is weights (fixed) + KV cache (grows with $S \times B$) + activations
# (the working set of one layer's forward pass). Let's plot it for Llama-3.1-8B in bf16.

# %%
tutx.show(ModelSpec.activation_bytes)

# %%
s8 = get_spec("Llama-3.1-8B")
seqs = np.array([512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072])
batches = np.array([1, 2, 4, 8, 16, 32, 64, 128])


def breakdown(batch, seq):
    return (s8.weight_bytes("bf16") / GiB, s8.kv_cache_bytes(int(batch), int(seq), "bf16") / GiB,
            s8.activation_bytes(int(batch), int(seq), "bf16", training=False) / GiB)


fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, xs, label, f in [(axes[0], seqs, "sequence length S (batch 1)", lambda v: breakdown(1, v)),
                         (axes[1], batches, "batch B (S = 4096)", lambda v: breakdown(v, 4096))]:
    w, kv, act = np.array([f(v) for v in xs]).T
    ax.stackplot(xs, w, kv, act, labels=["weights", "KV cache", "activations (eager attention)"], alpha=0.8)
    for gb, hw in [(80, "H100 80 GB"), (24, "L4 24 GB"), (16, "T4 16 GB")]:
        ax.axhline(gb * 1e9 / GiB, ls="--", lw=1, color="k")
        ax.text(xs[0], gb * 1e9 / GiB * 1.05, hw, fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel=label)
    ax.set_xticks(xs, [f"{v // 1024}k" if v >= 1024 else str(v) for v in xs], fontsize=8)
axes[0].set_ylabel("GiB")
axes[0].legend(loc="upper left", fontsize=8)
fig.suptitle("Llama-3.1-8B inference memory in bf16 (computed)")
plt.tight_layout()
plt.show()

# %%
for b, S in [(1, 8192), (1, 131072), (32, 4096), (128, 4096)]:
    w, kv, act = breakdown(b, S)
    print(f"batch {b:3d} × {S:6d} tokens: weights {w:5.1f} GiB + KV {kv:6.1f} GiB + activations {act:6.1f} GiB")

# %% [markdown]
# At long contexts the activations of *eager* attention explode: the $S \times S$ score matrix
# of one layer at 128k tokens is hundreds of GiB. FlashAttention (Chapter 4) never materialises
# it. At large batches the KV cache dominates — which is why paged KV caches and continuous
# batching (Chapter 6) exist.
#
# ## 4. Compute or memory? The roofline
#
# A GPU can do at most $P$ FLOP/s and move at most $W$ bytes/s from its memory. A piece of
# work that does $F$ FLOPs on $Q$ bytes takes at least $\max(F/P,\; Q/W)$ seconds. Its
# **arithmetic intensity** $I = F/Q$ decides which term wins: below the *ridge point*
# $P/W$ the work is **memory-bound**, above it **compute-bound**
# {cite}`williams2009roofline`. The attainable rate is $\min(P,\; I \cdot W)$.
#
# One decode step at batch $B$ does about $2N$ FLOPs per sequence, $2NB$ in all, while reading
# the $Np$ bytes of weights once: $I \approx 2B/p$. In bf16 ($p = 2$), $I \approx B$. The ridge
# point of an H100 in bf16 is about 295 FLOP/byte — so single-user decoding uses well under 1 %
# of the GPU's FLOP/s, whatever kernel you write {cite}`pope2022efficiently`.

# %%
show_table([{"hardware": hw.name, "bf16/fp16 TFLOP/s": hw.peak("bf16" if "bf16" in hw.peak_flops else "fp16") / 1e12,
             "memory GB/s": hw.memory_bandwidth / 1e9, "memory GB": hw.memory_bytes / 1e9,
             "ridge (FLOP/byte)": hw.ridge_point("bf16" if "bf16" in hw.peak_flops else "fp16")}
            for hw in HARDWARE.values()])
print("sources:")
for hw in HARDWARE.values():
    print(f"  {hw.name}: {hw.source}")

# %%
fig, ax = plt.subplots(figsize=(8, 5))
intensity = np.logspace(-1, 4, 300)
for i, name in enumerate(["T4", "L4", "A100-80GB", "H100-SXM", "H200", "laptop-cpu"]):
    hw = get_hardware(name)
    dt = "bf16" if "bf16" in hw.peak_flops else "fp16"
    ax.plot(intensity, hw.attainable_flops(intensity, dt) / 1e12, color=f"C{i}", label=f"{hw.name} ({dt})")
h100 = get_hardware("H100-SXM")
for b in (1, 8, 64, 512):
    I = s8.decode_intensity("bf16", batch=b, context_len=1024)
    ax.plot(I, h100.attainable_flops(I, "bf16") / 1e12, "ko")
    ax.annotate(f"decode B={b}", (I, h100.attainable_flops(I, "bf16") / 1e12), textcoords="offset points",
                xytext=(5, -12), fontsize=8)
I = s8.decode_intensity("bf16", batch=2048)  # a 2048-token prefill reads the weights once
ax.plot(I, h100.attainable_flops(I, "bf16") / 1e12, "k^")
ax.annotate("prefill 2k tokens", (I, h100.attainable_flops(I, "bf16") / 1e12), textcoords="offset points",
            xytext=(-60, 8), fontsize=8)
ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOP/byte)", ylabel="attainable TFLOP/s",
       title="Roofline, with Llama-3.1-8B (bf16, 1k context) on an H100")
ax.legend(fontsize=8, loc="lower right")
plt.tight_layout()
plt.show()

# %% [markdown]
# Prefill sits on the flat, compute-bound roof; decode sits on the slanted, memory-bound one.
# Larger batches climb the slope. The KV cache complicates this: each sequence reads its own
# cache, so with long contexts the intensity stops growing with the batch. `memory_bound_batch`
# finds the batch at which decode reaches the ridge:

# %%
for ctx in (0, 128, 1024):
    try:
        print(f"Llama-3.1-8B on H100, context {ctx:4d}: compute-bound from batch {memory_bound_batch(s8, 'H100-SXM', 'bf16', ctx)}")
    except ValueError as err:
        print(f"Llama-3.1-8B on H100, context {ctx:4d}: {err}")

# %% [markdown]
# ## 5. The decode ceiling, and what a token costs
#
# If decoding is memory-bound, one step can be no faster than the time to stream the bytes it
# needs from memory. For one sequence that is every weight (except the embedding table, of
# which a step reads a single row) plus its KV cache:
#
# $$ \text{tokens/s} \;\le\; \frac{W}{\text{bytes read per step}} \times B $$
#
# For Llama-3.1-8B in bf16 on an H100 SXM (3.35 TB/s) at batch 1 that gives about
# 223 tokens/s — a bound no software can beat, and a target good kernels get close to.

# %%
tutx.show(decode_ceiling)

# %%
for hw in ("T4", "L4", "A100-80GB", "H100-SXM", "H200"):
    half = "bf16" if "bf16" in get_hardware(hw).peak_flops else "fp16"  # a T4 has no bf16
    print(f"{hw:>10}: Llama-3.1-8B {half} batch 1 ≤ {decode_ceiling(s8, hw, half):6.1f} tokens/s;"
          f"  int4 weights ≤ {decode_ceiling(s8, hw, 'int4', compute_dtype='fp16'):6.1f} tokens/s")

# %%
H100_DOLLARS_PER_HOUR = 3.00  # assumption: an on-demand H100 in the cloud; put your own price here
bs = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512])
fig, ax = plt.subplots(1, 2, figsize=(11, 4))
for i, name in enumerate(["L4", "A100-80GB", "H100-SXM", "H200"]):
    tps = np.array([decode_ceiling(s8, name, "bf16", batch=int(b), context_len=1024) for b in bs])
    ax[0].plot(bs, tps, "o-", ms=3, color=f"C{i + 1}", label=name)
    if name == "H100-SXM":
        ax[1].plot(bs, [cost_per_million_tokens(t, H100_DOLLARS_PER_HOUR) for t in tps], "o-", ms=3, color=f"C{i + 1}")
ax[0].set(xscale="log", yscale="log", xlabel="batch size", ylabel="tokens/s (upper bound)",
          title="Decode ceiling, Llama-3.1-8B bf16, 1k context")
ax[0].legend(fontsize=8)
ax[1].set(xscale="log", yscale="log", xlabel="batch size", ylabel="$ per million tokens (lower bound)",
          title=f"Cost on an H100 at ${H100_DOLLARS_PER_HOUR:.2f}/h (assumed)")
plt.tight_layout()
plt.show()

# %% [markdown]
# Batching is the cheapest optimisation there is: until the ridge, every extra sequence in the
# batch is almost free, so the cost per token falls in proportion. Past it — or when the KV
# cache fills memory — you need the other tools of this course: smaller weights
# (quantization, Chapter 3), smaller caches (GQA and paged caches, Chapters 4 and 6), and
# kernels that reach the roofline (Chapters 4 and 5).
#
# Training is a different regime: every token goes forward and backward ($\approx 3\times$ the
# forward FLOPs, $\approx 6N$ per token {cite}`kaplan2020scaling`) in large batches, so it is
# compute-bound. Training Llama-3.1-8B on 15 trillion tokens takes:

# %%
flops = s8.training_flops(15e12, seq_len=8192)
h100_days = flops / (0.4 * get_hardware("H100-SXM").peak("bf16")) / 86400
print(f"{flops:.2e} FLOPs ≈ {h100_days:,.0f} H100-days at 40 % of peak bf16 FLOP/s")

# %% [markdown]
# ## Exercises
#
# Each exercise has a check: write your function in the cell, run it, and the check tells you
# whether it is right (it prints "not solved yet" until you fill in the body). Worked solutions
# are hidden below each exercise.
#
# ```{exercise}
# :label: ch01-kv-cache
#
# Write `my_kv_cache_bytes(num_layers, num_kv_heads, head_dim, batch, seq_len, bytes_per_elem)`
# that returns the size of the KV cache in bytes. How much does Llama-3.1-8B need for 16 users
# with 8k tokens each in bf16?
# ```

# %%
from tutx.exercises import ch01


def my_kv_cache_bytes(num_layers, num_kv_heads, head_dim, batch, seq_len, bytes_per_elem):
    ...  # your code here


ch01.check_kv_cache_bytes(my_kv_cache_bytes)

# %% [markdown]
# ```{solution-start} ch01-kv-cache
# :class: dropdown
# ```
# Keys **and** values (the factor 2), for every layer, KV head, channel, sequence and position:

# %% [solution]
def kv_cache_bytes_solution(num_layers, num_kv_heads, head_dim, batch, seq_len, bytes_per_elem):
    return 2 * num_layers * num_kv_heads * head_dim * batch * seq_len * bytes_per_elem


ch01.check_kv_cache_bytes(kv_cache_bytes_solution)
print(f"Llama-3.1-8B, 16 × 8k tokens, bf16: {kv_cache_bytes_solution(32, 8, 128, 16, 8192, 2) / GiB:.0f} GiB")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch01-ceiling
#
# Write `my_decode_ceiling(param_bytes_read_per_token, bandwidth_bytes_per_s)`: the memory-bound
# upper limit on tokens/s at batch 1. Then use it to predict how much faster int4 weights could
# make Llama-3.1-8B on an L4.
# ```

# %%
def my_decode_ceiling(param_bytes_read_per_token, bandwidth_bytes_per_s):
    ...  # your code here


ch01.check_decode_ceiling(my_decode_ceiling)

# %% [markdown]
# ```{solution-start} ch01-ceiling
# :class: dropdown
# ```
# Each token needs its bytes streamed once, so the time per token is at least bytes ÷ bandwidth:

# %% [solution]
def decode_ceiling_solution(param_bytes_read_per_token, bandwidth_bytes_per_s):
    return bandwidth_bytes_per_s / param_bytes_read_per_token


ch01.check_decode_ceiling(decode_ceiling_solution)
l4 = get_hardware("L4").memory_bandwidth
bf16, int4 = (decode_ceiling_solution(s8.decode_bytes_per_token(d), l4) for d in ("bf16", "int4"))
print(f"L4: bf16 ≤ {bf16:.1f} tokens/s, int4 ≤ {int4:.1f} tokens/s ({int4 / bf16:.1f}× faster at best)")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch01-ridge
#
# Write `my_memory_bound_batch(spec, hardware, dtype, context_len)`: the smallest batch at
# which decode stops being memory-bound, i.e. its arithmetic intensity reaches
# `hardware.ridge_point(dtype)`. Useful: `spec.decode_intensity(dtype, batch, context_len)`.
# Why does a long context make the answer grow — or not exist at all?
# ```

# %%
def my_memory_bound_batch(spec, hardware, dtype, context_len):
    ...  # your code here


ch01.check_memory_bound_batch(my_memory_bound_batch)

# %% [markdown]
# ```{solution-start} ch01-ridge
# :class: dropdown
# ```
# Intensity grows with the batch, so search upwards. With a context, each sequence adds its own
# KV-cache bytes, so intensity tends to $F/K$ (FLOPs per token over KV bytes per sequence) and
# may never reach the ridge.

# %% [solution]
def memory_bound_batch_solution(spec, hardware, dtype, context_len):
    batch = 1
    while spec.decode_intensity(dtype, batch, context_len) < hardware.ridge_point(dtype):
        batch += 1
    return batch


ch01.check_memory_bound_batch(memory_bound_batch_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ## Summary
#
# - Transformer costs grow along four dimensions — model size $N$, sequence length $S$, batch
#   $B$ and precision $p$ — and are judged by five metrics: latency, throughput, memory, cost
#   and quality.
# - Parameters, weight memory, KV cache and FLOPs follow exactly from the config
#   (`tutx.scaling.ModelSpec`); we checked them against `transformers` and against the tiny
#   model's real tensors.
# - Generating text is memory-bound: one decode step reads every weight to produce one token
#   per sequence. The decode ceiling $W / \text{bytes per step}$ bounds single-user speed;
#   batching raises throughput until the ridge point or until the KV cache fills memory.
# - The rest of the course attacks these limits: fewer bytes per weight (Chapter 3), fewer bytes
#   of KV cache and fast attention kernels (Chapter 4), better use of the hardware (Chapter 5),
#   and engines that keep batches full (Chapters 6 and 7).
#
# ## References
#
# The roofline model {cite}`williams2009roofline`; scaling laws and the $6N$ rule
# {cite}`kaplan2020scaling,hoffmann2022training`; activation memory
# {cite}`korthikanti2022reducing`; inference arithmetic {cite}`pope2022efficiently`;
# multi-query and grouped-query attention {cite}`shazeer2019fast,ainslie2023gqa`; the models
# {cite}`radford2019language,devlin2019bert,touvron2023llama2,dubey2024llama3`.
