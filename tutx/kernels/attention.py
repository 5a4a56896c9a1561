"""FlashAttention-2 style attention in Triton: forward kernel, wrapper and PyTorch reference.

Attention ``softmax(q kᵀ · sm_scale) v`` never materialises the ``[S_q, S_k]`` score matrix:
each program owns a block of queries, streams the keys and values in blocks, and keeps a
running max ``m``, a running sum ``l`` and an unnormalised output (the *online softmax*).
Scores are kept in base 2 (``exp2`` with ``sm_scale * log2(e)`` folded into one multiply), and
the log-sum-exp of each row is saved so the backward pass (``attention_bwd.py``) can recompute
the probabilities instead of storing them. The exp2 trick and the split of the key loop into an
unmasked and a masked stage follow Triton's fused-attention tutorial
(https://triton-lang.org/main/getting-started/tutorials/06-fused-attention.html).

Layouts: q ``[B, Hq, S_q, D]``, k and v ``[B, Hkv, S_k, D]`` with ``Hq % Hkv == 0``. Query head
``h`` reads key/value head ``h // (Hq // Hkv)`` (GQA; MQA when ``Hkv == 1``) — K and V are never
expanded. Causal attention is aligned to the *end*: query ``i`` sees keys ``j <= i + S_k - S_q``,
which is what a chunk of new queries appended to a cache needs (chunked prefill).
"""
from __future__ import annotations

import torch

from tutx._validate import check_choice
from tutx.kernels._attention_common import (
    LOG2E,
    autotune_configs,
    check_qkv,
    head_dim_pruner,
    kernel_takes,
    resolve_scale,
    run_attention_kernel,
    seq_bucket,
)
from tutx.kernels._dispatch import use_triton
from tutx.kernels._triton import tl, triton
from tutx.kernels.attention_bwd import flash_attention_backward
from tutx.kernels.forward_common import load_query_tile, store_output
from tutx.kernels.masks import causal_mask

BACKENDS = ("auto", "triton", "sdpa", "flash_attn")

# (BLOCK_M, BLOCK_N, num_warps, num_stages). The big tiles are for A100/H100; the last entry of
# each row fits a T4 (sm_75 needs more shared memory per tile: D=128 at 64x32 takes 48 KB of its
# 64 KB). A config that does not fit a GPU fails to compile there and the autotuner skips it.
_FWD_CONFIGS = {
    "small_d": [(128, 64, 4, 3), (128, 128, 8, 3), (128, 32, 4, 2), (64, 64, 4, 3)],
    "d128": [(128, 64, 8, 3), (128, 64, 4, 2), (128, 128, 8, 3), (64, 32, 4, 2)],
}


@triton.jit
def online_softmax_stage(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, lo, hi, offs_m, S_k, diag, qk_scale,
                         MASKED: tl.constexpr, CAUSAL: tl.constexpr, HEAD_DIM: tl.constexpr,
                         BLOCK_N: tl.constexpr):
    """Online-softmax update over key blocks ``[lo, hi)``; ``MASKED`` applies bounds and causality."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n  # [BLOCK_N]
        in_k = cols < S_k
        if MASKED:
            k = tl.load(K + cols[None, :] * stride_kn + offs_d[:, None], mask=in_k[None, :], other=0.0)  # [D, BN]
            v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :], mask=in_k[:, None], other=0.0)  # [BN, D]
        else:  # stage 1 only visits whole blocks inside the keys
            k = tl.load(K + cols[None, :] * stride_kn + offs_d[:, None])  # [D, BN]
            v = tl.load(V + cols[:, None] * stride_vn + offs_d[None, :])  # [BN, D]
        qk = tl.dot(q, k) * qk_scale  # [BM, BN], base-2 logits
        if MASKED:
            keep = in_k[None, :]
            if CAUSAL:
                keep = keep & (cols[None, :] <= offs_m[:, None] + diag)
            qk = tl.where(keep, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))  # [BM]
        p = tl.exp2(qk - m_new[:, None])  # [BM, BN]
        alpha = tl.exp2(m_i - m_new)  # [BM] rescales what was accumulated under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])  # [BM, D]
        m_i = m_new
    return acc, l_i, m_i


@triton.autotune(configs=autotune_configs(_FWD_CONFIGS, "BLOCK_M", "BLOCK_N", (32, 16)),
                 key=["TUNE_Q", "TUNE_K", "HEAD_DIM", "CAUSAL"],
                 prune_configs_by={"early_config_prune": head_dim_pruner(_FWD_CONFIGS, "BLOCK_M", "BLOCK_N")})
@triton.jit
def flash_attention_kernel(Q, K, V, O, LSE, qk_scale,
                           stride_qb, stride_qh, stride_qm, stride_kb, stride_kh, stride_kn,
                           stride_vb, stride_vh, stride_vn, stride_ob, stride_oh, stride_om,
                           Hq, GROUP, S_q, S_k, TUNE_Q, TUNE_K,
                           HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One program: ``BLOCK_M`` queries of one (batch, query head); grid ``(cdiv(S_q, BM), B*Hq)``.

    ``TUNE_Q`` / ``TUNE_K`` are only the autotuning key (power-of-two buckets of S_q / S_k).
    """
    # Causal blocks near the end of the sequence have the most keys: launch them first.
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    b, h, offs_m, q, K, V = load_query_tile(Q, K, V, pid_m, stride_qb, stride_qh, stride_qm, stride_kb, stride_kh,
                                            stride_vb, stride_vh, Hq, GROUP, S_q, HEAD_DIM, BLOCK_M)  # q: [BM, D]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    diag = S_k - S_q  # query i sees keys j <= i + diag
    start_m = pid_m * BLOCK_M
    if CAUSAL:
        hi_full = tl.minimum(start_m + diag + 1, S_k)  # every row of the block sees keys < this
        hi = tl.minimum(start_m + BLOCK_M + diag, S_k)
    else:
        hi_full = S_k
        hi = S_k
    hi_full = (hi_full // BLOCK_N) * BLOCK_N
    # Stage 1: whole key blocks every query may see — no masks in the inner loop.
    acc, l_i, m_i = online_softmax_stage(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, 0, hi_full, offs_m,
                                         S_k, diag, qk_scale, False, CAUSAL, HEAD_DIM, BLOCK_N)
    # Stage 2: the blocks on the diagonal and the ragged tail of the keys.
    acc, l_i, m_i = online_softmax_stage(acc, l_i, m_i, q, K, V, stride_kn, stride_vn, hi_full, hi, offs_m,
                                         S_k, diag, qk_scale, True, CAUSAL, HEAD_DIM, BLOCK_N)

    store_output(O, LSE, acc, l_i, m_i, b, h, offs_m, Hq, S_q, stride_ob, stride_oh, stride_om, HEAD_DIM)


def flash_attention_forward(q, k, v, causal: bool, sm_scale: float):
    """Launch the forward kernel: returns o ``[B, Hq, S_q, D]`` and the base-2 LSE ``[B, Hq, S_q]`` (fp32)."""
    (batch, hq, s_q, d), hkv, s_k = q.shape, k.shape[1], k.shape[2]
    o = torch.empty_like(q, memory_format=torch.contiguous_format)  # [B, Hq, S_q, D]
    lse = torch.empty((batch, hq, s_q), device=q.device, dtype=torch.float32)  # [B, Hq, S_q]
    grid = lambda meta: (triton.cdiv(s_q, meta["BLOCK_M"]), batch * hq)  # noqa: E731
    flash_attention_kernel[grid](
        q, k, v, o, lse, sm_scale * LOG2E,
        *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3],
        hq, hq // hkv, s_q, s_k, seq_bucket(s_q), seq_bucket(s_k), HEAD_DIM=d, CAUSAL=causal)
    return o, lse


def flash_attention(q, k, v, causal: bool = False, sm_scale: float | None = None,
                    backend: str = "triton") -> torch.Tensor:
    """Exact attention, ``[B, Hq, S_q, D]`` out, differentiable in q, k and v.

    ``backend="triton"`` runs our kernel on CUDA tensors (fp16/bf16) or, under
    ``TRITON_INTERPRET=1``, on CPU tensors (fp32 too); elsewhere it runs
    :func:`flash_attention_ref`. Head dims below 128 that are not 32/64 are zero-padded to the next
    of (32, 64, 128). ``"sdpa"`` calls PyTorch's ``scaled_dot_product_attention`` and
    ``"flash_attn"`` the optional ``flash-attn`` package (CUDA only; ``pip install 'tutx[flash]'``) —
    same semantics, for comparison; ``"auto"`` takes our kernel where it runs (CUDA fp16, or bf16 on sm_80+; the
    interpreter) and SDPA everywhere else (CPU, fp32 on CUDA).
    """
    check_choice("backend", backend, BACKENDS)
    check_qkv(q, k, v, causal)
    sm_scale = resolve_scale(sm_scale, q.shape[-1])
    if backend == "auto":
        backend = "triton" if use_triton(q, k, v) and kernel_takes(q) else "sdpa"
    if backend == "sdpa":
        return _sdpa(q, k, v, causal, sm_scale)
    if backend == "flash_attn":
        return _flash_attn(q, k, v, causal, sm_scale)
    if not use_triton(q, k, v):
        return flash_attention_ref(q, k, v, causal, sm_scale)
    return run_attention_kernel(flash_attention_forward, flash_attention_backward, q, k, v, causal, sm_scale)


def flash_attention_ref(q, k, v, causal: bool = False, sm_scale: float | None = None,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Plain PyTorch attention in fp32 (materialises the ``[S_q, S_k]`` scores): the ground truth.

    ``mask`` is an optional ``[S_q, S_k]`` bool tensor, True where a query may attend to a key
    (:mod:`tutx.kernels.masks` builds the patterns), combined with ``causal``; every query must
    keep at least one key. The sliding-window reference is this function with its mask.
    """
    check_qkv(q, k, v, causal)
    sm_scale = resolve_scale(sm_scale, q.shape[-1])
    s_q, s_k = q.shape[2], k.shape[2]
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                             or tuple(mask.shape) != (s_q, s_k)):
        got = f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected None or a bool tensor of shape ({s_q}, {s_k}), got {got}")
    group = q.shape[1] // k.shape[1]
    k = k.float().repeat_interleave(group, dim=1)  # [B, Hq, S_k, D]
    v = v.float().repeat_interleave(group, dim=1)  # [B, Hq, S_k, D]
    scores = torch.matmul(q.float(), k.transpose(-2, -1)) * sm_scale  # [B, Hq, S_q, S_k]
    if causal:
        mask = causal_mask(s_q, s_k, q.device) if mask is None else mask & causal_mask(s_q, s_k, mask.device)
    if mask is not None:
        scores = scores.masked_fill(~mask.to(q.device), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v).to(q.dtype)  # [B, Hq, S_q, D]


def _sdpa(q, k, v, causal, sm_scale):
    """PyTorch SDPA. Its ``is_causal`` aligns to the *start* when S_q < S_k, so pass our mask then."""
    s_q, s_k = q.shape[2], k.shape[2]
    mask = causal_mask(s_q, s_k, q.device) if causal and s_q != s_k else None
    group = q.shape[1] // k.shape[1]
    if group > 1:  # enable_gqa needs torch >= 2.5; repeating keeps torch 2.4 working
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    return torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal and mask is None, scale=sm_scale)


def _flash_attn(q, k, v, causal, sm_scale):
    """The ``flash-attn`` package (CUDA only; layout ``[B, S, H, D]``, causal aligned to the end)."""
    try:
        from flash_attn import flash_attn_func
    except ImportError as err:
        raise ImportError("backend='flash_attn' needs the flash-attn package: pip install 'tutx[flash]' "
                          "(CUDA GPUs only), or use backend='triton' or 'sdpa'") from err
    if q.device.type != "cuda":
        raise ValueError(f"q: backend='flash_attn' runs on CUDA tensors only, got device {q.device}")
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                          softmax_scale=sm_scale, causal=causal)  # [B, S_q, Hq, D]
    return out.transpose(1, 2)


__all__ = ["BACKENDS", "flash_attention", "flash_attention_ref", "flash_attention_kernel", "flash_attention_forward",
           "online_softmax_stage"]
