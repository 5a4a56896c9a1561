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
    finetune_qat(model, random_windows(train_ids, 8, 128, 200))  # a short fine-tune (tutx.train)
    convert_qat_(model)                                          # -> packed Int4WeightOnlyLinear

Per-channel INT4 is stored in :class:`~tutx.quant.Int4WeightOnlyLinear` (whose kernel takes
groups of 32, 64 or 128) by repeating each row's one scale and zero point over every group of the
row — the same numbers, a few more bytes of scales. Converting right after ``prepare_qat_`` (no
training) is plain round-to-nearest: the PTQ baseline QAT is compared with.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from tutx.quant.api import select_linears, set_submodule
from tutx.quant.fake_quant_linear import FakeQuantLinear
from tutx.quant.qat_configs import QATConfig, check_qat_config
from tutx.train import causal_lm_loss, check_token_batch, distillation_loss, train


def prepare_qat_(model: nn.Module, config: QATConfig, filter_fn=None) -> nn.Module:
    """Swap the selected ``nn.Linear`` layers of ``model`` for :class:`FakeQuantLinear`, in place; returns it.

    Same selection as :func:`~tutx.quant.quantize_` (default: every Linear but the LM head).
    Every layer is checked before any is swapped. Refuses a model that is already prepared or
    already (post-training) quantized.
    """
    check_qat_config(config)
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


def finetune_qat(model: nn.Module, token_batches: Iterable[torch.Tensor], steps: int | None = None,
                 lr: float = 1e-4, *, teacher: nn.Module | None = None, schedule: str = "cosine",
                 warmup_steps: int = 0, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
                 seed: int | None = 0, progress: bool = True) -> list[float]:
    """A short AdamW fine-tune of a model after :func:`prepare_qat_`; returns the loss of every step.

    ``token_batches``: tensors of ``input_ids`` ``[batch, seq_len]`` (e.g. from
    :func:`tutx.train.random_windows`). The loss is next-token cross-entropy, or with ``teacher``
    (the float model) :func:`tutx.train.distillation_loss` — less noisy, and aimed at recovering
    exactly what quantization lost. Runs :func:`tutx.train.train` (see it for ``steps``,
    ``schedule``, ``warmup_steps``, ``seed``...). The teacher's train/eval mode is restored.
    """
    if teacher is not None and (not isinstance(teacher, nn.Module) or teacher is model):
        raise TypeError("teacher: expected a separate nn.Module (the float model), "
                        f"got {'the model itself' if teacher is model else type(teacher).__name__}")
    step = iter(range(1 << 62))

    def loss_fn(m: nn.Module, batch) -> torch.Tensor:
        x = check_token_batch(batch, next(step))  # [B, T]
        return causal_lm_loss(m, x) if teacher is None else distillation_loss(m, teacher, x)

    teacher_training = teacher is not None and teacher.training
    if teacher is not None:
        teacher.eval()
    try:
        return train(model, token_batches, loss_fn, steps, lr, warmup_steps=warmup_steps, schedule=schedule,
                     weight_decay=weight_decay, max_grad_norm=max_grad_norm, seed=seed, progress=progress,
                     desc="QAT")
    finally:
        if teacher is not None:
            teacher.train(teacher_training)
