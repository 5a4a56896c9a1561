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
import os
import time
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text progress bars

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Markdown, display
from transformers.generation.streamers import BaseStreamer

import tutx
from tutx.bench import show_table
from tutx.configs import get_config, get_spec
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
# \underbrace{2N + 2 L S d_{\text{attn}}}_{\text{FLOPs per token}}
# \qquad
# \underbrace{\frac{\text{memory bandwidth}}{\text{bytes read per token}}}_{\text{decode ceiling}}
# $$
#
# where $h_{kv}$ is the number of key/value heads, $d$ the width of one head and
# $d_{\text{attn}}$ the width of all query heads together (heads × $d$). Section 3 derives the
# FLOPs formula and says exactly which parameters $N$ counts.
#
# Whether a deployment is good enough is judged by five **metrics**:
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
# model is, on average, as unsure as if it picked uniformly among 30 tokens. Every chapter
# compares models with **one protocol**, `tutx.models.heldout_perplexity`: the first 40,000
# characters of plays the model never saw, cut into windows of 256 tokens with stride 256 (each
# token is scored once, with the context of its window). A different protocol gives a different
# number for the same model — the model card's figure uses longer windows over the whole
# held-out text — so only numbers from the same protocol are compared.

# %%
from tutx.models import HELDOUT_CHARS, HELDOUT_WINDOW

heldout = tutx.models.heldout_text()
ppl = tutx.models.heldout_perplexity(model, tokenizer)
n_scored = len(tokenizer(heldout[:HELDOUT_CHARS], add_special_tokens=False)["input_ids"])
print(f"course protocol: first {HELDOUT_CHARS:,} of {len(heldout):,} held-out characters = {n_scored:,} tokens, "
      f"windows of {HELDOUT_WINDOW}, stride {HELDOUT_WINDOW}")
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
# We time the two phases separately: a small *streamer* that `generate` calls once with the
# prompt and then once per new token records a clock, so prefill and each decode step get their
# own times. All runs use the same, fixed number of CPU threads (more threads would change the
# speed of each run, not the lesson). The timings depend on the machine, so nbval does not
# compare them; the sentences that quote them are printed by the cells.

# %%
# NBVAL_IGNORE_OUTPUT
# (timings depend on the machine)
THREADS = min(2, os.cpu_count() or 1)  # fixed for every run below
PROMPT_LEN, NEW_TOKENS = 128, 32
prompt_ids = tokenizer(heldout, return_tensors="pt").input_ids[:, :PROMPT_LEN].to(device)


class StepClock(BaseStreamer):
    """`generate` calls put() with the prompt, then once per generated token: one timestamp each."""

    def __init__(self):
        self.times = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def time_generation(batch_size, repeat=3):
    """Median prefill time (prompt -> first token) and median time of one decode step."""
    prefill, step = [], []
    for _ in range(repeat):
        clock = StepClock()
        with torch.inference_mode():
            model.generate(prompt_ids.expand(batch_size, -1), max_new_tokens=NEW_TOKENS + 1,
                           min_new_tokens=NEW_TOKENS + 1, do_sample=False, pad_token_id=tokenizer.pad_token_id,
                           eos_token_id=None, streamer=clock)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = clock.times  # [start, first token, token 2, ..., token NEW_TOKENS + 1]
        prefill.append(t[1] - t[0])
        step.append((t[-1] - t[1]) / NEW_TOKENS)
    return float(np.median(prefill)), float(np.median(step))


threads_before = torch.get_num_threads()
torch.set_num_threads(THREADS)
try:
    time_generation(1, repeat=1)  # warm-up
    rows = []
    for b in (1, 4, 16, 64):
        prefill_s, step_s = time_generation(b)
        rows.append({"batch": b, "prefill (ms)": 1e3 * prefill_s, "ms per decode step": 1e3 * step_s,
                     "decode tokens/s": b / step_s})
finally:
    torch.set_num_threads(threads_before)
ttft, tpot = rows[0]["prefill (ms)"], rows[0]["ms per decode step"]
print(f"device: {tutx.device.name()}, timed with {THREADS} thread(s)")
print(f"time to first token ({PROMPT_LEN}-token prompt, batch 1): {ttft:.1f} ms")
print(f"time per output token (batch 1): {tpot:.2f} ms")
show_table(rows)

# %%
# NBVAL_IGNORE_OUTPUT
# (plots measured timings)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
bs = [r["batch"] for r in rows]
ax[0].plot(bs, [r["decode tokens/s"] for r in rows], "o-")
ax[0].set(xscale="log", yscale="log", xlabel="batch size", ylabel="generated tokens/s (decode)",
          title="decode throughput")
ax[1].plot(bs, [r["ms per decode step"] for r in rows], "o-", color="C1", label="one decode step")
ax[1].plot(bs, [r["prefill (ms)"] for r in rows], "s--", color="C2", label=f"prefill ({PROMPT_LEN}-token prompts)")
ax[1].set(xscale="log", yscale="log", xlabel="batch size", ylabel="ms", title="latency of each phase")
ax[1].legend(fontsize=8)
for a in ax:
    a.set_xticks(bs, [str(b) for b in bs])
fig.suptitle(f"Tiny LM, greedy decode, measured on {tutx.device.name()} with {THREADS} thread(s)", fontsize=9)
plt.tight_layout()
plt.show()

# %%
# NBVAL_IGNORE_OUTPUT
# (the sentence quotes the timings above)
first, last = rows[0], rows[-1]
gain = last["decode tokens/s"] / first["decode tokens/s"]
slower = last["ms per decode step"] / first["ms per decode step"]
display(Markdown(
    f"Here, going from batch {first['batch']} to batch {last['batch']} made one decode step "
    f"**{slower:.1f}× slower** and decode throughput **{gain:.1f}× higher**: "
    + ("the batch shares most of the cost of a step." if gain > 2 else
       "on this machine the batch shares little of the cost of a step (the CPU's compute, not its memory, is the "
       "limit for a model this small).")
))

# %% [markdown]
# A decode step has costs that do not depend on the batch — reading every weight, launching
# every operation — and costs that do — the multiply-adds and the KV-cache reads of each
# sequence. Where the fixed costs dominate, a batch of $B$ sequences costs little more than
# one, and throughput grows with $B$; once the per-sequence work dominates, it stops growing.
# Prefill is different again: all prompt tokens are processed at once, so it is compute work
# from the start and grows with batch × prompt length. Hold on to these observations — the
# roofline below explains them for a GPU.
#
# Cost follows from throughput and the price of the machine. The price is an **assumption**
# (change it to your own): a small 2-vCPU cloud VM rents for roughly \$0.10 an hour.

# %%
# NBVAL_IGNORE_OUTPUT
# (derived from the timings above)
CPU_DOLLARS_PER_HOUR = 0.10  # assumption: a 2-vCPU cloud VM; put your own price here
best = max(rows, key=lambda r: r["decode tokens/s"])
show_table([
    {"metric": "latency: time to first token", "value": f"{ttft:.1f} ms"},
    {"metric": "latency: time per output token (batch 1)", "value": f"{tpot:.2f} ms"},
    {"metric": f"throughput (decode, batch {best['batch']})", "value": f"{best['decode tokens/s']:,.0f} tokens/s"},
    {"metric": "memory: weights fp32", "value": f"{weights_measured / 2**20:.1f} MiB"},
    {"metric": "memory: KV cache per token fp32", "value": f"{spec.kv_cache_bytes_per_token('fp32') / 1024:.1f} KiB"},
    {"metric": f"cost at ${CPU_DOLLARS_PER_HOUR:.2f}/h (batch {best['batch']})",
     "value": f"${cost_per_million_tokens(best['decode tokens/s'], CPU_DOLLARS_PER_HOUR):.3f} per M tokens"},
    {"metric": "quality: held-out perplexity (course protocol)", "value": f"{ppl:.2f}"},
])

# %% [markdown]
# ## 3. From the tiny model to real ones
#
# The same formulas size models we cannot run here. `tutx.configs` holds the real configs of
# well-known models (copied from their `config.json`, so nothing is downloaded); the tests build
# each of them — and small configs of some twenty model families, dense and mixture-of-experts —
# with `transformers` on the `meta` device and check that the parameter counts agree exactly.
# Paste the config of the model you deploy into `ModelSpec.from_config`: a family without a
# formula is counted on the meta device instead, and the spec says so.
#
# ### FLOPs per token
#
# A forward pass uses every weight once per token in a multiply-add: 2 FLOPs per weight, so
# $2N$ FLOPs, where **$N$ counts the non-embedding parameters** — every matrix of the layers, but
# not the token and position tables (a lookup, no arithmetic) and, following Kaplan et al.
# {cite}`kaplan2020scaling`, not the LM head (its $2 \cdot \text{vocab} \cdot h$ FLOPs are left
# out). Attention adds work that weights do not account for: for one query and one earlier key,
# the score $q \cdot k$ costs $2 d_{\text{attn}}$ FLOPs and adding $v$ weighted by it another
# $2 d_{\text{attn}}$ — **4** $d_{\text{attn}}$ per (query, key) pair and layer, with
# $d_{\text{attn}}$ = heads × head width. A causal token at position $t$ attends to $t$ keys, on
# average $S/2$ over a sequence of $S$ tokens, so the attention term per token is
# $4 \, d_{\text{attn}} \cdot L \cdot S/2 = 2 L S d_{\text{attn}}$ — the **2** in
# $2N + 2 L S d_{\text{attn}}$. (A decode step at context $S$ attends to all $S$ keys: there the
# factor is 4.) For a **mixture of experts**, $N$ counts only the experts a token is routed to.

# %%
tutx.show(ModelSpec.flops_per_token)

# %%
names = ["GPT-2", "BERT-base", "Llama-2-7B", "Mistral-7B", "Llama-3.1-8B", "Llama-2-70B", "Llama-3.1-70B",
         "Llama-3.1-405B", "Mixtral-8x7B", "Qwen3-30B-A3B"]
rows = []
for name in names:
    s = get_spec(name)
    rows.append({
        "model": name,
        "params (B)": s.n_params / 1e9,
        "active params (B)": s.active_params / 1e9,
        "weights bf16 (GiB)": s.weight_bytes("bf16") / GiB,
        "KV / token bf16 (KiB)": s.kv_cache_bytes_per_token("bf16") / 1024 if s.decoder else "— (encoder)",
        "KV for 8k tokens (GiB)": s.kv_cache_bytes(1, 8192, "bf16") / GiB if s.decoder else "—",
        "GFLOPs / token (S=4k)": s.flops_per_token(4096) / 1e9,
    })
show_table(rows)

# %%
kv2, kv3 = (get_spec(n).kv_cache_bytes_per_token("bf16") / 1024 for n in ("Llama-2-7B", "Llama-3.1-8B"))
assert (kv2, kv3) == (512, 128)
assert (get_spec("Llama-2-7B").num_kv_heads, get_spec("Llama-3.1-8B").num_kv_heads) == (32, 8)
assert get_spec("Llama-3.1-70B").weight_bytes("bf16") > get_hardware("H100-SXM").memory_bytes
mix = get_spec("Mixtral-8x7B")
print(f"Mixtral-8x7B: {mix.n_params / 1e9:.1f}B parameters in memory, {mix.active_params / 1e9:.1f}B used per token "
      f"({mix.experts_per_token} of {mix.num_experts} experts): the memory of a "
      f"{mix.n_params / 1e9:.0f}B model, the FLOPs of a {mix.active_params / 1e9:.0f}B one")

# %% [markdown]
# A few things stand out. The weights of a 70B model do not fit one 80 GB GPU in bf16 (the
# assert above checks it) — that is what quantization (Chapter 3) and sharding (Chapter 6) are
# for. Grouped-query attention matters: Llama-2-7B keeps 32 KV heads and needs **512 KiB** of
# cache per token, Llama-3.1-8B keeps 8 and needs **128 KiB** — four times more users or four
# times longer contexts in the same memory (Chapter 4). And a mixture of experts decouples
# memory from compute, as the line printed above says: all experts sit in memory, a token uses
# a few.
#
# ### Memory versus sequence length and batch
#
# For serving, memory is weights (fixed) + KV cache (grows with $S \times B$) + activations
# (the working set of one layer's forward pass). Let's plot each for Llama-3.1-8B in bf16.

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
    # Lines, not a stack: on a log axis the bands of a stackplot do not show the parts' sizes.
    ax.plot(xs, w + kv + act, "k-", lw=2.5, label="total")
    for part, y, style in [("weights", w, "C0--"), ("KV cache", kv, "C1o-"),
                           ("activations (eager attention)", act, "C2s-")]:
        ax.plot(xs, y, style, ms=3, label=part)
    for gb, hw in [(80, "H100 80 GB"), (24, "L4 24 GB"), (16, "T4 16 GB")]:
        ax.axhline(gb * 1e9 / GiB, ls=":", lw=1, color="gray")
        ax.text(xs[0], gb * 1e9 / GiB * 1.05, hw, fontsize=8, color="gray")
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
# %%
S = 131072
scores = s8.num_heads * S * S * 2  # one layer's S x S scores, every head, bf16
print(f"the S x S attention scores of one layer at S = {S:,}: {s8.num_heads} heads x {S:,}² x 2 bytes "
      f"= {scores / 2**40:.1f} TiB (and as much again for the probabilities)")

# %% [markdown]
# At long contexts the activations of *eager* attention explode: the $S \times S$ score matrix
# of one layer at 128k tokens alone is the size printed above. FlashAttention (Chapter 4) never
# materialises it. At large batches the KV cache dominates — which is why paged KV caches and
# continuous batching (Chapter 6) exist.
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
# the $Np$ bytes of weights once: $I \approx 2B/p$. In bf16 ($p = 2$), $I \approx B$. Compare
# that with the ridge points in the table below: single-user decoding uses a tiny fraction of a
# GPU's FLOP/s, whatever kernel you write {cite}`pope2022efficiently` (the cell after the table
# prints the fraction for an H100).

# %%
show_table([{"hardware": hw.name, "bf16/fp16 TFLOP/s": hw.peak("bf16" if "bf16" in hw.peak_flops else "fp16") / 1e12,
             "memory GB/s": hw.memory_bandwidth / 1e9, "memory GB": hw.memory_bytes / 1e9,
             "ridge (FLOP/byte)": hw.ridge_point("bf16" if "bf16" in hw.peak_flops else "fp16")}
            for hw in HARDWARE.values()])
print("sources:")
for hw in HARDWARE.values():
    print(f"  {hw.name}: {hw.source}")

# %%
h100 = get_hardware("H100-SXM")
I1 = s8.decode_intensity("bf16", batch=1)
print(f"H100 ridge point (bf16): {h100.ridge_point('bf16'):.0f} FLOP/byte; Llama-3.1-8B decode at batch 1: "
      f"I = {I1:.2f} FLOP/byte, so at most {I1 / h100.ridge_point('bf16'):.2%} of the peak FLOP/s")

# %%
fig, ax = plt.subplots(figsize=(8, 5))
intensity = np.logspace(-1, 4, 300)
for i, name in enumerate(["T4", "L4", "A100-80GB", "H100-SXM", "H200", "laptop-cpu"]):
    hw = get_hardware(name)
    dt = "bf16" if "bf16" in hw.peak_flops else "fp16"
    ax.plot(intensity, hw.attainable_flops(intensity, dt) / 1e12, color=f"C{i}", label=f"{hw.name} ({dt})")
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
# For Llama-3.1-8B in bf16 on an H100 SXM at batch 1 that gives the bound printed below — one
# no software can beat, and a target good kernels get close to.

# %%
tutx.show(decode_ceiling)

# %%
bound = decode_ceiling(s8, "H100-SXM", "bf16")
assert round(bound) == 223
print(f"Llama-3.1-8B, bf16, batch 1, H100 SXM ({h100.memory_bandwidth / 1e12:.2f} TB/s): "
      f"{s8.decode_bytes_per_step('bf16') / 1e9:.2f} GB per step -> at most {bound:.0f} tokens/s")

# %%
for hw in ("T4", "L4", "A100-80GB", "H100-SXM", "H200"):
    half = "bf16" if "bf16" in get_hardware(hw).peak_flops else "fp16"  # a T4 has no bf16
    print(f"{hw:>10}: Llama-3.1-8B {half} batch 1 ≤ {decode_ceiling(s8, hw, half):6.1f} tokens/s;"
          f"  int4 weights ≤ {decode_ceiling(s8, hw, 'int4', compute_dtype='fp16'):6.1f} tokens/s")

# %% [markdown]
# A larger batch raises the ceiling — until the KV cache no longer fits next to the weights.
# Each curve below stops at the largest batch whose weights and 1k-token caches fit the card's
# memory (activations and the runtime's own memory would stop it a little earlier still).

# %%
H100_DOLLARS_PER_HOUR = 3.00  # assumption: an on-demand H100 in the cloud; put your own price here
CONTEXT = 1024
bs = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024])


def max_batch_that_fits(spec, hw, context, dtype="bf16"):
    """Sequences whose KV cache fits in the card's memory next to the weights."""
    free = get_hardware(hw).memory_bytes - spec.weight_bytes(dtype)
    return int(free // spec.kv_cache_bytes(1, context, dtype))


fig, ax = plt.subplots(1, 2, figsize=(11, 4))
for i, name in enumerate(["L4", "A100-80GB", "H100-SXM", "H200"]):
    fits = max_batch_that_fits(s8, name, CONTEXT)
    b_ok = np.array(sorted({int(b) for b in bs if b <= fits} | {fits}))  # ends exactly where memory is full
    tps = np.array([decode_ceiling(s8, name, "bf16", batch=int(b), context_len=CONTEXT) for b in b_ok])
    ax[0].plot(b_ok, tps, "o-", ms=3, color=f"C{i + 1}", label=f"{name} (fits batch ≤ {fits})")
    ax[0].plot(b_ok[-1], tps[-1], "x", ms=9, mew=2, color=f"C{i + 1}")
    if name == "H100-SXM":
        ax[1].plot(b_ok, [cost_per_million_tokens(t, H100_DOLLARS_PER_HOUR) for t in tps], "o-", ms=3,
                   color=f"C{i + 1}")
ax[0].set(xscale="log", yscale="log", xlabel="batch size", ylabel="tokens/s (upper bound)",
          title=f"Decode ceiling, Llama-3.1-8B bf16, {CONTEXT // 1024}k context (x: memory full)")
ax[0].legend(fontsize=8)
ax[1].set(xscale="log", yscale="log", xlabel="batch size", ylabel="$ per million tokens (lower bound)",
          title=f"Cost on an H100 at ${H100_DOLLARS_PER_HOUR:.2f}/h (assumed)")
plt.tight_layout()
plt.show()
for name in ["L4", "A100-80GB", "H100-SXM", "H200"]:
    print(f"{name:>10}: weights + {CONTEXT}-token KV caches fit up to batch {max_batch_that_fits(s8, name, CONTEXT)}")

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
# ```{exercise}
# :label: ch01-param-count
#
# **Build it: a parameter counter.** Write `my_param_count(config)` that returns the exact number
# of parameters of a Llama-style model from its `config.json` (a dict): token embeddings; per
# layer the q, k, v and o projections (with grouped-query attention, k and v have
# `num_key_value_heads` heads of `head_dim` channels; biases on all four when
# `attention_bias` is true), the gated MLP (gate, up and down) and two RMSNorms (a weight of
# `hidden_size` each); a final RMSNorm; and an LM head unless `tie_word_embeddings` ties it to
# the embeddings. A missing `num_key_value_heads` means one KV head per query head; a missing
# `head_dim` means `hidden_size // num_attention_heads`. The check tries real models, then
# configurations it draws at random — ones you have not seen.
# ```

# %%
def my_param_count(config):
    ...  # your code here


ch01.check_param_count(my_param_count)

# %% [markdown]
# ```{solution-start} ch01-param-count
# :class: dropdown
# ```
# Count layer by layer; the defaults for the two optional fields are where most mistakes hide.

# %% [solution]
def param_count_solution(config):
    h, L, heads = config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    d = config.get("head_dim") or h // heads
    q, kv = heads * d, kv_heads * d
    attention = h * q + 2 * h * kv + q * h + (q + 2 * kv + h if config.get("attention_bias") else 0)
    layer = attention + 3 * h * config["intermediate_size"] + 2 * h
    embeddings = config["vocab_size"] * h
    head = 0 if config.get("tie_word_embeddings") else embeddings
    return embeddings + L * layer + h + head


ch01.check_param_count(param_count_solution)
print(f"Llama-3.1-8B: {param_count_solution(get_config('Llama-3.1-8B')):,} parameters")

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
#   (`tutx.scaling.ModelSpec`), for dense models and mixtures of experts (memory from all
#   experts, FLOPs from the routed ones); we checked them against `transformers` and against the
#   tiny model's real tensors.
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
