"""Fused row softmax in Triton: one read and one write of every element, when a row fits a block.

PyTorch eager computes ``softmax`` of a row with separate passes (max, exp and sum, divide); when
those are separate kernels each reads the row from memory again. Softmax does ~5 FLOPs per element
and moves at least 2 elements (read x, write y), so it is memory-bound on every GPU: the only way
to make it fast is to touch memory as few times as possible. Here one program owns one row:

* **the row fits one block** (``block_size >= n_cols``, the default up to 16384 columns): load it
  once into registers, take the max, ``exp``, the sum, divide, store — one read, one write;
* **longer rows** (or a smaller ``block_size``): a *looped two-pass* kernel. Pass 1 streams the row
  once keeping a running max ``m`` and a running sum ``l`` of ``exp(x - m)``, rescaling ``l`` by
  ``exp(m_old - m_new)`` whenever the max grows (the *online softmax*, the same update
  FlashAttention uses); pass 2 streams it again to write ``exp(x - m) / l``. Two reads, one write.

Math is in fp32 whatever the input dtype; the output has the input's dtype.
"""
from __future__ import annotations

import torch

from tutx._validate import check_int
from tutx.kernels._dispatch import use_triton
from tutx.kernels._triton import tl, triton
from tutx.kernels.checks import FLOAT_DTYPES

MAX_BLOCK = 16384  # columns held in registers by one program (fp32: 64 KB per row spread over 16 warps)


@triton.jit
def softmax_kernel(x_ptr, y_ptr, n_cols, stride_x, stride_y, BLOCK: tl.constexpr, ONE_BLOCK: tl.constexpr):
    """Softmax of one row per program; grid ``(n_rows,)``. ``ONE_BLOCK``: the row fits ``BLOCK``."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    y_row = y_ptr + row * stride_y
    offs = tl.arange(0, BLOCK)  # [BLOCK]
    if ONE_BLOCK:  # one read, one write
        mask = offs < n_cols
        x = tl.load(x_row + offs, mask=mask, other=float("-inf")).to(tl.float32)  # [BLOCK]
        z = x - tl.max(x, axis=0)  # the max keeps exp() from overflowing
        num = tl.exp(z)  # masked tail: exp(-inf) = 0, so it adds nothing to the sum
        tl.store(y_row + offs, (num / tl.sum(num, axis=0)).to(y_ptr.dtype.element_ty), mask=mask)
    else:  # pass 1: running max m and running sum l of exp(x - m), block by block
        m = tl.full([BLOCK], float("-inf"), tl.float32)  # per lane; combined at the end
        l = tl.zeros([BLOCK], tl.float32)
        for start in range(0, n_cols, BLOCK):
            mask = start + offs < n_cols
            x = tl.load(x_row + start + offs, mask=mask, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, x)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a lane that saw only -inf: no -inf - -inf
            l = l * tl.exp(m - m_safe) + tl.exp(x - m_safe)  # exp(m_old - m_new) rescales the old sum
            m = m_new
        m_row = tl.max(m, axis=0)
        l_row = tl.sum(l * tl.exp(m - m_row), axis=0)  # combine the lanes under the row max
        for start in range(0, n_cols, BLOCK):  # pass 2: normalise and write
            mask = start + offs < n_cols
            x = tl.load(x_row + start + offs, mask=mask, other=float("-inf")).to(tl.float32)
            tl.store(y_row + start + offs, (tl.exp(x - m_row) / l_row).to(y_ptr.dtype.element_ty), mask=mask)


def _num_warps(block: int) -> int:
    """More warps for wider rows, so each thread holds a handful of elements (Triton tutorial's rule)."""
    return 4 if block < 2048 else 8 if block < 8192 else 16


def softmax(x: torch.Tensor, block_size: int | None = None) -> torch.Tensor:
    """``softmax(x, dim=-1)`` with the fused kernel; any leading shape, last dim contiguous.

    ``block_size`` (a power of two, >= 16) is the number of columns a program handles per step;
    by default the whole row (up to :data:`MAX_BLOCK`), which takes the one-read path. A smaller
    value forces the looped two-pass path (used by the tests). Runs :func:`softmax_ref` where
    Triton cannot run (CPU without ``TRITON_INTERPRET=1``, no Triton).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x: expected dtype float16, bfloat16 or float32, got {x.dtype}")
    if x.ndim == 0 or x.numel() == 0:
        raise ValueError(f"x: expected at least one dimension and one element, got shape {tuple(x.shape)}")
    if x.stride(-1) != 1 and x.shape[-1] > 1:
        raise ValueError(f"x: the kernel reads rows with unit stride; got strides {x.stride()} "
                         f"(call .contiguous())")
    if block_size is not None:
        check_int("block_size", block_size, minimum=16)
        if block_size & (block_size - 1):
            raise ValueError(f"block_size: expected a power of two, got {block_size}")
    if not use_triton(x):
        return softmax_ref(x)
    n_cols = x.shape[-1]
    x2 = x if x.ndim == 2 else x.reshape(-1, n_cols)  # [M, N]; a view whenever the leading dims allow it
    block = block_size or min(triton.next_power_of_2(n_cols), MAX_BLOCK)
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)  # [M, N]
    softmax_kernel[(x2.shape[0],)](x2, y, n_cols, x2.stride(0), y.stride(0), BLOCK=block,
                                   ONE_BLOCK=block >= n_cols, num_warps=_num_warps(block))
    return y.reshape(x.shape)


def softmax_ref(x: torch.Tensor) -> torch.Tensor:
    """``torch.softmax`` over the last dim, computed in fp32 and cast back."""
    return torch.softmax(x.float(), dim=-1).to(x.dtype)


__all__ = ["softmax", "softmax_ref", "softmax_kernel", "MAX_BLOCK"]
