# %% [markdown]
# # Chapter 4 — Attention Optimization
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tutx-course/scaling-and-optimization/blob/main/notebooks/04_attention_optimization.ipynb)
#
# Attention is where long sequences die. Written the obvious way it builds an $S \times S$
# matrix of scores for every head, so memory grows with the *square* of the context and the GPU
# spends its time moving that matrix in and out of memory rather than computing. This chapter
# builds the fixes that every serving stack now relies on, in our own code:
#
# **You will learn to**
#
# - measure why naive attention is memory-bound and $O(S^2)$ in memory;
# - derive the **online softmax** and **tiling** step by step, and check a blocked PyTorch version
#   against the exact result — the idea behind FlashAttention;
# - read a real FlashAttention-2-style **Triton kernel** (forward and backward, GQA, causal) and
#   its measured speed against PyTorch's own kernels on an H200;
# - make attention **sparse** without a dense mask: a sliding window plus global tokens whose
#   kernel only visits the blocks it needs;
# - shrink the **KV cache** with multi-query and grouped-query attention, and decode one token at
#   a time against it with a split-K **flash-decoding** kernel.

# %%
# Set-up: on Colab, install tutx first (elsewhere it is already installed by `make lab`). The
# held-out text and the tiny model ship with tutx: this chapter needs nothing else.
import sys

if "google.colab" in sys.modules:
    %pip install -q "tutx @ git+https://github.com/tutx-course/scaling-and-optimization"

# %%
import math
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text progress bars

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import tutx
from tutx.bench import latest, peak_memory, show_table
from tutx.configs import get_spec
from tutx.hardware import get_hardware
from tutx.kernels.attention import flash_attention, flash_attention_ref
from tutx.kernels.masks import sliding_window_mask
from tutx.kernels.sliding_window import sliding_window_attention
from tutx.scaling import kv_cache_bytes

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
MiB, GiB, TiB = 2**20, 2**30, 2**40
device = tutx.device.get()
dtype = tutx.device.kernel_dtype(device)  # what the kernels take here: bf16/fp16 on a GPU, fp32 on a CPU
tol = 1e-5 if dtype == torch.float32 else 3e-2  # agreement to expect between two exact attentions

# %% [markdown]
# ## 1. Why naive attention is slow and hungry
#
# For queries $Q$, keys $K$ and values $V$ of shape $[B, H, S, d]$, attention is
#
# $$
# O = \operatorname{softmax}\!\left(\frac{Q K^\top}{\sqrt d}\right) V .
# $$
#
# The textbook implementation materialises the scores $QK^\top$ — $B \cdot H \cdot S^2$ numbers —
# then the softmax of them (another $S^2$), then multiplies by $V$. The two matrix products
# do $4BHS^2d$ FLOPs, but the scores are written to memory and read back several times: each
# score is used for only $O(d)$ FLOPs, far below the FLOPs per byte a modern GPU needs to be
# compute-bound (Chapter 1's roofline; its *ridge point*):

# %%
h100 = get_hardware("H100-SXM")
print(f"{h100.name}: {h100.ridge_point('bf16'):.0f} bf16 FLOPs per byte of memory traffic to be compute-bound")

# %% [markdown]
# And the memory grows as $S^2$. Let us measure it on this machine: peak memory of one attention
# call, naive versus PyTorch's fused `scaled_dot_product_attention` (SDPA), for growing $S$.

# %%
def naive_attention(q, k, v):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # [B, H, S, S]  <- the problem
    return torch.softmax(scores, dim=-1) @ v  # [B, H, S, d]


B, H, D = 1, 8, 64
rows = []
for S in (512, 1024, 2048, 4096):
    q, k, v = (torch.randn(B, H, S, D, device=device) for _ in range(3))  # [B, H, S, D]
    _, naive_bytes = peak_memory(lambda: naive_attention(q, k, v))
    _, sdpa_bytes = peak_memory(lambda: F.scaled_dot_product_attention(q, k, v))
    rows.append({"S": S, "scores matrix (MiB)": B * H * S * S * 4 / MiB,
                 "naive peak (MiB)": naive_bytes / MiB, "SDPA peak (MiB)": sdpa_bytes / MiB})
    del q, k, v

# %%
# NBVAL_IGNORE_OUTPUT
print(f"measured on {tutx.device.name()}")
show_table(rows, digits=1)
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot([r["S"] for r in rows], [r["naive peak (MiB)"] for r in rows], "o-", label="naive (measured)")
ax.plot([r["S"] for r in rows], [r["SDPA peak (MiB)"] for r in rows], "s-", label="fused SDPA (measured)")
ax.plot([r["S"] for r in rows], [r["scores matrix (MiB)"] for r in rows], "k--", label=r"one $S\times S$ fp32 matrix")
ax.set(xscale="log", yscale="log", xlabel="sequence length S", ylabel="peak extra memory (MiB)",
       title=f"Attention memory, B=1, H=8, d=64 ({tutx.device.name()})")
ax.legend()
plt.show()

# %% [markdown]
# The naive version needs a few copies of the $S \times S$ matrix (scores, softmax, and the
# temporaries in between): quadrupling when $S$ doubles. The fused kernel never stores it and
# needs only about the size of its output. At a long context the naive scores alone outgrow any GPU:

# %%
S_long, heads_long = 128 * 1024, 32  # one layer of a 32-head model (Llama-2-7B) at a 128k context
scores_bytes = heads_long * S_long**2 * 2  # bf16
print(f"S = {S_long:,}, {heads_long} heads, bf16: the scores of ONE layer take {scores_bytes / TiB:.2f} TiB")

# %% [markdown]
# The rest of this section shows how the fused kernel avoids the matrix without changing the result.
#
# ## 2. Tiling and the online softmax
#
# The obstacle is the softmax: each output row needs $\max_j s_j$ and $\sum_j e^{s_j - \max}$
# over *all* keys before any value can be weighted. The **online softmax**
# {cite}`milakov2018online` removes it. Process the keys in blocks and keep, for each query row,
# a running maximum $m$, a running sum $\ell$ and an unnormalised output $\mathbf a$. When a new
# block of scores $\mathbf s$ (and its values $V_b$) arrives:
#
# $$
# m' = \max(m, \max_j s_j), \qquad
# \alpha = e^{m - m'}, \qquad
# p_j = e^{s_j - m'},
# $$
# $$
# \ell' = \alpha\,\ell + \sum_j p_j, \qquad
# \mathbf a' = \alpha\,\mathbf a + \mathbf p\, V_b .
# $$
#
# The factor $\alpha$ rescales everything summed under the old maximum, so after the last block
# $O = \mathbf a / \ell$ exactly — the same numbers as the two-pass softmax, up to rounding.
# Only a block of scores exists at any time: memory is $O(S)$, not $O(S^2)$
# {cite}`rabe2021self`. Tiling the queries too gives FlashAttention {cite}`dao2022flashattention`:
# each program loads one block of queries into fast on-chip memory and streams all key/value
# blocks past it.
#
# Here is that algorithm in plain PyTorch, blocks and all:

# %%
def blocked_attention(q, k, v, block_m=64, block_n=64):
    """FlashAttention's forward pass, one query block and one key block at a time (no S×S matrix)."""
    S, d = q.shape[-2], q.shape[-1]
    out = torch.empty_like(q)
    for i in range(0, S, block_m):
        qi = q[..., i:i + block_m, :] / math.sqrt(d)  # [B, H, bm, d] stays "on chip"
        m = torch.full(qi.shape[:-1], -torch.inf)  # running max        [B, H, bm]
        l = torch.zeros(qi.shape[:-1])  # running sum of exp             [B, H, bm]
        acc = torch.zeros_like(qi)  # unnormalised output                [B, H, bm, d]
        for j in range(0, S, block_n):
            s = qi @ k[..., j:j + block_n, :].transpose(-2, -1)  # [B, H, bm, bn] one block of scores
            m_new = torch.maximum(m, s.amax(-1))
            alpha = torch.exp(m - m_new)
            p = torch.exp(s - m_new[..., None])
            l = alpha * l + p.sum(-1)
            acc = alpha[..., None] * acc + p @ v[..., j:j + block_n, :]
            m = m_new
        out[..., i:i + block_m, :] = acc / l[..., None]
    return out


q, k, v = (torch.randn(2, 4, 300, 64) for _ in range(3))  # 300: the last blocks are partial; fp32 on the CPU
exact = naive_attention(q, k, v)
blocked = blocked_attention(q, k, v)
torch.testing.assert_close(blocked, exact, rtol=1e-5, atol=1e-5)
print("blocked attention == exact attention, to 1e-5 (float32 rounding)")

# %% [markdown]
# Same answer to float32 rounding, and the largest temporary is one $64 \times 64$ block of
# scores per head. (One case this loop does not meet: a row whose scores so far are *all*
# masked, $m = -\infty$, where $e^{m - m'}$ becomes $e^{-\infty + \infty}$ = NaN. Sliding-window
# kernels meet such rows; the first exercise makes the update safe for them.) FlashAttention-2 {cite}`dao2023flashattention2` adds three refinements that
# our kernel also uses: the outer loop runs over query blocks so each program writes its output
# once; the division by $\ell$ happens once at the end; and for causal attention the key loop is
# split into blocks that are fully visible (no mask needed) and the diagonal blocks (masked).
# The backward pass recomputes the scores block by block from the saved log-sum-exp
# $m + \log \ell$ instead of storing the attention matrix.
#
# ## 3. The Triton kernel
#
# `tutx.kernels.attention` is written in Triton {cite}`tillet2019triton`: Python that compiles to
# GPU code, where each *program* handles a tile and `tl.dot` runs on the tensor cores. The inner
# loop is the online softmax from above, in base 2 (`exp2`, with $\log_2 e / \sqrt d$ folded
# into one scale), over key blocks `[lo, hi)`. The base-2 trick and the split of the key loop
# into an unmasked and a masked stage follow Triton's
# [fused-attention tutorial](https://triton-lang.org/main/getting-started/tutorials/06-fused-attention.html):

# %%
tutx.show(tutx.kernels.attention.online_softmax_stage)

# %% [markdown]
# The kernel itself loads one query block, runs the unmasked stage over the key blocks every row
# sees in full, then the masked stage over the diagonal, and writes the output and the
# log-sum-exp (for the backward pass):

# %%
tutx.show(tutx.kernels.attention.flash_attention_kernel)

# %% [markdown]
# The opening load, shared with the sliding-window kernel of Section 4, is where grouped-query
# attention happens: query head $h$ simply reads key/value head $h / (H_q / H_{kv})$ — no copy
# of $K$ and $V$ is ever made:

# %%
from tutx.kernels.forward_common import load_query_tile

tutx.show(load_query_tile)

# %% [markdown]
# `flash_attention(q, k, v, causal=...)` is the public wrapper: it checks its inputs, launches
# the kernel on CUDA (fp16, or bf16 from sm_80 on), and on a CPU runs the plain-PyTorch reference
# `flash_attention_ref` — the test suite runs the kernel itself on CPU through Triton's
# interpreter (`TRITON_INTERPRET=1`) against that reference, forward and backward, for odd
# lengths, several GQA ratios, causal and not. Gradients flow through a `torch.autograd.Function`.
# The inputs are built in the dtype the kernels take on this device (`tutx.device.kernel_dtype`):

# %%
q = torch.randn(1, 8, 200, 64, device=device, dtype=dtype, requires_grad=True)  # [B, Hq, S, D]
k = torch.randn(1, 2, 200, 64, device=device, dtype=dtype, requires_grad=True)  # [B, Hkv, S, D]: 4 queries per KV head
v = torch.randn(1, 2, 200, 64, device=device, dtype=dtype, requires_grad=True)
out = flash_attention(q, k, v, causal=True)
out.sum().backward()
ref = F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), is_causal=True)
torch.testing.assert_close(out, ref, rtol=tol, atol=tol)
print(f"output {tuple(out.shape)} in {dtype} == SDPA's (to {tol:g}); dK {tuple(k.grad.shape)}: one gradient per KV head")

# %% [markdown]
# ### Measured speed on a GPU
#
# The GPU check (`scripts/gpu_check.py`) times our kernel against SDPA restricted to its
# FlashAttention-2 backend and to its cuDNN backend, in the same process, in bf16 with
# batch × sequence = 16k tokens and hidden size 2048 (the FlashAttention papers' convention).
# FLOPs are $4BHS^2d$ for the forward (half when causal) and 3.5× that for forward + backward.
# The table is read from the results file, which names the GPU:

# %%
dense = latest("attention")
if dense is None:
    print("No GPU results recorded yet: run `python scripts/gpu_check.py` on a CUDA machine.")
else:
    rows = [r for r in dense.rows if r.get("op", "").startswith("attention f") and "baseline_ms" in r]
    table = {}
    for r in rows:
        key = (r["op"], r["shape"], "causal" if r["causal"] else "full")
        table.setdefault(key, {"op": r["op"], "shape": r["shape"], "mask": key[2], "ours TFLOP/s": r["tflops"]})
        table[key][f"{r['baseline']} TFLOP/s"] = r.get("baseline_tflops")
        table[key][f"× vs {r['baseline']}"] = r.get("ratio")
    show_table(list(table.values()), digits=2)
    print(dense.source)

# %%
if dense is not None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
    for ax, op in zip(axes, ("attention fwd", "attention fwd+bwd")):
        sel = [r for r in table.values() if r["op"] == op and "D128" in r["shape"] and r["mask"] == "causal"]
        labels = [r["shape"].split()[2] for r in sel]
        x = np.arange(len(sel))
        for i, (col, name) in enumerate([("ours TFLOP/s", "tutx Triton"), ("sdpa_flash TFLOP/s", "SDPA FlashAttention-2"),
                                         ("sdpa_cudnn TFLOP/s", "SDPA cuDNN")]):
            ax.bar(x + (i - 1) * 0.27, [r.get(col) or 0 for r in sel], width=0.27, label=name)
        ax.set(xticks=x, xticklabels=labels, title=f"{op}, causal, head dim 128", xlabel="sequence length")
    axes[0].set_ylabel("TFLOP/s")
    axes[0].legend(fontsize=8)
    fig.suptitle(dense.device, fontsize=10)
    plt.show()

# %% [markdown]
# What the table says, at head dim 128 (the ratios are ours ÷ theirs in TFLOP/s, causal and full):

# %%
def seq_len(row):
    return int(row["shape"].split()[2][1:])  # "B1 H16 S16384 D128" -> 16384


def ratio_range(op, baseline, keep):
    vals = [r["ratio"] for r in dense.rows if r.get("op") == op and r.get("baseline") == baseline
            and "D128" in r["shape"] and keep(seq_len(r))]
    return min(vals), max(vals)


if dense is not None:
    def span(lo_hi):
        lo, hi = (f"{x:.2f}" for x in lo_hi)
        return f"{lo}×" if lo == hi else f"{lo}–{hi}×"

    long, short = (lambda s: s >= 4096), (lambda s: s == 1024)
    fa2_long = {op: ratio_range(op, "sdpa_flash", long) for op in ("attention fwd", "attention fwd+bwd")}
    cudnn_long = {op: ratio_range(op, "sdpa_cudnn", long) for op in ("attention fwd", "attention fwd+bwd")}
    fa2_short = ratio_range("attention fwd", "sdpa_flash", short)
    print(f"{dense.device}, S >= 4k: forward {span(fa2_long['attention fwd'])} and forward+backward "
          f"{span(fa2_long['attention fwd+bwd'])} the speed of SDPA's FlashAttention-2 backend;")
    print(f"  forward {span(cudnn_long['attention fwd'])} and forward+backward "
          f"{span(cudnn_long['attention fwd+bwd'])} the speed of its cuDNN backend;")
    print(f"S = 1k: forward {span(fa2_short)} the speed of FlashAttention-2.")
    assert min(lo for lo, _ in fa2_long.values()) > 1 > max(hi for _, hi in cudnn_long.values())
    assert fa2_short[1] < 1  # the prose below reads these three facts off the table

# %% [markdown]
# So on the H200 our kernel is faster than SDPA's FlashAttention-2 backend at head dim 128 from
# 4k tokens on, and slower than its cuDNN backend, which uses two Hopper features —
# asynchronous warpgroup matrix multiplies (`wgmma`) and the tensor memory accelerator (TMA) —
# that FlashAttention-3 {cite}`shah2024flashattention3` builds its kernels on. At 1k tokens we are behind FlashAttention-2: with
# short sequences there is little work per program to hide its fixed costs.
#
# ## 4. Sparse attention without a dense mask
#
# Many long-context models let each token attend only to a **sliding window** of the last $W$
# tokens, plus a few **global** tokens that everyone sees and that see everyone
# {cite}`child2019generating,beltagy2020longformer`. The pattern is a mask:

# %%
S_demo, W_demo, G_demo = 48, 8, 2
fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
for ax, (title, m) in zip(axes, [
    ("local (causal window 8)", sliding_window_mask(S_demo, S_demo, W_demo)),
    ("local + 2 global tokens", sliding_window_mask(S_demo, S_demo, W_demo, num_global_tokens=G_demo)),
    ("bidirectional window + global", sliding_window_mask(S_demo, S_demo, W_demo, G_demo, causal=False)),
]):
    ax.imshow(m, cmap="Blues", interpolation="nearest")
    ax.set(title=title, xlabel="key position", ylabel="query position")
plt.tight_layout()
plt.show()

# %% [markdown]
# Applying that mask to the dense scores saves nothing: the $S^2$ scores are still computed
# and thrown away. The saving comes from a kernel that **never visits** key blocks outside the
# window. `sliding_window_attention` computes, for each query block, the range of key blocks
# that can hold an allowed pair (plus the global blocks), so its cost grows as $O(S \cdot W)$.
# Cut the dense mask into $64 \times 64$ tiles and count the allowed pairs in each: a tile with
# none is skipped, a full one runs unmasked, a partial one runs masked.

# %%
def tile_fill(mask, block):
    """Fraction of allowed pairs in each ``block x block`` tile of a ``[S, S]`` mask."""
    n = mask.shape[0] // block
    return mask.reshape(n, block, n, block).float().mean(dim=(1, 3))  # [query blocks, key blocks]


S_big, W_big, block = 8192, 1024, 64
fill = tile_fill(sliding_window_mask(S_big, S_big, W_big), block)
visited, full = int((fill > 0).sum()), int((fill == 1).sum())
causal_blocks = (S_big // block) * (S_big // block + 1) // 2
print(f"S={S_big}, W={W_big}, tiles of {block}: {visited:,} key blocks visited ({full:,} of them unmasked) "
      f"vs {causal_blocks:,} for dense causal: {causal_blocks / visited:.1f}× fewer")
print(f"each query block visits at most {int((fill[-1] > 0).sum())} key blocks, whatever S is")
fig, ax = plt.subplots(figsize=(4, 4))
ax.imshow(tile_fill(sliding_window_mask(2048, 2048, 256), block), cmap="Greens", interpolation="nearest")
ax.set(title="fill of each tile, S=2048, W=256", xlabel="key block", ylabel="query block")
plt.show()

# %% [markdown]
# The same kernel recipe as dense attention, with the key loop bounded by the window: the blocks
# wholly inside every row's window run unmasked, the blocks at both edges are masked. The test
# suite counts the blocks each program visits and checks them against this picture. On the CPU
# the wrapper runs the dense-mask reference (`flash_attention_ref` given the mask), so the result
# is the same either way; here it is checked against SDPA given the same mask:

# %%
q, k, v = (torch.randn(1, 4, 512, 64, device=device, dtype=dtype) for _ in range(3))
sw = sliding_window_attention(q, k, v, window=128, num_global_tokens=4)
mask = sliding_window_mask(512, 512, 128, 4, device=device)  # [S, S] bool, True = attend
ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
torch.testing.assert_close(sw, ref, rtol=tol, atol=tol)
print(f"sliding window (W=128, 4 global tokens) == SDPA with the dense mask, in {dtype}, to {tol:g}")

# %% [markdown]
# On a GPU the saving is measured against our own dense causal kernel on the same inputs. The
# *ideal* speed-up is the ratio of attended (query, key) pairs: $S(S+1)/2$ for causal attention,
# $\sum_i \min(i + 1, W) = SW - W(W-1)/2$ for the causal window (checked against the mask here):

# %%
def causal_pairs(s):
    return s * (s + 1) // 2


def window_pairs(s, w):
    return s * w - w * (w - 1) // 2 if w <= s else causal_pairs(s)


assert all(window_pairs(s, w) == int(sliding_window_mask(s, s, w).sum()) for s, w in [(300, 64), (50, 7), (10, 30)])

sparse = latest("sparse_decode")
if sparse is None:
    print("No GPU results recorded yet: run `python scripts/gpu_check.py` on a CUDA machine.")
else:
    sw_rows = []
    for r in (r for r in sparse.rows if r.get("op") == "sliding window fwd"):
        s, w = (int(part[1:]) for part in r["shape"].split() if part[0] in "SW")  # "B1 H16 S16384 D128 W256"
        ideal = causal_pairs(s) / window_pairs(s, w)
        sw_rows.append({"W": w, "shape": r["shape"], "ms": r["ms"], "TFLOP/s": r["tflops"],
                        "dense causal ms": r["baseline_ms"], "× faster than dense": r["ratio"],
                        "ideal ×": ideal, "share of ideal": r["ratio"] / ideal})
    show_table([{k: v for k, v in row.items() if k != "W"} for row in sw_rows], digits=2)
    print(sparse.source)
    for row in sw_rows:
        print(f"W = {row['W']:>4}: {row['× faster than dense']:.1f}× of an ideal {row['ideal ×']:.1f}× "
              f"({row['share of ideal']:.0%}), at {row['TFLOP/s']:.0f} TFLOP/s")
    by_w = {row["W"]: row for row in sw_rows}
    narrow, wide = by_w[min(by_w)], [by_w[w] for w in sorted(by_w)[1:]]
    assert all(r["share of ideal"] > 0.5 for r in wide) and 0.2 < narrow["share of ideal"] < 0.3
    assert narrow["TFLOP/s"] < 0.5 * min(r["TFLOP/s"] for r in wide)  # what the next paragraph says
    print(f"W = {narrow['W']}: a block of 128 queries spans {128 + narrow['W'] - 1} keys, "
          f"{-(-(128 + narrow['W'] - 1) // 64)} blocks of 64; a dense causal row of blocks at S=16k visits "
          f"{16384 // 64 // 2} on average")

# %% [markdown]
# The wider windows get over half of their ideal speed-up, the narrowest only about a quarter of
# it, at less than half the TFLOP/s: a block of queries then spans only a few key blocks, the edge
# ones mostly outside the window, so the fixed cost of each program (loading its queries, writing
# its outputs) is spread over a handful of steps instead of the hundred or so of a dense row. (The measured history, predictions included, is in
# `tutx/results/PERF_NOTES.md`.)
#
# ## 5. Shrinking the KV cache: MQA and GQA
#
# During generation every past token's keys and values are kept — the **KV cache** — so that
# each new token costs one row of attention instead of recomputing the prefix. Its size is
# $2 \cdot L \cdot H_{kv} \cdot d \cdot S \cdot B \cdot p$ bytes (Chapter 1). Multi-query
# attention {cite}`shazeer2019fast` lets all query heads share *one* key/value head; grouped-query
# attention {cite}`ainslie2023gqa` shares each KV head among a group of query heads. Real models:

# %%
rows = []
for name in ("Llama-2-7B", "Llama-3.1-8B", "Mistral-7B", "Llama-3.1-70B"):
    spec = get_spec(name)
    gib = lambda h: kv_cache_bytes(spec.num_layers, h, spec.head_dim, 1, 32768, 2) / GiB  # noqa: E731
    rows.append({"model": name, "query heads": spec.num_heads, "KV heads": spec.num_kv_heads,
                 "KV GiB @32k (as built)": gib(spec.num_kv_heads), "if MHA": gib(spec.num_heads), "if MQA": gib(1)})
show_table(rows, digits=2)
llama3 = next(r for r in rows if r["model"] == "Llama-3.1-8B")
print(f"Llama-3.1-8B keeps {llama3['KV heads']} KV heads for {llama3['query heads']} query heads: "
      f"{llama3['KV GiB @32k (as built)']:.0f} GiB instead of {llama3['if MHA']:.0f} GiB of cache "
      f"for one 32k-token conversation in bf16")

# %% [markdown]
# A quarter of the MHA cache, for a model that was trained that way.
#
# `tutx.attention` implements this for real: `GQAAttention` stores only the $H_{kv}$ heads in a
# `KVCache` of shape $[B, H_{kv}, S_\text{max}, d]$ per layer, runs prefill through
# `flash_attention` and single-token decode through the flash-decoding kernel of the next
# section. `TutxLlama.from_hf` swaps it into a Hugging Face Llama, sharing every other module and
# weight. On the tiny Shakespeare model, greedy generation with our attention and cache matches
# Hugging Face's `generate` token for token:

# %%
from tutx.attention import TutxLlama
from tutx.models import load_tiny

hf, tok = load_tiny()
ours = TutxLlama.from_hf(hf)
print(f"tiny model: {hf.config.num_attention_heads} query heads, {hf.config.num_key_value_heads} KV heads, "
      f"{hf.config.num_hidden_layers} layers")
ids = tok("KING HENRY:\nWhat says the", return_tensors="pt").input_ids
new = 40
hf_out = hf.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=tok.eos_token_id)
our_out = ours.generate(ids, max_new_tokens=new)
print(tok.decode(our_out[0]))
print("identical to HF generate:", torch.equal(hf_out, our_out))

# %% [markdown]
# Now turn the same model into MHA (each KV head repeated for its group of query heads: exactly
# the same function, more cache) and into MQA (the KV heads mean-pooled into one, the conversion
# the GQA paper uses before a short up-training; without it quality drops), and measure the cache
# each one allocates and the perplexity on held-out Shakespeare — the course's one protocol,
# `tutx.models.heldout_perplexity` (the same text and windows in every chapter):

# %%
from tutx.models import heldout_perplexity

threads = torch.get_num_threads()
torch.set_num_threads(1)  # one thread: the same sums in the same order on any machine (digits below are stable)
rows = []
for label, kv_heads in [("MHA", hf.config.num_attention_heads), ("GQA (as trained)", hf.config.num_key_value_heads),
                        ("MQA", 1)]:
    model = TutxLlama.from_hf(load_tiny()[0])
    if kv_heads != model.num_kv_heads:
        model.convert_kv_heads_(kv_heads)
    cache = model.new_cache(batch=8, max_seq_len=512)
    rows.append({"attention": f"{label}, {kv_heads} KV head{'s' if kv_heads > 1 else ''}", "cache for 8 × 512 tokens (KiB)": cache.nbytes / 1024,
                 "held-out perplexity": heldout_perplexity(model.as_hf(), tok)})
torch.set_num_threads(threads)
show_table(rows, digits=2)
mha, gqa, mqa = rows
assert abs(mha["held-out perplexity"] - gqa["held-out perplexity"]) < 1e-3  # MHA from repeated heads: same function
print(f"MHA: {mha['cache for 8 × 512 tokens (KiB)'] / gqa['cache for 8 × 512 tokens (KiB)']:.0f}× the cache for "
      f"the same perplexity; MQA: {mqa['cache for 8 × 512 tokens (KiB)'] / gqa['cache for 8 × 512 tokens (KiB)']:.1f}× "
      f"the cache, perplexity {mqa['held-out perplexity'] / gqa['held-out perplexity'] - 1:+.0%}")

# %% [markdown]
# MHA reproduces the trained model exactly with more cache. MQA shrinks the cache again, but
# mean-pooling heads that were trained separately costs quality — which is why GQA models are
# trained (or up-trained) with their grouping rather than converted after the fact.
#
# ## 6. Decoding: one query against a long cache
#
# At decode time each sequence brings **one** query token. A FlashAttention grid over query
# blocks would launch only $B \cdot H_q$ programs — a few dozen for a small batch, on a GPU with
# over a hundred SMs — each walking thousands of cached keys alone. **Flash-decoding**
# {cite}`dao2023flashdecoding` also splits the *key* axis: several programs per (sequence, KV
# head) each reduce one chunk of the cache to a partial output and its log-sum-exp, and a tiny
# second kernel merges them exactly, with the same rescaling as the online softmax:
#
# $$
# O = \sum_s e^{\text{lse}_s - \text{lse}}\, O_s ,\qquad
# \text{lse} = \log \sum_s e^{\text{lse}_s}.
# $$
#
# Our kernel handles all the query heads of one KV head in the same program (a $16 \times d$
# tile for the tensor cores), so each cached key and value is read from memory once:

# %%
tutx.show(tutx.kernels.decode.default_num_splits)

# %% [markdown]
# By default `decode_attention` checks that every length lies in $[1, S_\text{max}]$, which
# reads the smallest and largest length back to the host: one device synchronisation per call.
# A caller that keeps its own lengths — our `KVCache` and `GQAAttention`, Chapter 6's engine —
# passes `validate_lengths=False`, and the call is then two asynchronous kernel launches (the
# split kernel and the merge). The GPU check times both:

# %%
if sparse is not None:
    dec = [r for r in sparse.rows if r.get("op") == "decode attention"]
    trusted_cols = any("ms_trusted_lengths" in r for r in dec)  # recorded by GPU checks from 2026-12 on
    show_table([{"shape": r["shape"], "cached tokens": r["tokens"], "ms": r["ms"],
                 **({"ms, lengths trusted": r.get("ms_trusted_lengths")} if trusted_cols else {}),
                 "KV GB/s": r["kv_gbps"], "baseline": r["baseline"], "baseline ms": r["baseline_ms"],
                 "× vs baseline": r["ratio"]} for r in dec], digits=3)
    print(sparse.source)
    vs = {name: [r["ratio"] for r in dec if r["baseline"] == name] for name in ("decode_attention_ref", "sdpa_masked")}
    print(f"checked lengths: {min(vs['decode_attention_ref']):.0f}–{max(vs['decode_attention_ref']):.0f}× faster than "
          f"the PyTorch reference, {min(vs['sdpa_masked']):.2f}–{max(vs['sdpa_masked']):.2f}× the speed of masked SDPA")
    trusted = [r for r in dec if r["baseline"] == "sdpa_masked" and r.get("ms_trusted_lengths")]
    if trusted:
        fast = [r["baseline_ms"] / r["ms_trusted_lengths"] for r in trusted]
        print(f"trusted lengths (no host sync): {min(fast):.2f}–{max(fast):.2f}× the speed of masked SDPA")
    else:
        print("this results file predates the trusted-lengths timing: every call above includes the host sync")

# %% [markdown]
# The reference gathers each sequence's keys in fp32, hence its distance. Against SDPA given the
# padded cache and a length mask, what is left at these sizes is a fixed cost per call: the host
# synchronisation when the lengths are checked, and two kernel launches instead of one. Capturing
# a whole decode step in a CUDA graph removes the launch cost; that, and a *paged* cache for this
# kernel, are the serving engine's job in Chapter 6.
#
# ## Exercises
#
# Each exercise has a check: write your function in the cell, run it, and the check tells you
# whether it is right (it prints "not solved yet" until you fill in the body). The checks run
# your function on cases they generate themselves. Worked solutions are hidden below each exercise.
#
# ```{exercise}
# :label: ch04-online-softmax
#
# Write `my_online_softmax_update(m, l, acc, scores, values)` that folds one block of keys into
# the running statistics of Section 2 (natural `exp`): `m [M]`, `l [M]`, `acc [M, D]`,
# `scores [M, N]`, `values [N, D]`; return `(m_new, l_new, acc_new)`. Masked keys have score
# `-inf`, and some rows have seen no key at all yet (every score so far `-inf`, as at the edge of
# a sliding window): they must stay at `m = -inf`, `l = 0`, `acc = 0` — no NaN. Section 2's loop
# gets those rows wrong.
# ```

# %%
from tutx.exercises import ch04


def my_online_softmax_update(m, l, acc, scores, values):
    ...  # your code here


ch04.check_online_softmax_update(my_online_softmax_update)

# %% [markdown]
# ```{solution-start} ch04-online-softmax
# :class: dropdown
# ```
# The new maximum, the factor that rescales the old sums, then the block's own contribution —
# measured from 0 instead of from the maximum while the maximum is still `-inf`, so that every
# exponent is `-inf` (giving 0) rather than `-inf - (-inf)` (NaN):

# %% [solution]
def online_softmax_update_solution(m, l, acc, scores, values):
    m_new = torch.maximum(m, scores.max(dim=1).values)  # [M]
    m_safe = torch.where(torch.isneginf(m_new), torch.zeros_like(m_new), m_new)
    alpha = torch.exp(m - m_safe)  # [M]
    p = torch.exp(scores - m_safe[:, None])  # [M, N]
    return m_new, alpha * l + p.sum(dim=1), alpha[:, None] * acc + p @ values


ch04.check_online_softmax_update(online_softmax_update_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch04-merge-partials
#
# Build flash-decoding's merge (Section 6). Write `my_merge_partials(o_parts, lse_parts)`:
# `o_parts [S, M, D]` holds each of `S` splits' attention output (already normalised over that
# split's keys) and `lse_parts [S, M]` the log-sum-exp of each split's scores (natural log;
# `-inf` for a split that got no keys, whose output rows are 0). Return the attention output over
# all keys `[M, D]` and its log-sum-exp `[M]`. Scores can be large: `exp(lse)` overflows even
# in float64, so the formula cannot be applied literally.
# ```

# %%
def my_merge_partials(o_parts, lse_parts):
    ...  # your code here


ch04.check_merge_partials(my_merge_partials)

# %% [markdown]
# ```{solution-start} ch04-merge-partials
# :class: dropdown
# ```
# `torch.logsumexp` subtracts the maximum before exponentiating; the weights
# $e^{\text{lse}_s - \text{lse}}$ are then at most 1, and 0 for empty splits. This is what the
# `decode_merge_kernel` of `tutx.kernels.decode` does per (sequence, head), in base 2.

# %% [solution]
def merge_partials_solution(o_parts, lse_parts):
    lse = torch.logsumexp(lse_parts, dim=0)  # [M]
    weights = torch.exp(lse_parts - lse)  # [S, M]
    return (weights[..., None] * o_parts).sum(dim=0), lse


ch04.check_merge_partials(merge_partials_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch04-window-blocks
#
# Write `my_window_block_mask(num_q_blocks, num_k_blocks, block, window)`: a bool tensor
# `[num_q_blocks, num_k_blocks]` saying which key blocks a query block must visit under a causal
# sliding window (a pair is allowed when `key <= query` and `query - key < window`; queries are
# the *last* `num_q_blocks * block` positions). How many blocks does one query block visit for
# $W = 1024$ and blocks of 64, and what does that mean for the cost as $S$ grows?
# ```

# %%
def my_window_block_mask(num_q_blocks, num_k_blocks, block, window):
    ...  # your code here


ch04.check_window_block_mask(my_window_block_mask)

# %% [markdown]
# ```{solution-start} ch04-window-blocks
# :class: dropdown
# ```
# Compare the extreme positions of the two blocks: the block is needed if its first key is not
# after the query block's last position, and its last key is inside the window of the query
# block's first position.

# %% [solution]
def window_block_mask_solution(num_q_blocks, num_k_blocks, block, window):
    offset = (num_k_blocks - num_q_blocks) * block  # queries are the last positions
    q_first = torch.arange(num_q_blocks)[:, None] * block + offset
    q_last = q_first + block - 1
    k_first = torch.arange(num_k_blocks)[None, :] * block
    k_last = k_first + block - 1
    return (k_first <= q_last) & (q_first - k_last < window)


ch04.check_window_block_mask(window_block_mask_solution)
print("blocks per query block at W=1024, block 64:", int(window_block_mask_solution(64, 64, 64, 1024)[-1].sum()),
      "— a constant, so the cost grows as S·W instead of S²")

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise}
# :label: ch04-gqa-cache
#
# Write `my_kv_cache_bytes_gqa(config, batch, seq_len, bytes_per_elem)` for a Llama-style config
# dict: layers `num_hidden_layers`, KV heads `num_key_value_heads` (missing means MHA), head
# dim `head_dim` (missing means `hidden_size // num_attention_heads`).
# ```

# %%
def my_kv_cache_bytes_gqa(config, batch, seq_len, bytes_per_elem):
    ...  # your code here


ch04.check_kv_cache_bytes_gqa(my_kv_cache_bytes_gqa)

# %% [markdown]
# ```{solution-start} ch04-gqa-cache
# :class: dropdown
# ```

# %% [solution]
def kv_cache_bytes_gqa_solution(config, batch, seq_len, bytes_per_elem):
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * batch * seq_len * bytes_per_elem


ch04.check_kv_cache_bytes_gqa(kv_cache_bytes_gqa_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ## Summary
#
# - Naive attention stores $S^2$ scores per head: memory quadruples when the context doubles,
#   and the GPU waits on memory. We measured it on this machine.
# - The online softmax rescales running sums by $e^{m - m'}$ so that keys can be processed in
#   blocks; tiling queries and keys gives FlashAttention's exact result in $O(S)$ memory.
# - Our Triton kernel (forward, backward, GQA, causal) is tested against PyTorch on every run
#   of the test suite; Section 3's table compares it with SDPA's backends on an H200.
# - Sliding-window attention saves work only if the kernel skips blocks: ours visits
#   $O(S \cdot W)$ of them.
# - GQA/MQA shrink the KV cache by the group size; our `KVCache` stores only the KV heads, and
#   the tiny model generates exactly what Hugging Face generates with it.
# - Flash-decoding splits the cache across programs so a few long sequences still fill the GPU,
#   and merges the partial results exactly with the online softmax's rescaling.
#
# ## References
#
# {cite}`vaswani2017attention,milakov2018online,rabe2021self,dao2022flashattention,dao2023flashattention2,shah2024flashattention3,tillet2019triton,child2019generating,beltagy2020longformer,shazeer2019fast,ainslie2023gqa,dao2023flashdecoding`
