"""Input checks and small helpers shared by the attention kernels (dense, decode, sliding window).

The generic tensor checks live in ``checks.py``. Every check raises a ``TypeError`` / ``ValueError`` that names the argument, the value it got and
what was expected (CONTRIBUTING.md, *Errors*), so the wrappers stay short and behave alike. The
autograd glue and the head-dim padding that the dense and sliding-window wrappers share are here too.
"""
from __future__ import annotations

import math

import torch

from tutx._validate import check_bool, check_positive
from tutx.kernels._dispatch import interpreter_enabled
from tutx.kernels._triton import triton
from tutx.kernels.checks import check_float_dtypes, check_same_device, check_tensor  # noqa: F401 (also for paged_decode)

LOG2E = 1.4426950408889634  # log2(e): softmax in base 2, exp(x) == exp2(x * LOG2E)
SUPPORTED_HEAD_DIMS = (32, 64, 128)  # the tile widths the dense kernels are compiled for


def check_kernel_dtype(dtype: torch.dtype, device_type: str, capability: tuple[int, int] | None) -> None:
    """The Triton kernels run fp16/bf16 on a GPU; fp32 only through the CPU interpreter.

    fp32 on CUDA would silently run the matmuls in TF32 (10-bit mantissa), and bf16 needs the
    tensor cores of sm_80+ (a T4 is sm_75): both are refused rather than run imprecisely or slowly.
    """
    if device_type != "cuda":
        return
    if dtype == torch.float32:
        raise TypeError("q: the Triton kernel on CUDA expects float16 or bfloat16, got torch.float32; "
                        "cast with .half() / .bfloat16() (fp32 runs only on CPU)")
    if dtype == torch.bfloat16 and capability is not None and capability < (8, 0):
        raise TypeError(f"q: bfloat16 needs a GPU of compute capability >= 8.0, this one is "
                        f"{capability[0]}.{capability[1]}; use float16 instead")


def kernel_takes(x: torch.Tensor) -> bool:
    """Whether the kernels take ``x``'s dtype on its device: what :func:`check_kernel_dtype` accepts."""
    if x.device.type != "cuda":
        return True
    return x.dtype == torch.float16 or (x.dtype == torch.bfloat16 and cuda_capability(x) >= (8, 0))


def cuda_capability(x: torch.Tensor) -> tuple[int, int] | None:
    return torch.cuda.get_device_capability(x.device) if x.device.type == "cuda" else None


def resolve_scale(sm_scale, head_dim: int) -> float:
    """The softmax scale: ``1/sqrt(head_dim)`` by default, else a positive finite number."""
    if sm_scale is None:
        return 1.0 / math.sqrt(head_dim)
    return float(check_positive("sm_scale", sm_scale))


def padded_head_dim(head_dim: int) -> int:
    """The smallest supported kernel head dim >= ``head_dim`` (zero columns change no dot product)."""
    for d in SUPPORTED_HEAD_DIMS:
        if head_dim <= d:
            return d
    raise ValueError(f"head_dim: expected at most {SUPPORTED_HEAD_DIMS[-1]} (kernels support "
                     f"{SUPPORTED_HEAD_DIMS}, smaller dims are zero-padded), got {head_dim}")


def check_qkv(q, k, v, causal: bool) -> None:
    """Shapes of dense attention: q ``[B, Hq, S_q, D]``, k and v ``[B, Hkv, S_k, D]``."""
    check_tensor("q", q, 4, "[B, Hq, S_q, D]")
    check_tensor("k", k, 4, "[B, Hkv, S_k, D]")
    check_tensor("v", v, 4, "[B, Hkv, S_k, D]")
    check_bool("causal", causal)
    check_float_dtypes(q=q, k=k, v=v)
    check_same_device(q=q, k=k, v=v)
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    (b, hq, s_q, d), (bk, hkv, s_k, dk) = q.shape, k.shape
    if bk != b:
        raise ValueError(f"k: expected batch {b} (from q), got {bk}")
    if dk != d:
        raise ValueError(f"k: expected head_dim {d} (from q), got {dk}")
    if hq % hkv:
        raise ValueError(f"k: expected a number of heads dividing q's {hq} (GQA/MQA), got {hkv}")
    if causal and s_q > s_k:
        raise ValueError(f"q: causal attention aligns queries to the end of the keys and needs "
                         f"S_q <= S_k, got S_q={s_q} > S_k={s_k}")
    padded_head_dim(d)


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """Kernels take any batch/head/sequence strides but assume unit stride along the head dim."""
    return x if x.stride(-1) == 1 else x.contiguous()


def autotune_configs(table: dict, m_name: str, n_name: str, interpreter_blocks: tuple[int, int]):
    """``triton.Config`` list for a kernel tiled ``m_name`` x ``n_name``.

    ``table`` maps ``"small_d"`` (head dim <= 64) and ``"d128"`` to (BM, BN, warps, stages)
    tuples; :func:`head_dim_pruner` keeps only the row for the launch's head dim, so the autotuner
    compiles and times 3-4 configs, not all. The interpreter gets one small config: autotuning it
    would only multiply the (slow) interpreted runs, and small blocks exercise the multi-block
    loops at test-sized shapes.
    """
    if interpreter_enabled():
        bm, bn = interpreter_blocks
        return [triton.Config({m_name: bm, n_name: bn}, num_warps=4, num_stages=1)]
    rows = list(dict.fromkeys(row for rows in table.values() for row in rows))
    return [triton.Config({m_name: bm, n_name: bn}, num_warps=w, num_stages=s) for bm, bn, w, s in rows]


def seq_bucket(n: int) -> int:
    """Autotuning key for a sequence length: the next power of two, so that a server seeing every
    length from 1 to 8k tunes ~14 times, not 8k times (the kernels ignore these arguments)."""
    return triton.next_power_of_2(n)


def head_dim_pruner(table: dict, m_name: str, n_name: str):
    """An ``early_config_prune`` hook keeping the configs ``table`` lists for the launch's HEAD_DIM."""

    def prune(configs, named_args, **kwargs):
        head_dim = {**named_args, **kwargs}["HEAD_DIM"]
        wanted = set(table["d128" if head_dim > 64 else "small_d"])
        kept = [c for c in configs
                if (c.kwargs[m_name], c.kwargs[n_name], c.num_warps, c.num_stages) in wanted]
        return kept or configs

    return prune


class KernelAttention(torch.autograd.Function):
    """Autograd glue shared by the attention kernels.

    ``forward(q, k, v, *args) -> (o, lse)`` launches a forward kernel that also saves the base-2
    log-sum-exp of each row; ``backward(q, k, v, o, lse, do, *args) -> (dq, dk, dv)`` recomputes the
    probabilities blockwise from it.
    """

    @staticmethod
    def forward(ctx, forward, backward, q, k, v, *args):
        o, lse = forward(q, k, v, *args)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.backward_fn, ctx.args = backward, args
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = ctx.backward_fn(q, k, v, o, lse, last_dim_contiguous(do), *ctx.args)
        return None, None, dq, dk, dv, *(None for _ in ctx.args)


def run_attention_kernel(forward, backward, q, k, v, *args) -> torch.Tensor:
    """Launch ``forward`` through :class:`KernelAttention` on (q, k, v) shaped for the kernels.

    Refuses dtypes the GPU kernels do not take, zero-pads a head dim that is not one of
    :data:`SUPPORTED_HEAD_DIMS` (autograd sees the pad and the slice, so gradients are trimmed too)
    and makes the head dim contiguous.
    """
    check_kernel_dtype(q.dtype, q.device.type, cuda_capability(q))
    d = q.shape[-1]
    d_pad = padded_head_dim(d)
    if d_pad != d:
        q, k, v = (torch.nn.functional.pad(x, (0, d_pad - d)) for x in (q, k, v))
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    o = KernelAttention.apply(forward, backward, q, k, v, *args)  # [B, Hq, S_q, d_pad]
    return o[..., :d] if d_pad != d else o
