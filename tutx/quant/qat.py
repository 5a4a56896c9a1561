"""Quantization-aware training (QAT): let the model learn weights that survive rounding.

Post-training quantization (PTQ, ``quantize_``) rounds weights the model was never trained to
have. QAT fine-tunes with the rounding *in the forward pass*: every ``nn.Linear`` becomes a
:class:`FakeQuantLinear`, which keeps floating-point weights but multiplies by
``fake_quantize(weight)`` — the values the quantized model will really use. The loss therefore
sees the quantization error, and training moves the weights to where rounding hurts less.

Rounding has zero gradient almost everywhere, so the backward pass uses the **straight-through
estimator** (STE, Bengio et al. 2013): treat ``round`` as the identity, i.e. pass the gradient
through unchanged for weights inside the clipping range, and give zero gradient to weights that
were clipped to the extreme codes (moving them a little changes nothing).

The fake quantizer uses *exactly* the scheme of the real modules, so conversion is exact:

* :class:`Int8WeightOnlyQAT` — symmetric INT8, one scale per output channel
  (= :class:`~tutx.quant.Int8WeightOnly`);
* :class:`Int4WeightOnlyQAT` — asymmetric INT4 with min-max scale and zero point per group of
  ``group_size`` inputs (= :class:`~tutx.quant.Int4WeightOnly`), or per output channel with
  ``group_size=None``.

The scale and zero point are recomputed from the current weights at every forward (min-max,
no gradient through them), just as ``Int8WeightOnlyLinear.from_linear`` /
``Int4WeightOnlyLinear.from_linear`` will compute them at conversion time::

    prepare_qat_(model, Int4WeightOnlyQAT(group_size=None))   # nn.Linear -> FakeQuantLinear
    finetune_qat(model, random_windows(train_ids, 8, 128, 200))  # a short fine-tune
    convert_qat_(model)                                          # -> packed Int4WeightOnlyLinear

Per-channel INT4 is stored in :class:`~tutx.quant.Int4WeightOnlyLinear` (whose kernel takes
groups of 32, 64 or 128) by repeating each row's one scale and zero point over every group of the
row — the same numbers, a few more bytes of scales. Converting right after ``prepare_qat_`` (no
training) is plain round-to-nearest: the PTQ baseline QAT is compared with.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tutx.quant.api import select_linears, set_submodule
from tutx.quant.configs import GROUP_SIZES, Int4WeightOnly, Int8WeightOnly
from tutx.quant.modules import QUANTIZED_LINEARS, Int4WeightOnlyLinear, Int8WeightOnlyLinear, _check_linear
from tutx.quant.primitives import (_broadcast, check_bits, check_float_tensor, choose_qparams, qrange, quantize,
                                   slots_view)


# --------------------------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class Int8WeightOnlyQAT:
    """Fake-quantize weights as :class:`~tutx.quant.Int8WeightOnly` does: symmetric INT8, per output channel."""

    bits = 8
    symmetric = True
    group_size = None  # per output channel
    kind = "int8_weight_only_qat"

    def target(self) -> Int8WeightOnly:
        """The post-training config :func:`convert_qat_` converts to."""
        return Int8WeightOnly()


@dataclass(frozen=True)
class Int4WeightOnlyQAT:
    """Fake-quantize weights as :class:`~tutx.quant.Int4WeightOnly` does: asymmetric INT4, min-max per group.

    ``group_size``: 32, 64 or 128 inputs per scale and zero point, or ``None`` for one per output
    channel (coarser, so rounding hurts more — where QAT has the most to recover).
    """

    group_size: int | None = 128
    bits = 4
    symmetric = False
    kind = "int4_weight_only_qat"

    def __post_init__(self):
        if self.group_size is not None and (isinstance(self.group_size, bool) or self.group_size not in GROUP_SIZES):
            raise ValueError(f"group_size: expected None (per channel) or one of {GROUP_SIZES}, "
                             f"got {self.group_size!r}")

    def target(self, in_features: int) -> Int4WeightOnly:
        """The config of the converted layer; per channel becomes the largest group size dividing ``in_features``."""
        if self.group_size is not None:
            return Int4WeightOnly(self.group_size)
        return Int4WeightOnly(_storage_group(in_features))


QATConfig = Int8WeightOnlyQAT | Int4WeightOnlyQAT


def qat_config(bits: int, group_size: int | None = None) -> QATConfig:
    """The QAT config for ``bits`` (4 or 8); ``group_size`` applies to INT4 only (None: per channel)."""
    check_bits(bits)
    if bits == 8:
        if group_size is not None:
            raise ValueError(f"group_size: INT8 weights are per output channel; expected None, got {group_size!r}")
        return Int8WeightOnlyQAT()
    return Int4WeightOnlyQAT(group_size)


def _check_qat_config(config) -> None:
    if isinstance(config, (Int8WeightOnly, Int4WeightOnly)):
        raise TypeError(f"config: {type(config).__name__} is a post-training config; for QAT pass "
                        f"{type(config).__name__}QAT(...) (or qat_config(bits, group_size))")
    if not isinstance(config, (Int8WeightOnlyQAT, Int4WeightOnlyQAT)):
        raise TypeError(f"config: expected Int8WeightOnlyQAT or Int4WeightOnlyQAT, got {type(config).__name__}")


def _storage_group(in_features: int, where: str = "") -> int:
    """Largest kernel group size dividing ``in_features``: per-channel INT4 repeats its qparams over these groups."""
    for g in sorted(GROUP_SIZES, reverse=True):
        if in_features % g == 0:
            return g
    raise ValueError(f"in_features: per-channel INT4 is stored as groups of {GROUP_SIZES}; "
                     f"{in_features}{where} is divisible by none of them")


def _check_shape(config: QATConfig, in_features: int, fqn: str = "") -> None:
    where = f" of {fqn!r}" if fqn else ""
    if isinstance(config, Int4WeightOnlyQAT):
        if config.group_size is None:
            _storage_group(in_features, where)
        elif in_features % config.group_size:
            raise ValueError(f"in_features: {in_features}{where} is not divisible by group_size={config.group_size}")


# ------------------------------------------------------------------------------------ fake quantization
def weight_qparams(weight: torch.Tensor, config: QATConfig) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero point (None when symmetric) that the converted module will use for ``weight [N, K]``.

    Shapes: ``[N]`` per channel, ``[N, K // group_size]`` per group. Min-max, computed without
    gradient — the same call ``quantize`` makes inside the modules' ``from_linear``.
    """
    _check_qat_config(config)
    w = weight.detach().float()  # [N, K]
    axis, group = (None, config.group_size) if config.group_size is not None else (0, None)
    slots, scale_shape = slots_view(w, axis, group)  # [slots, per_slot]
    scale, zero_point = choose_qparams(slots.amin(1), slots.amax(1), config.bits, config.symmetric)
    return scale.reshape(scale_shape), None if zero_point is None else zero_point.reshape(scale_shape)


class _FakeQuantSTE(torch.autograd.Function):
    """Forward: round to the grid and back. Backward: the straight-through estimator."""

    @staticmethod
    def forward(ctx, x, scale, zero_point, qmin: int, qmax: int):
        q = torch.round(x.float() * scale.reciprocal())  # [N, K], half-to-even as in quantize_codes
        if zero_point is not None:
            q = q + zero_point
        inside = (q >= qmin) & (q <= qmax)  # weights that were not clipped
        q = torch.clamp(q, qmin, qmax)
        if zero_point is not None:
            q = q - zero_point
        ctx.save_for_backward(inside)
        return (q * scale).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside, None, None, None, None  # identity inside the range, zero where clipped


def fake_quantize_ste(x: torch.Tensor, bits: int = 8, *, symmetric: bool = True, axis: int | None = None,
                      group_size: int | None = None, scale: torch.Tensor | None = None,
                      zero_point: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`~tutx.quant.fake_quantize` with a straight-through gradient: differentiable w.r.t. ``x``.

    Same arguments and forward values (bit for bit) as ``fake_quantize``; the gradient is passed
    through where ``x`` lies inside the clipping range and is zero where it was clipped. Without
    ``scale`` the range is min-max of ``x`` (then nothing is clipped); the qparams get no gradient.
    """
    check_float_tensor(x)
    with torch.no_grad():
        q = quantize(x.detach(), bits, symmetric=symmetric, axis=axis, group_size=group_size, scale=scale,
                     zero_point=zero_point)  # validates everything, and chooses qparams when not given
    s = _broadcast(q.scale, x, q.axis, q.group_size)
    z = None if q.zero_point is None else _broadcast(q.zero_point, x, q.axis, q.group_size).float()
    qmin, qmax = qrange(bits, symmetric)
    return _FakeQuantSTE.apply(x, s, z, qmin, qmax)


def _fake_quantize_weight(weight: torch.Tensor, config: QATConfig) -> torch.Tensor:
    """The hot path of :class:`FakeQuantLinear`: no validation, qparams as in :func:`weight_qparams`."""
    scale, zero_point = weight_qparams(weight, config)
    axis, group = (None, config.group_size) if config.group_size is not None else (0, None)
    s = _broadcast(scale, weight, axis, group)  # [N, K] or [N, 1]
    z = None if zero_point is None else _broadcast(zero_point, weight, axis, group).float()
    qmin, qmax = qrange(config.bits, config.symmetric)
    return _FakeQuantSTE.apply(weight, s, z, qmin, qmax)


class FakeQuantLinear(nn.Module):
    """``y = x @ fake_quantize(W).T + b``: an ``nn.Linear`` that trains through its own rounding.

    Holds the floating-point ``weight [out, in]`` and ``bias [out]`` as parameters (shared with the
    ``nn.Linear`` it was made from); :meth:`convert` turns it into the packed quantized module.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 config: QATConfig = Int4WeightOnlyQAT(), device=None, dtype=None):
        super().__init__()
        _check_qat_config(config)
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        _check_shape(config, in_features)
        self.in_features, self.out_features, self.config = in_features, out_features, config
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's init, for modules built from scratch

    @classmethod
    def from_linear(cls, linear: nn.Linear, config: QATConfig, fqn: str = "") -> "FakeQuantLinear":
        """Wrap ``linear``, sharing (not copying) its weight and bias parameters."""
        _check_qat_config(config)
        if isinstance(linear, (FakeQuantLinear, *QUANTIZED_LINEARS)):
            raise ValueError(f"linear ({fqn or 'linear'!r}): is already a {type(linear).__name__}")
        _check_linear(linear, fqn)  # an nn.Linear with real, finite 2-D weights
        _check_shape(config, linear.in_features, fqn)
        mod = cls.__new__(cls)
        nn.Module.__init__(mod)
        mod.in_features, mod.out_features, mod.config = linear.in_features, linear.out_features, config
        mod.register_parameter("weight", linear.weight)
        mod.register_parameter("bias", linear.bias)  # None when the Linear has no bias
        return mod

    def fake_quantized_weight(self) -> torch.Tensor:
        """The weight the converted module will hold, ``[out, in]``, differentiable by the STE."""
        return _fake_quantize_weight(self.weight, self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"x: expected last dimension {self.in_features}, got shape {tuple(x.shape)}")
        return F.linear(x, self.fake_quantized_weight().to(x.dtype), self.bias)

    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` sharing this module's parameters (undoes :func:`prepare_qat_` for this layer)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        lin.weight = self.weight
        lin.bias = self.bias
        return lin

    def convert(self, fqn: str = "") -> nn.Module:
        """The real quantized module: ``Int8WeightOnlyLinear`` or ``Int4WeightOnlyLinear``, same numbers."""
        lin = self.to_linear()
        if isinstance(self.config, Int8WeightOnlyQAT):
            return Int8WeightOnlyLinear.from_linear(lin, self.config.target(), fqn=fqn)
        target = self.config.target(self.in_features)
        if self.config.group_size is not None:
            return Int4WeightOnlyLinear.from_linear(lin, target, fqn=fqn)
        w = _check_linear(lin, fqn)  # [N, K]
        q = quantize(w, 4, symmetric=False, axis=0)  # one scale and zero point per output channel: [N]
        groups = self.in_features // target.group_size
        scale = q.scale[:, None].expand(-1, groups)  # [N, groups]: the row's scale in every group
        zero = q.zero_point[:, None].expand(-1, groups)  # [N, groups]
        return Int4WeightOnlyLinear.from_codes(lin, target, q.data, scale, zero)

    def extra_repr(self) -> str:
        gran = "per-channel" if self.config.group_size is None else f"group_size={self.config.group_size}"
        return (f"in={self.in_features}, out={self.out_features}, int{self.config.bits}, {gran}"
                + ("" if self.bias is not None else ", bias=False"))


# ------------------------------------------------------------------------------------- model-level API
def prepare_qat_(model: nn.Module, config: QATConfig, filter_fn=None) -> nn.Module:
    """Swap the selected ``nn.Linear`` layers of ``model`` for :class:`FakeQuantLinear`, in place; returns it.

    Same selection as :func:`~tutx.quant.quantize_` (default: every Linear but the LM head).
    Every layer is checked before any is swapped. Refuses a model that is already prepared or
    already (post-training) quantized.
    """
    _check_qat_config(config)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    prepared = [fqn for fqn, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    if prepared:
        raise ValueError(f"model: already prepared for QAT ({len(prepared)} FakeQuantLinear layers, e.g. "
                         f"{prepared[0]!r}); call convert_qat_ (or unprepare_qat_) first")
    selected = select_linears(model, filter_fn)  # refuses already-quantized layers
    if not selected:
        raise ValueError("model: no nn.Linear layer selected; nothing to prepare")
    swaps = [(fqn, FakeQuantLinear.from_linear(lin, config, fqn)) for fqn, lin in selected]
    for fqn, new in swaps:
        set_submodule(model, fqn, new)
    return model


def _fake_quant_layers(model: nn.Module) -> list[tuple[str, FakeQuantLinear]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    layers = [(fqn, m) for fqn, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    if not layers:
        raise ValueError("model: has no FakeQuantLinear layers; call prepare_qat_ first")
    return layers


def convert_qat_(model: nn.Module) -> nn.Module:
    """Replace every :class:`FakeQuantLinear` by its packed quantized module, in place; returns ``model``.

    The converted model computes what the fake-quantized one did (up to float summation order),
    with a quarter (INT8) or an eighth (INT4) of the fp32 weight bytes.
    """
    swaps = [(fqn, m.convert(fqn)) for fqn, m in _fake_quant_layers(model)]
    for fqn, new in swaps:
        set_submodule(model, fqn, new)
    return model


def unprepare_qat_(model: nn.Module) -> nn.Module:
    """Undo :func:`prepare_qat_`: back to plain ``nn.Linear`` layers with the (trained) float weights."""
    for fqn, m in _fake_quant_layers(model):
        set_submodule(model, fqn, m.to_linear())
    return model


# --------------------------------------------------------------------------------------------- training
def random_windows(ids: torch.Tensor, batch_size: int, seq_len: int, num_batches: int, seed: int = 0):
    """``num_batches`` batches ``[batch_size, seq_len]`` of random windows of the 1-D token stream ``ids``.

    A list, so it can be iterated again; seeded, so runs are reproducible.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.is_floating_point():
        raise ValueError(f"ids: expected a 1-D integer tensor of token ids, got "
                         f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len), ("num_batches", num_batches)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name}: expected a positive int, got {v!r}")
    if ids.numel() < seq_len + 1:
        raise ValueError(f"ids: {ids.numel()} tokens is too short for seq_len={seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (num_batches, batch_size), generator=gen)
    offsets = torch.arange(seq_len)
    return [ids[s[:, None] + offsets] for s in starts]  # each [batch_size, seq_len]


def _check_batch(x, step: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.dtype == torch.bool:
        raise TypeError(f"token_batches: batch {step} is not an integer tensor of input_ids "
                        f"(got {type(x).__name__}{'' if not isinstance(x, torch.Tensor) else ' ' + str(x.dtype)})")
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[1] < 2:
        raise ValueError(f"token_batches: batch {step} has shape {tuple(x.shape)}; expected [batch, seq_len >= 2]")
    return x


def _batches(token_batches, steps):
    """Yield up to ``steps`` batches, going round a re-iterable (list, DataLoader) as often as needed."""
    n = 0
    while True:
        empty = True
        for batch in token_batches:
            empty = False
            yield batch
            n += 1
            if steps is not None and n >= steps:
                return
        if empty and n == 0:
            raise ValueError("token_batches: is empty; expected at least one tensor of input_ids")
        if steps is None or empty or iter(token_batches) is token_batches:  # one pass, or an exhausted iterator
            return


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on ``input_ids [B, T]`` (logits at t predict token t+1)."""
    out = model(input_ids=input_ids)
    logits = getattr(out, "logits", out)  # [B, T, V]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


def distillation_loss(model: nn.Module, teacher: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || model)`` of the next-token distributions, averaged over the tokens of ``input_ids [B, T]``.

    Soft targets from the float model: the quantized student is pulled back towards what the
    model computed before quantization, not towards the one-hot next token of the training text.
    """
    with torch.no_grad():
        t_out = teacher(input_ids=input_ids)
        t_logp = F.log_softmax(getattr(t_out, "logits", t_out).float(), dim=-1).flatten(0, 1)  # [B*T, V]
    out = model(input_ids=input_ids)
    s_logp = F.log_softmax(getattr(out, "logits", out).float(), dim=-1).flatten(0, 1)  # [B*T, V]
    return F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean")


SCHEDULES = ("cosine", "constant")


def finetune_qat(model: nn.Module, token_batches: Iterable[torch.Tensor], steps: int | None = None,
                 lr: float = 1e-4, *, teacher: nn.Module | None = None, schedule: str = "cosine",
                 weight_decay: float = 0.0, max_grad_norm: float | None = 1.0, progress: bool = True) -> list[float]:
    """A short AdamW fine-tune of ``model``; returns the loss of every step.

    ``token_batches``: tensors of ``input_ids`` ``[batch, seq_len]`` (e.g. from :func:`random_windows`).
    ``steps=None`` makes one pass; a larger ``steps`` goes round a list again (an iterator is
    used once). The loss is next-token cross-entropy, or with ``teacher`` (the float model) the
    distillation loss :func:`distillation_loss` — less noisy, and aimed at recovering exactly what
    quantization lost. ``schedule="cosine"`` decays the learning rate from ``lr`` to 0 over the
    steps (so the last, noisiest updates are small); ``"constant"`` keeps it.

    Generic — it trains any causal LM — but meant for a model after :func:`prepare_qat_`, whose
    forward pass includes the rounding. Raises ``ValueError`` if the loss becomes NaN or
    infinite. The model's train/eval mode is restored afterwards.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if teacher is not None and (not isinstance(teacher, nn.Module) or teacher is model):
        raise TypeError("teacher: expected a separate nn.Module (the float model), "
                        f"got {'the model itself' if teacher is model else type(teacher).__name__}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps: expected None or a positive int, got {steps!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"lr: expected a positive learning rate, got {lr!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {SCHEDULES}, got {schedule!r}")
    if isinstance(token_batches, torch.Tensor):
        raise TypeError("token_batches: expected an iterable of input_ids tensors, got a single tensor; "
                        "wrap it in a list")
    total = steps if steps is not None else (len(token_batches) if hasattr(token_batches, "__len__") else None)
    if schedule == "cosine" and total is None:
        raise ValueError("steps: the cosine schedule needs the number of steps; pass steps= or schedule='constant'")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no trainable parameters")
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    was_training, teacher_training = model.training, teacher is not None and teacher.training
    model.train()
    if teacher is not None:
        teacher.eval()
    try:
        with tqdm(total=total, desc="QAT", unit="step", disable=not progress) as bar:
            for step, batch in enumerate(_batches(token_batches, steps)):
                x = _check_batch(batch, step).to(device)  # [B, T]
                if schedule == "cosine":
                    for group in opt.param_groups:
                        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                loss = causal_lm_loss(model, x) if teacher is None else distillation_loss(model, teacher, x)
                value = loss.item()
                if not math.isfinite(value):
                    raise ValueError(f"loss: became {value} at step {step}; lower lr (now {lr}) or check the weights")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                opt.step()
                losses.append(value)
                bar.set_postfix(loss=f"{value:.4f}", refresh=False)
                bar.update(1)
    finally:
        model.train(was_training)
        if teacher is not None:
            teacher.train(teacher_training)
        opt.zero_grad(set_to_none=True)
    return losses
