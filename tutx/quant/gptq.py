"""GPTQ (Frantar et al., 2022): 4-bit weights chosen to preserve the layer's *outputs*, not its weights.

Round-to-nearest (RTN) rounds every weight on its own. GPTQ rounds one input column at a time
and pushes each rounding error onto the columns not yet rounded, weighted by how the inputs
co-vary, so that ``X @ W.T`` changes as little as possible on the calibration inputs ``X``.
The covariance is the Hessian of that squared error, ``H = 2 X^T X / n``; the update for
column ``i`` is ``W[:, i:] -= err_i * Hinv[i, i:] / Hinv[i, i]``, with ``Hinv`` taken from a Cholesky
factor (stable, and computed once). ``act_order`` rounds the columns with the largest
``H[i, i]`` (the most active inputs) first, while the most columns are left to absorb error.

Groups stay contiguous in the *original* column order (so the result loads into
``Int4WeightOnlyLinear`` and its kernel); a group's scale and zero point are chosen when its
first column is reached, from the then error-compensated weights.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from tutx.quant.api import select_linears, set_submodule
from tutx.quant.configs import Int4WeightOnly
from tutx.quant.modules import Int4WeightOnlyLinear
from tutx.quant.primitives import check_finite, choose_qparams


class HessianAccumulator:
    """Running ``H = 2 X^T X / n`` over every row (token) of the inputs seen by a layer."""

    def __init__(self, in_features: int, device=None):
        self.sum = torch.zeros(in_features, in_features, device=device, dtype=torch.float64)  # [K, K]
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.sum.shape[0]:
            raise ValueError(f"x: expected last dimension {self.sum.shape[0]}, got shape {tuple(x.shape)}")
        rows = x.detach().reshape(-1, x.shape[-1]).double()  # [tokens, K]; float64 sums: see gptq_quantize_weight
        check_finite(rows, "calibration activations")
        self.sum += rows.T @ rows
        self.count += rows.shape[0]

    def hessian(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("calibration_batches: the layer saw no inputs")
        return 2 * self.sum / self.count  # [K, K]


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``; more damping if H is near singular."""
    eye = torch.eye(h.shape[0], device=h.device, dtype=h.dtype)
    mean_diag = torch.diag(h).mean()
    for attempt in range(4):
        factor, info = torch.linalg.cholesky_ex(h + damp * 10**attempt * mean_diag * eye)
        if info == 0:
            return torch.linalg.cholesky(torch.cholesky_inverse(factor), upper=True)  # [K, K]
    raise ValueError(f"hessian: not positive definite even with damping {damp * 1000}; is the calibration set tiny?")


@torch.no_grad()
def gptq_quantize_weight(weight: torch.Tensor, hessian: torch.Tensor, group_size: int = 128, act_order: bool = False,
                         damp: float = 0.01, block_size: int = 128):
    """GPTQ for one weight ``[N, K]`` given ``H [K, K]``: 4-bit asymmetric codes with per-group parameters.

    Returns ``(codes uint8 [N, K], scale float32 [N, K // g], zero_point int32 [N, K // g])`` — the
    layout of :class:`~tutx.quant.Int4WeightOnlyLinear`.
    """
    n, k = weight.shape
    if hessian.shape != (k, k):
        raise ValueError(f"hessian: expected shape ({k}, {k}), got {tuple(hessian.shape)}")
    if k % group_size:
        raise ValueError(f"in_features: {k} is not divisible by group_size={group_size}")
    if not 0 < damp < 1:
        raise ValueError(f"damp: expected a fraction in (0, 1), got {damp!r}")
    # float64 throughout: GPTQ's rounding decisions amplify the last bits of the Hessian, and float32
    # BLAS results vary with thread count and memory alignment, so float32 GPTQ is not reproducible
    w = weight.detach().double().clone()  # [N, K]
    h = hessian.double().clone()  # [K, K]
    dead = torch.diag(h) == 0  # inputs that were always zero: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = torch.argsort(torch.diag(h), descending=True) if act_order else torch.arange(k, device=w.device)
    inv_perm = torch.argsort(perm)
    w, h = w[:, perm], h[perm][:, perm]  # work in processing order
    hinv = _inverse_cholesky(h, damp)  # [K, K] upper triangular

    groups = k // group_size
    scale = torch.zeros(n, groups, device=w.device, dtype=torch.float64)
    zero = torch.zeros(n, groups, dtype=torch.int32, device=w.device)
    ready = [False] * groups
    codes = torch.zeros(n, k, device=w.device, dtype=torch.float64)  # in processing order
    for i1 in range(0, k, block_size):
        i2 = min(i1 + block_size, k)
        w1 = w[:, i1:i2].clone()  # [N, B] this block, updated column by column
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            g = int(perm[i1 + i]) // group_size
            if not ready[g]:
                pos = inv_perm[g * group_size:(g + 1) * group_size]  # processing positions of the group
                vals = w[:, pos].clone()  # [N, g]
                inside = (pos >= i1) & (pos < i2)
                vals[:, inside] = w1[:, pos[inside] - i1]
                scale[:, g], zero[:, g] = choose_qparams(vals.amin(1), vals.amax(1), 4, symmetric=False)
                ready[g] = True
            col, s, z = w1[:, i], scale[:, g], zero[:, g].float()
            q = torch.clamp(torch.round(col * s.reciprocal()) + z, 0, 15)  # [N]
            codes[:, i1 + i] = q
            err = (col - (q - z) * s) / hinv[i1 + i, i1 + i]  # [N]
            w1[:, i:] -= err[:, None] * hinv[i1 + i, i1 + i:i2][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # the block's errors, onto every later column at once
    return codes[:, inv_perm].to(torch.uint8), scale.float(), zero


class _Stop(Exception):
    """Raised by a hook once the layer being calibrated has seen its input: the rest of the forward is waste."""


def _first_input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["input"]


def _run(model: nn.Module, batch) -> None:
    try:
        model(**batch) if isinstance(batch, dict) else model(batch)
    except _Stop:
        pass


def _call_groups(model, targets: dict, batch) -> list[list[str]]:
    """Targets in call order, consecutive calls on the very same input tensor grouped (q/k/v; gate/up)."""
    calls, handles = [], []
    for fqn, mod in targets.items():
        def hook(m, args, kwargs, fqn=fqn):
            # Keep the tensor itself: an id() or data_ptr() of a freed input can be reused by the
            # next layer's input, which would group unrelated layers (seen: down_proj with q_proj).
            calls.append((fqn, _first_input(args, kwargs)))
        handles.append(mod.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        _run(model, batch)
    finally:
        for h in handles:
            h.remove()
    groups, seen, last = [], set(), None
    for fqn, x in calls:
        if fqn in seen:
            continue
        seen.add(fqn)
        if groups and x is last:
            groups[-1].append(fqn)
        else:
            groups.append([fqn])
        last = x
    missing = sorted(set(targets) - seen)
    if missing:
        raise ValueError(f"model: layers {missing} are never called by a forward pass; exclude them with filter_fn")
    return groups


@torch.no_grad()
def gptq_quantize_(model: nn.Module, calibration_batches, config: Int4WeightOnly = Int4WeightOnly(),
                   filter_fn=None, act_order: bool = False, damp: float = 0.01, block_size: int = 128,
                   progress: bool = True) -> nn.Module:
    """Quantize ``model``'s Linear layers (same selection as ``quantize_``) with GPTQ, in place; returns it.

    ``calibration_batches``: input-id tensors (or dicts of model kwargs), a few thousand tokens
    of text like the text the model will see. Layers are done in call order, each calibrated on
    the outputs of the already-quantized layers before it (as in the paper), stopping each
    forward pass as soon as the layer has its input.
    """
    if not isinstance(config, Int4WeightOnly):
        raise TypeError(f"config: GPTQ produces Int4WeightOnly layers, got {type(config).__name__}")
    batches = list(calibration_batches)
    if not batches:
        raise ValueError("calibration_batches: empty; GPTQ needs calibration inputs")
    targets = dict(select_linears(model, filter_fn))
    for fqn, lin in targets.items():
        if lin.in_features % config.group_size:
            raise ValueError(f"in_features: {lin.in_features} of {fqn!r} is not divisible by "
                             f"group_size={config.group_size}")
        check_finite(lin.weight.detach(), f"linear ({fqn!r}).weight")
    was_training = model.training
    model.eval()
    try:
        groups = _call_groups(model, targets, batches[0])
        with tqdm(total=len(targets), desc="GPTQ", unit="layer", disable=not progress) as bar:
            for group in groups:
                first = targets[group[0]]
                acc = HessianAccumulator(first.in_features, device=first.weight.device)

                def hook(m, args, kwargs):
                    acc.update(_first_input(args, kwargs))
                    raise _Stop

                handle = first.register_forward_pre_hook(hook, with_kwargs=True)
                try:
                    for batch in batches:
                        _run(model, batch)
                finally:
                    handle.remove()
                hessian = acc.hessian()
                for fqn in group:  # same input, same Hessian
                    lin = targets[fqn]
                    codes, scale, zero = gptq_quantize_weight(lin.weight, hessian, config.group_size, act_order,
                                                              damp, block_size)
                    set_submodule(model, fqn, Int4WeightOnlyLinear.from_codes(lin, config, codes, scale, zero))
                    bar.set_postfix_str(fqn, refresh=False)
                    bar.update(1)
    finally:
        model.train(was_training)
    return model
