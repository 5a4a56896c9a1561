"""Tiled matmul in Triton with autotuning, grouped launch order and a fused activation epilogue.

``c = act(a @ b)``: each program computes one ``[BLOCK_M, BLOCK_N]`` tile of ``c``, walking K in
``BLOCK_K`` steps; ``tl.dot`` runs each step on the tensor cores, accumulating in fp32. Three
things decide its speed (after the Triton matmul tutorial):

* **tile sizes** — bigger tiles reuse each loaded element more (intensity grows with the tile),
  but need more shared memory and registers; the best choice depends on the GPU and the shape,
  so ``@triton.autotune`` times every config in :data:`CONFIGS` on the first call of each
  ``(M, N, K)`` and keeps the fastest. The list includes tiles that fit a T4's 64 KB of shared
  memory; configs that do not fit a GPU fail to compile there and the autotuner skips them.
* **launch order** — programs run roughly in id order. Row-major order (all tiles of row 0, then
  row 1 …) streams the whole of ``b`` for every row of tiles; *grouped* order walks ``GROUP_M``
  rows of tiles column by column, so the tiles in flight share the same few blocks of ``a``
  and ``b`` and find them in L2 (:func:`tutx.kernels.quant_matmul.tile_ids`).
* **the epilogue** — the activation (none / relu / silu / gelu) is applied to the fp32 tile in
  registers before the single store: ``F.gelu(a @ b)`` in eager would write ``c`` and read it back.

Inputs fp16 / bf16 / fp32 (both the same), any strides; output in the input dtype. fp32 inputs use
an exact IEEE fp32 dot (no TF32). bf16 on GPUs before sm_80 (a T4) is refused: they have no bf16
tensor cores — cast to fp16. Triton's interpreter computes bf16 dots wrongly (see
``quant_matmul.py``), so there bf16 operands are upcast to fp32 inside the kernel.
"""
from __future__ import annotations

import torch

from tutx._validate import check_choice, check_positive_int
from tutx.kernels._dispatch import interpreter_enabled, use_triton
from tutx.kernels._triton import tl, triton
from tutx.kernels.checks import FLOAT_DTYPES, check_matrix, check_same_device
from tutx.kernels.quant_matmul import tile_ids

ACTIVATIONS = ("none", "relu", "silu", "gelu")
_ACT_ID = {name: i for i, name in enumerate(ACTIVATIONS)}

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages). The first rows are the big Hopper/Ampere
# tiles: on sm_90 Triton 3.9 allocates stages x (A tile + B tile) of shared memory (128x256x64,
# 3 stages: 144 KB in bf16), on sm_80 one stage less. A T4 (sm_75) has no asynchronous copies, so
# no multi-stage pipeline: compiled for it in fp16, every config here needs at most 64 KB.
GPU_TILES = [(128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4),
              (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (128, 128, 32, 4, 4), (64, 64, 32, 4, 4),
              (128, 64, 32, 4, 4), (64, 32, 32, 2, 5), (32, 64, 32, 2, 5)]
GROUP_M = 8
if interpreter_enabled():  # one config: the interpreter would otherwise "benchmark" every config
    CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 2}, num_warps=4, num_stages=1)]
else:
    CONFIGS = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": GROUP_M},
                             num_warps=w, num_stages=s) for bm, bn, bk, w, s in GPU_TILES]


@triton.jit
def _activation(x, ACT: tl.constexpr):
    """0 none, 1 relu, 2 silu, 3 gelu (exact, erf form — ``F.gelu``'s default)."""
    if ACT == 1:
        x = tl.maximum(x, 0.0)
    elif ACT == 2:
        x = x * tl.sigmoid(x)
    elif ACT == 3:
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    return x


@triton.autotune(configs=CONFIGS, key=["M", "N", "K", "ACT"])
@triton.jit
def matmul_kernel(a_ptr, b_ptr, c_ptr, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                  ACT: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """``c = act(a @ b)`` for one output tile; grid ``(cdiv(M, BM) * cdiv(N, BN),)`` in grouped order."""
    pid_m, pid_n = tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    offs_k = tl.arange(0, BLOCK_K)  # [BK]
    # Rows/columns past the edge wrap round (% M, % N) to valid ones, so the loads need no M/N
    # mask (only K is masked); those results are simply not stored.
    a_ptrs = a_ptr + (offs_m % M)[:, None].to(tl.int64) * stride_am + offs_k[None, :] * stride_ak  # [BM, BK]
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + (offs_n % N)[None, :].to(tl.int64) * stride_bn  # [BK, BN]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=offs_k[None, :] < K - k0, other=0.0)  # [BM, BK]
        b = tl.load(b_ptrs, mask=offs_k[:, None] < K - k0, other=0.0)  # [BK, BN]
        if DOT_F32:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    acc = _activation(acc, ACT)  # the epilogue, on the fp32 tile in registers
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def launch_order(grid_m: int, grid_n: int, group_m: int = GROUP_M) -> list[list[int]]:
    """Which program id computes each output tile, ``[grid_m][grid_n]``, in :func:`tile_ids`' grouped order.

    ``group_m=1`` is plain row-major order. The same arithmetic as the kernel, in Python, for pictures.
    """
    grid_m, grid_n, group_m = (check_positive_int(n, v) for n, v in (("grid_m", grid_m), ("grid_n", grid_n),
                                                                   ("group_m", group_m)))
    order = [[0] * grid_n for _ in range(grid_m)]
    width = group_m * grid_n
    for pid in range(grid_m * grid_n):
        first_m = (pid // width) * group_m
        rows = min(grid_m - first_m, group_m)
        order[first_m + (pid % width) % rows][(pid % width) // rows] = pid
    return order


def matmul(a: torch.Tensor, b: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """``act(a @ b)`` for a ``[M, K]`` and b ``[K, N]`` (any strides, same dtype fp16/bf16/fp32) → ``[M, N]``.

    ``activation`` is one of :data:`ACTIVATIONS`, applied to the fp32 accumulator before the store.
    Runs :func:`matmul_ref` where Triton cannot run (CPU without ``TRITON_INTERPRET=1``, no Triton).
    """
    check_choice("activation", activation, ACTIVATIONS)
    check_matrix(a, "a", FLOAT_DTYPES)
    check_matrix(b, "b", FLOAT_DTYPES)
    if b.dtype != a.dtype:
        raise TypeError(f"b: expected the dtype of a ({a.dtype}), got {b.dtype}")
    if b.shape[0] != a.shape[1]:
        raise ValueError(f"b: expected {a.shape[1]} rows (the columns of a, shape {tuple(a.shape)}), "
                         f"got shape {tuple(b.shape)}")
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError(f"a, b: expected non-empty matrices, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    check_same_device(a=a, b=b)
    if not use_triton(a, b):
        return matmul_ref(a, b, activation)
    cuda = a.device.type == "cuda"
    if cuda and a.dtype == torch.bfloat16 and torch.cuda.get_device_capability(a.device)[0] < 8:
        raise TypeError("a: bfloat16 needs a GPU with bf16 tensor cores (sm_80+, e.g. A100, L4, H100); "
                        f"this one is sm_{''.join(map(str, torch.cuda.get_device_capability(a.device)))} — "
                        "use float16")
    (m, k), n = a.shape, b.shape[1]
    c = torch.empty((m, n), device=a.device, dtype=a.dtype)  # [M, N]
    dot_f32 = a.dtype == torch.float32 or (a.dtype == torch.bfloat16 and not cuda)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
    matmul_kernel[grid](a, b, c, m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0),
                        c.stride(1), ACT=_ACT_ID[activation], DOT_F32=dot_f32)
    return c


def matmul_ref(a: torch.Tensor, b: torch.Tensor, activation: str = "none") -> torch.Tensor:
    """``act(a @ b)`` in fp32 (float64 would be overkill at test sizes), cast to ``a.dtype``."""
    check_choice("activation", activation, ACTIVATIONS)
    c = a.float() @ b.float()
    act = {"none": lambda t: t, "relu": torch.relu, "silu": torch.nn.functional.silu,
           "gelu": torch.nn.functional.gelu}[activation]
    return act(c).to(a.dtype)


__all__ = ["matmul", "matmul_ref", "matmul_kernel", "launch_order", "ACTIVATIONS", "CONFIGS", "GPU_TILES"]
