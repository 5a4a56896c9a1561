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
# Set-up: on Colab, install tutx first (elsewhere it is already installed by `make lab`).
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
from tutx.bench import latest, peak_memory, show_table, timeit
from tutx.configs import get_spec
from tutx.kernels.attention import flash_attention, flash_attention_ref
from tutx.kernels.sparse_attention import sliding_window_attention, sliding_window_mask
from tutx.scaling import kv_cache_bytes

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
MiB, GiB = 2**20, 2**30
device = tutx.device.get()

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
# do $4BHS^2d$ FLOPs, but the scores are written to memory and read back several times: with
# $d = 64$ each score is used for only $O(d)$ FLOPs, far below the ~300 FLOPs per byte a modern
# GPU needs to be compute-bound (Chapter 1's roofline). And the memory grows as $S^2$.
#
# Let us measure it on this machine: peak memory of one attention call, naive versus PyTorch's
# fused `scaled_dot_product_attention` (SDPA), for growing $S$.

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
# needs only about the size of its output. At $S = 128\text{k}$ the naive scores alone would be
# 512 GiB per head group — no GPU has that. The rest of this section shows how the fused kernel
# avoids the matrix without changing the result.
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


q, k, v = (torch.randn(2, 4, 300, 64) for _ in range(3))  # 300: the last blocks are partial
exact = naive_attention(q, k, v)
blocked = blocked_attention(q, k, v)
print(f"max |blocked - exact| = {(blocked - exact).abs().max():.2e}")
torch.testing.assert_close(blocked, exact, rtol=1e-5, atol=1e-5)

# %% [markdown]
# Same answer to float32 rounding, and the largest temporary is one $64 \times 64$ block of
# scores per head. FlashAttention-2 {cite}`dao2023flashattention2` adds three refinements that
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
# into one scale), over key blocks `[lo, hi)`:

# %%
tutx.show(tutx.kernels.attention._fwd_stage)

# %% [markdown]
# The kernel itself loads one query block, runs the unmasked stage over the key blocks every row
# sees in full, then the masked stage over the diagonal, and writes the output and the
# log-sum-exp (for the backward pass). With grouped-query attention, query head $h$ simply reads
# key/value head $h / (H_q / H_{kv})$ — no copy of $K$ and $V$ is ever made:

# %%
tutx.show(tutx.kernels.attention.flash_attention_kernel)

# %% [markdown]
# `flash_attention(q, k, v, causal=...)` is the public wrapper: it checks its inputs, launches
# the kernel on CUDA (fp16/bf16), and on a CPU runs the plain-PyTorch reference
# `flash_attention_ref` — the test suite runs the kernel itself on CPU through Triton's
# interpreter (`TRITON_INTERPRET=1`) against that reference, forward and backward, for odd
# lengths, GQA ratios 1/4/8, causal and not. Gradients flow through a `torch.autograd.Function`:

# %%
q = torch.randn(1, 8, 200, 64, device=device, requires_grad=True)  # [B, Hq, S, D]
k = torch.randn(1, 2, 200, 64, device=device, requires_grad=True)  # [B, Hkv, S, D]: GQA, 4 queries per KV head
v = torch.randn(1, 2, 200, 64, device=device, requires_grad=True)
out = flash_attention(q, k, v, causal=True)
out.sum().backward()
ref = F.scaled_dot_product_attention(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), is_causal=True)
print(f"output {tuple(out.shape)}, max |ours - SDPA| = {(out - ref).abs().max():.1e}, dK {tuple(k.grad.shape)}")

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
# On the H200 our kernel beats SDPA's FlashAttention-2 backend at head dim 128 from 4k tokens on
# (forward ~1.4–1.6×, forward + backward ~1.3–1.4×) and reaches about three quarters of the cuDNN
# backend, which uses Hopper-only instructions (asynchronous warpgroup matrix multiplies and the
# tensor memory accelerator) that FlashAttention-3 {cite}`shah2024flashattention3` introduced.
# At 1k tokens with head dim 128 we are ~10% behind FlashAttention-2: with short sequences
# there is little work per program to hide the fixed costs.
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
# Here are the blocks one query block visits, at the block size of the GPU kernel:

# %%
from tutx.exercises.ch04 import window_block_mask

S_big, W_big, block = 8192, 1024, 64
visits = window_block_mask(S_big // block, S_big // block, block, W_big)  # [query blocks, key blocks]
causal_blocks = (S_big // block) * (S_big // block + 1) // 2
print(f"S={S_big}, W={W_big}, blocks of {block}: {int(visits.sum()):,} key blocks visited vs "
      f"{causal_blocks:,} for dense causal ({causal_blocks / visits.sum():.1f}× fewer)")
fig, ax = plt.subplots(figsize=(4, 4))
ax.imshow(window_block_mask(32, 32, block, 256), cmap="Greens", interpolation="nearest")
ax.set(title="blocks visited, S=2048, W=256", xlabel="key block", ylabel="query block")
plt.show()

# %% [markdown]
# The same kernel recipe as dense attention, with the key loop bounded by the window: the blocks
# wholly inside every row's window run unmasked, the blocks at both edges are masked. The test
# suite counts the blocks each program visits and checks them against this picture. On the CPU
# the wrapper runs the dense-mask reference, so the result is the same either way:

# %%
q, k, v = (torch.randn(1, 4, 512, 64, device=device) for _ in range(3))
sw = sliding_window_attention(q, k, v, window=128, num_global_tokens=4)
mask = sliding_window_mask(512, 512, 128, 4)
ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(device))
print(f"max |sliding window - masked SDPA| = {(sw - ref).abs().max():.1e}")

# %%
sparse = latest("sparse_decode")
if sparse is None:
    print("No GPU results recorded yet: run `python scripts/gpu_check.py` on a CUDA machine.")
else:
    windows = [r for r in sparse.rows if r.get("op") == "sliding window fwd"]
    show_table([{"shape": r["shape"], "ms": r["ms"], "TFLOP/s": r["tflops"], "dense causal ms": r["baseline_ms"],
                 "× faster than dense": r["ratio"], "ideal ×": (16384 * 16385 / 2)
                 / (int(r["shape"].split("W")[-1]) * 16384)} for r in windows], digits=2)
    print(sparse.source)

# %% [markdown]
# The ideal speed-up is the ratio of attended (query, key) pairs. We get about 60% of it at
# $W = 1024$ and $W = 4096$, but only a quarter at $W = 256$: a 128-query block then visits just
# 5–6 key blocks, one or two of them mostly outside the window, and the fixed cost of each
# program (loading its queries, writing its outputs) is spread over 5 steps instead of ~128 —
# the kernel runs at 117 TFLOP/s there against 260–310 for the wider windows. (The measured
# history, predictions included, is in `book/results/PERF_NOTES.md`.)
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

# %% [markdown]
# Llama-3.1-8B keeps 8 KV heads for 32 query heads: a quarter of the MHA cache, which is 4 GiB
# rather than 16 GiB for one 32k-token conversation in bf16.
#
# `tutx.attention` implements this for real: `GQAAttention` stores only the $H_{kv}$ heads in a
# `KVCache` of shape $[B, H_{kv}, S_\text{max}, d]$ per layer, runs prefill through
# `flash_attention` and single-token decode through the flash-decoding kernel of the next
# section. `TutxLlama.from_hf` swaps it into a Hugging Face Llama, sharing every other module and
# weight. On the tiny Shakespeare model (8 query heads, 2 KV heads), greedy generation with our
# attention and cache matches Hugging Face's `generate` token for token:

# %%
from tutx.attention import TutxLlama
from tutx.models import load_tiny

hf, tok = load_tiny()
ours = TutxLlama.from_hf(hf)
ids = tok("KING HENRY:\nWhat says the", return_tensors="pt").input_ids
new = 40
hf_out = hf.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=tok.eos_token_id)
our_out = ours.generate(ids, max_new_tokens=new)
print(tok.decode(our_out[0]))
print("identical to HF generate:", torch.equal(hf_out, our_out))

# %% [markdown]
# Now turn the same model into MHA (each KV head repeated for its 4 query heads: exactly the
# same function, four times the cache) and into MQA (the two KV heads mean-pooled into one, the
# conversion the GQA paper uses before a short up-training; without it quality drops), and
# measure the cache each one allocates and the perplexity on held-out Shakespeare:

# %%
from tutx.models import heldout_text, perplexity

text = heldout_text()[:6000]
rows = []
for label, kv_heads in [("MHA (8 KV heads)", 8), ("GQA (2 KV heads, as trained)", 2), ("MQA (1 KV head)", 1)]:
    model = TutxLlama.from_hf(load_tiny()[0])
    if kv_heads != model.num_kv_heads:
        model.convert_kv_heads_(kv_heads)
    cache = model.new_cache(batch=8, max_seq_len=512)
    with torch.no_grad():
        ids = tok(text, return_tensors="pt").input_ids[:, :1024]
        logits = torch.cat([model(ids[:, i:i + 512]) for i in (0, 512)], dim=1)
        nll = F.cross_entropy(logits[0, :-1], ids[0, 1:])
    rows.append({"attention": label, "cache for 8 × 512 tokens (KiB)": cache.nbytes / 1024,
                 "held-out perplexity": float(nll.exp())})
show_table(rows, digits=2)

# %% [markdown]
# MHA reproduces the trained model exactly with 4× the cache. MQA halves the cache again, but
# mean-pooling two heads that were trained separately costs quality — which is why GQA models
# are trained (or up-trained) with their grouping rather than converted after the fact.
#
# ## 6. Decoding: one query against a long cache
#
# At decode time each sequence brings **one** query token. A FlashAttention grid over query
# blocks would launch only $B \cdot H_q$ programs — a few dozen for a small batch on a GPU with
# 132 SMs — each walking thousands of cached keys alone. **Flash-decoding**
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

# %%
if sparse is not None:
    dec = [r for r in sparse.rows if r.get("op") == "decode attention"]
    show_table([{"shape": r["shape"], "cached tokens": r["tokens"], "ms": r["ms"], "KV GB/s": r["kv_gbps"],
                 "baseline": r["baseline"], "baseline ms": r["baseline_ms"], "× vs baseline": r["ratio"]} for r in dec],
               digits=3)
    print(sparse.source)

# %% [markdown]
# Against the PyTorch reference (which gathers each sequence's keys) the kernel is 10–16×
# faster. Against SDPA given the padded cache and a length mask it is still ~20% slower at these
# sizes: each of our calls checks the lengths on the host (a device synchronisation) and launches
# two kernels, a fixed cost of about 0.1 ms that SDPA does not pay. Removing it — trusting the
# engine's own metadata and capturing decode steps in a CUDA graph — is the job of the serving
# engine in Chapter 6, which extends this kernel to a *paged* cache.
#
# ## Exercises
#
# Each exercise has a check: write your function in the cell, run it, and the check tells you
# whether it is right (it prints "not solved yet" until you fill in the body). Worked solutions
# are hidden below each exercise.
#
# ```{exercise}
# :label: ch04-online-softmax
#
# Write `my_online_softmax_update(m, l, acc, scores, values)` that folds one block of keys into
# the running statistics of Section 2 (natural `exp`): `m [M]`, `l [M]`, `acc [M, D]`,
# `scores [M, N]`, `values [N, D]`; return `(m_new, l_new, acc_new)`.
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
# The new maximum, the factor that rescales the old sums, then the block's own contribution:

# %% [solution]
def online_softmax_update_solution(m, l, acc, scores, values):
    m_new = torch.maximum(m, scores.max(dim=1).values)
    alpha = torch.exp(m - m_new)
    p = torch.exp(scores - m_new[:, None])
    return m_new, alpha * l + p.sum(dim=1), alpha[:, None] * acc + p @ values


ch04.check_online_softmax_update(online_softmax_update_solution)

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
#   of the test suite and, on an H200, beats SDPA's FlashAttention-2 backend from 4k tokens on.
# - Sliding-window attention saves work only if the kernel skips blocks: ours visits
#   $O(S \cdot W)$ of them.
# - GQA/MQA shrink the KV cache by the group size; our `KVCache` stores only the KV heads, and
#   the tiny model generates exactly what Hugging Face generates with it.
# - Flash-decoding splits the cache across programs so a few long sequences still fill the GPU.
#
# ## References
#
# {cite}`vaswani2017attention,milakov2018online,rabe2021self,dao2022flashattention,dao2023flashattention2,shah2024flashattention3,tillet2019triton,child2019generating,beltagy2020longformer,shazeer2019fast,ainslie2023gqa,dao2023flashdecoding`
