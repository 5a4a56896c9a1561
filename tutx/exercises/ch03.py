"""Checks for Chapter 3's exercises (quantization).

Each ``check_…(fn)`` runs your function on a handful of tensors and compares it with a reference
solution. It prints ``✅ …`` when all cases pass, ``✏️ … not solved yet`` while your function is
still the stub, and raises an ``AssertionError`` naming the first failing case otherwise. The
"build-it" checks (:func:`check_fake_quant_ste`, :func:`check_mse_clip_scale`) generate their
cases inside the check, so passing means the piece works, not that it matches a shown example.
"""
from __future__ import annotations

import torch

from tutx.exercises._check import check_fn, run_tensor_cases
from tutx.quant.primitives import pack_int4, quantize, unpack_int4

try:  # the shared runner's stub detector (a body of `...`); older runners treat None as "not solved"
    from tutx.exercises._check import is_stub
except ImportError:  # pragma: no cover
    def is_stub(fn) -> bool:
        return False

__all__ = ["check_quantize_per_channel_int8", "check_pack_int4", "check_unpack_int4", "check_fake_quant_ste",
           "check_mse_clip_scale"]


def _weights(n: int, k: int, seed: int, std: float = 0.02) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * std  # [N, K]


def _reference_per_channel_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = quantize(w, 8, symmetric=True, axis=0)
    return q.data, q.scale  # int8 [N, K], float32 [N]


def check_quantize_per_channel_int8(fn) -> None:
    """``fn(w) -> (codes, scale)``: symmetric INT8 with one scale per output channel (row).

    ``w`` is float32 ``[N, K]`` (a Linear weight ``[out, in]``). For each row:
    ``scale = max(|w_row|) / 127`` — but at least ``torch.finfo(torch.float32).eps``, so an
    all-zero row gets a tiny positive scale instead of a division by zero — and
    ``codes = clamp(round(w_row / scale), -127, 127)`` as ``torch.int8`` (``torch.round`` rounds
    halves to even). Return ``codes`` int8 ``[N, K]`` and ``scale`` float32 ``[N]``.
    """
    outlier = _weights(6, 32, seed=2)
    outlier[3, 7] = 0.9  # one large weight: its row's other codes get squeezed towards 0
    zero_row = _weights(4, 16, seed=3)
    zero_row[1] = 0.0
    cases = [
        (_weights(4, 16, seed=0),),
        (_weights(16, 64, seed=1, std=1.0),),
        (outlier,),
        (zero_row,),
        (torch.tensor([[0.5, -1.0, 0.25], [2.0, 0.0, -2.0]]),),  # by hand: scales 1/127 and 2/127
    ]
    run_tensor_cases("check_quantize_per_channel_int8", fn, _reference_per_channel_int8, cases, rtol=1e-6, atol=0)


def _codes(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 16, (n, k), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)  # [N, K]


def check_pack_int4(fn) -> None:
    """``fn(codes) -> packed``: two 4-bit codes per byte, uint8 ``[N, K]`` (values 0..15) → uint8 ``[N, K // 2]``.

    Byte ``j`` of a row holds column ``2j`` in its **low** nibble (bits 0-3) and column
    ``2j + 1`` in its **high** nibble (bits 4-7): ``packed = codes[:, 0::2] | (codes[:, 1::2] << 4)``.
    """
    cases = [
        (torch.tensor([[1, 2, 3, 4]], dtype=torch.uint8),),  # -> [[0x21, 0x43]]
        (torch.full((2, 6), 15, dtype=torch.uint8),),  # every bit set: 0xFF
        (_codes(3, 8, seed=0),),
        (_codes(16, 64, seed=1),),
    ]
    run_tensor_cases("check_pack_int4", fn, pack_int4, cases, rtol=0, atol=0)


def check_unpack_int4(fn) -> None:
    """``fn(packed) -> codes``: the inverse of :func:`check_pack_int4`'s packing, uint8 ``[N, K // 2]`` → ``[N, K]``.

    Low nibble first: ``codes[:, 2j] = packed[:, j] & 0xF`` and ``codes[:, 2j + 1] = packed[:, j] >> 4``.
    """
    cases = [
        (torch.tensor([[0x21, 0x43]], dtype=torch.uint8),),  # -> [[1, 2, 3, 4]]
        (torch.tensor([[0x0F, 0xF0, 0xFF, 0x00]], dtype=torch.uint8),),
        (pack_int4(_codes(3, 8, seed=2)),),
        (pack_int4(_codes(16, 64, seed=3)),),
    ]
    run_tensor_cases("check_unpack_int4", fn, unpack_int4, cases, rtol=0, atol=0)


# ------------------------------------------------------------------------------ build it: the STE
class _SolutionFakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, scale, zero_point, qmin, qmax):
        q = torch.round(w / scale) + zero_point
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return scale * (torch.clamp(q, qmin, qmax) - zero_point)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None


def _solution_fake_quant_ste(w, scale, zero_point, qmin, qmax):
    return _SolutionFakeQuantSTE.apply(w, scale, zero_point, qmin, qmax)


class _WrongSTEEverywhere(torch.autograd.Function):
    """Forward right, but the gradient also flows through clipped weights."""

    @staticmethod
    def forward(ctx, w, scale, zero_point, qmin, qmax):
        return scale * (torch.clamp(torch.round(w / scale) + zero_point, qmin, qmax) - zero_point)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None, None


def _wrong_fake_quant_ste(w, scale, zero_point, qmin, qmax):
    return _WrongSTEEverywhere.apply(w, scale, zero_point, qmin, qmax)


def _output_and_grad(fn):
    """``g(w, scale, zero, qmin, qmax, grad_out) -> (fn's output, dL/dw for L = sum(output * grad_out))``."""
    def run(w, scale, zero_point, qmin, qmax, grad_out):
        w = w.clone().requires_grad_(True)
        out = fn(w, scale, zero_point, qmin, qmax)
        if not isinstance(out, torch.Tensor):
            return out  # None (a forgotten return) or something else: the runner reports it
        if out.grad_fn is None:
            raise AssertionError("the output carries no gradient; return YourFunction.apply(w, scale, zero_point, "
                                 "qmin, qmax) from your torch.autograd.Function")
        out.backward(grad_out)
        return out.detach(), w.grad
    return run


def _ste_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(3)
    cases = []
    for n, k, qmin, qmax, asym, shrink in [(4, 16, -127, 127, False, 1.0), (8, 32, 0, 15, True, 0.6),
                                           (3, 64, -7, 7, False, 0.5), (16, 8, 0, 15, True, 1.0)]:
        w = torch.randn(n, k, generator=gen) * 0.05  # [N, K]
        lo, hi = w.amin(1, keepdim=True), w.amax(1, keepdim=True)  # [N, 1]
        if asym:
            scale = (hi - lo) / (qmax - qmin) * shrink  # shrink < 1: some weights are clipped
            zero = torch.round(qmin - lo / scale).clamp(qmin, qmax)
        else:
            scale = w.abs().amax(1, keepdim=True) / qmax * shrink
            zero = torch.zeros_like(scale)
        cases.append((w, scale, zero, qmin, qmax, torch.randn(n, k, generator=gen)))
    return cases


def check_fake_quant_ste(fn) -> None:
    """``fn(w, scale, zero_point, qmin, qmax) -> w_hat``: fake quantization with a straight-through gradient.

    Forward: ``scale * (clamp(round(w / scale) + zero_point, qmin, qmax) - zero_point)`` (``scale``
    and ``zero_point`` are float tensors ``[N, 1]`` that broadcast over ``w [N, K]``; ``torch.round``
    rounds halves to even). Backward (the STE): the incoming gradient passes through unchanged
    where ``round(w / scale) + zero_point`` lies inside ``[qmin, qmax]``, and is 0 where the weight
    was clipped. Write it as a ``torch.autograd.Function`` and return ``YourFunction.apply(...)``.
    The check compares the output and ``w``'s gradient on hidden cases, some with clipping.
    """
    name = "check_fake_quant_ste"
    check_fn(fn, name)
    if is_stub(fn):
        print(f"✏️ {name}: not solved yet. Write the body of your function and run this cell again.")
        return
    run_tensor_cases(name, _output_and_grad(fn), _output_and_grad(_solution_fake_quant_ste), _ste_cases(),
                     rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------- build it: an MSE-optimal clip
def _solution_mse_clip_scale(w, bits):
    qmax = 2 ** (bits - 1) - 1
    best, best_err = None, None
    for k in range(20, 101):
        scale = k / 100 * float(w.abs().max()) / qmax
        w_hat = scale * torch.clamp(torch.round(w / scale), -qmax, qmax)  # [n], float32 like w
        err = float(((w_hat.double() - w.double()) ** 2).mean())
        if best_err is None or err < best_err:
            best, best_err = w_hat, err
    return best


def _wrong_mse_clip_scale(w, bits):
    qmax = 2 ** (bits - 1) - 1
    scale = float(w.abs().max()) / qmax  # plain min-max: no search
    return scale * torch.clamp(torch.round(w / scale), -qmax, qmax)


def _mse_cases() -> list[tuple]:
    gen = torch.Generator().manual_seed(5)
    cases = []
    for n, bits, tail in [(256, 4, 3.0), (512, 4, 8.0), (128, 8, 20.0), (1000, 4, 1.0)]:
        w = torch.randn(n, generator=gen) * 0.02
        w[torch.randint(0, n, (3,), generator=gen)] *= tail  # a few outliers
        cases.append((w, bits))
    return cases


def check_mse_clip_scale(fn) -> None:
    """``fn(w, bits) -> w_hat``: quantize ``w`` (1-D, float32) with the symmetric scale of least squared error.

    With ``qmax = 2**(bits - 1) - 1``, try the clipping ratios ``r = k / 100`` for ``k = 20 … 100``:
    ``scale = r * max|w| / qmax``, ``w_hat = scale * clamp(round(w / scale), -qmax, qmax)``,
    ``error = mean((w_hat - w) ** 2)``. Return the ``w_hat`` (float32, shaped like ``w``) with
    the smallest error; on a tie, the smaller ratio's. Hidden cases: heavy-tailed weights at 4 and 8 bits.
    """
    run_tensor_cases("check_mse_clip_scale", fn, _solution_mse_clip_scale, _mse_cases(), rtol=1e-5, atol=1e-8)


def _solution_quantize_per_channel_int8(w):
    scale = (w.abs().amax(dim=1) / 127).clamp(min=torch.finfo(torch.float32).eps)  # [N]
    return torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8), scale  # [N, K], [N]


def _wrong_quantize_per_tensor_int8(w):
    scale = (w.abs().max() / 127).clamp(min=torch.finfo(torch.float32).eps)
    return torch.round(w / scale).to(torch.int8), scale.expand(w.shape[0]).clone()


def _solution_pack_int4(codes):
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8)


def _wrong_pack_int4(codes):
    return ((codes[:, 0::2] << 4) | codes[:, 1::2]).to(torch.uint8)  # high nibble first


def _solution_unpack_int4(packed):
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1).to(torch.uint8)


def _wrong_unpack_int4(packed):
    return torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(packed.shape[0], -1).to(torch.uint8)


CONTRACT = {
    "check_quantize_per_channel_int8": (_solution_quantize_per_channel_int8, _wrong_quantize_per_tensor_int8),
    "check_pack_int4": (_solution_pack_int4, _wrong_pack_int4),
    "check_unpack_int4": (_solution_unpack_int4, _wrong_unpack_int4),
    "check_fake_quant_ste": (_solution_fake_quant_ste, _wrong_fake_quant_ste),
    "check_mse_clip_scale": (_solution_mse_clip_scale, _wrong_mse_clip_scale),
}
"""For each check, a correct implementation and a plausible wrong one (used by the contract test)."""
