"""A small, reusable training loop for fine-tuning a causal LM (QAT in Chapter 3, distillation in Chapter 2).

:func:`train` is AdamW with a linear warm-up then a cosine (or constant) learning rate, gradient
clipping, a progress bar and a fixed seed; the loss is whatever ``loss_fn(model, batch)`` returns.
:func:`causal_lm_loss` and :func:`distillation_loss` are the two losses the course uses, and
:func:`random_windows` makes seeded batches of token windows from a token stream::

    batches = random_windows(train_ids, batch_size=8, seq_len=128, num_batches=200)
    losses = train(model, batches, causal_lm_loss, lr=1e-4, warmup_steps=10)
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from tutx._validate import check_choice, check_int, check_number, check_optional_int, check_positive, check_positive_int
from tutx.compress.distill import kd_loss

__all__ = ["train", "lr_at", "causal_lm_loss", "distillation_loss", "random_windows", "SCHEDULES"]

SCHEDULES = ("cosine", "constant")


def random_windows(ids: torch.Tensor, batch_size: int, seq_len: int, num_batches: int, seed: int = 0
                   ) -> list[torch.Tensor]:
    """``num_batches`` batches ``[batch_size, seq_len]`` of random windows of the 1-D token stream ``ids``.

    A list, so it can be iterated again; seeded, so runs are reproducible.
    """
    if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.is_floating_point():
        raise ValueError(f"ids: expected a 1-D integer tensor of token ids, got "
                         f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
    for name, v in (("batch_size", batch_size), ("seq_len", seq_len), ("num_batches", num_batches)):
        check_positive_int(name, v)
    check_int("seed", seed)
    if ids.numel() < seq_len + 1:
        raise ValueError(f"ids: {ids.numel()} tokens is too short for seq_len={seq_len}")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seq_len + 1, (num_batches, batch_size), generator=gen)
    offsets = torch.arange(seq_len)
    return [ids[s[:, None] + offsets] for s in starts]  # each [batch_size, seq_len]


def check_token_batch(x, step: int) -> torch.Tensor:
    """Batch ``step`` is integer ``input_ids [B, T]`` (a 1-D tensor becomes one row), ``T >= 2``."""
    if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.dtype == torch.bool:
        raise TypeError(f"token_batches: batch {step} is not an integer tensor of input_ids "
                        f"(got {type(x).__name__}{'' if not isinstance(x, torch.Tensor) else ' ' + str(x.dtype)})")
    if x.dim() == 1:
        x = x[None]
    if x.dim() != 2 or x.shape[1] < 2:
        raise ValueError(f"token_batches: batch {step} has shape {tuple(x.shape)}; expected [batch, seq_len >= 2]")
    return x


def causal_lm_loss(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of ``model`` on ``input_ids [B, T]`` (logits at t predict token t+1)."""
    out = model(input_ids=input_ids)
    logits = getattr(out, "logits", out)  # [B, T, V]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten())


def distillation_loss(model: nn.Module, teacher: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """``KL(teacher || model)`` of the next-token distributions, averaged over the tokens of ``input_ids [B, T]``.

    Soft targets from the teacher: the student is pulled towards what the teacher predicts, not
    towards the one-hot next token of the training text. This is
    :func:`tutx.compress.distill.kd_loss` at temperature 1 without labels (the one implementation).
    """
    with torch.no_grad():
        t_out = teacher(input_ids=input_ids)
    out = model(input_ids=input_ids)
    return kd_loss(getattr(out, "logits", out), getattr(t_out, "logits", t_out), temperature=1.0)


def lr_at(step: int, total: int | None, lr: float, warmup_steps: int = 0, schedule: str = "cosine") -> float:
    """The learning rate of ``step`` (0-based): linear warm-up over ``warmup_steps``, then cosine to 0 or constant."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(total - warmup_steps, 1)))


def _batches(batches, steps):
    """Yield up to ``steps`` batches, going round a re-iterable (list, DataLoader) as often as needed."""
    n = 0
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
            n += 1
            if steps is not None and n >= steps:
                return
        if empty and n == 0:
            raise ValueError("token_batches: is empty; expected at least one tensor of input_ids")
        if steps is None or empty or iter(batches) is batches:  # one pass, or an exhausted iterator
            return


def train(model: nn.Module, batches: Iterable, loss_fn: Callable[[nn.Module, object], torch.Tensor],
          steps: int | None = None, lr: float = 1e-4, *, warmup_steps: int = 0, schedule: str = "cosine",
          weight_decay: float = 0.0, max_grad_norm: float | None = 1.0, seed: int | None = 0,
          progress: bool = True, desc: str = "train",
          callback: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``model`` on ``batches`` with AdamW, minimising ``loss_fn(model, batch)``; returns each step's loss.

    ``steps=None`` makes one pass over ``batches``; a larger ``steps`` goes round a list again
    (an iterator is used once). Tensor batches are moved to the model's device. The learning
    rate warms up linearly over ``warmup_steps``, then follows ``schedule`` ("cosine": down to 0
    at the last step, so the last, noisiest updates are small; "constant"). Gradients are clipped
    to ``max_grad_norm`` (None: no clipping). ``seed`` seeds torch's global generator first
    (dropout, sampling inside ``loss_fn``), so a run repeats; None leaves it alone. Raises
    ``ValueError`` if the loss becomes NaN or infinite. The model's train/eval mode is restored.
    ``callback(step, loss)``, if given, runs after each optimiser step (periodic evaluation; the
    model is put back in training mode after it).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn: expected a function (model, batch) -> loss, got {type(loss_fn).__name__}")
    check_optional_int("steps", steps, minimum=1)
    check_positive("lr", lr)
    check_int("warmup_steps", warmup_steps, minimum=0)
    check_choice("schedule", schedule, SCHEDULES)
    check_number("weight_decay", weight_decay, minimum=0)
    if max_grad_norm is not None:
        check_positive("max_grad_norm", max_grad_norm)
    check_optional_int("seed", seed)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a function (step, loss) -> None, got {type(callback).__name__}")
    if isinstance(batches, torch.Tensor):
        raise TypeError("token_batches: expected an iterable of input_ids tensors, got a single tensor; "
                        "wrap it in a list")
    total = steps if steps is not None else (len(batches) if hasattr(batches, "__len__") else None)
    if schedule == "cosine" and total is None:
        raise ValueError("steps: the cosine schedule needs the number of steps; pass steps= or schedule='constant'")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model: has no trainable parameters")
    if seed is not None:
        torch.manual_seed(seed)
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    losses: list[float] = []
    was_training = model.training
    model.train()
    try:
        with tqdm(total=total, desc=desc, unit="step", disable=not progress) as bar:
            for step, batch in enumerate(_batches(batches, steps)):
                if isinstance(batch, torch.Tensor):
                    batch = batch.to(device)
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, total, lr, warmup_steps, schedule)
                loss = loss_fn(model, batch)
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
                if callback is not None:
                    callback(step, value)
                    model.train()
    finally:
        model.train(was_training)
        opt.zero_grad(set_to_none=True)
    return losses
