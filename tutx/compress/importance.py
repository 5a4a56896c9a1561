"""Which heads matter: the gradient score of Michel et al. (2019), and the mean attention that does not work.

**Gradient score.** Put a gate ``m_h`` (1.0) on every head's output and take the loss's gradient
with respect to it: ``I_h = E_batches |dL/dm_h|``, the first-order change of the loss when the
head is removed. Michel et al. normalise the scores of each layer to unit L2 norm and prune the
lowest globally. A few batches suffice to rank heads (the tiny LM: 4 batches of 8 x 128 tokens,
a few seconds on a laptop CPU)::

    from tutx.compress import head_importance, heads_to_prune, prune_heads_
    from tutx.train import random_windows

    scores = head_importance(model, random_windows(train_ids, 8, 128, 4, seed=1))  # [layers, heads]
    prune_heads_(model, heads_to_prune(scores, 0.3))  # the 30% least important heads go

**Mean attention weight** (the seed's score): every row of a softmax sums to 1, so a head's
attention weights averaged over queries and keys are ``1 / S`` for *every* head; the score is a
constant, and ranking by it is ranking by rounding noise.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import torch

from tutx._validate import check_bool, check_int, check_probability
from tutx.compress.heads import head_mask
from tutx.compress.structure import family, head_counts

__all__ = ["head_importance", "heads_to_prune", "mean_attention_score", "run_batch"]


def run_batch(model, batch):
    """``model(**batch)`` for a mapping (tokenizer output), else ``model(input_ids=batch)``."""
    device = next(model.parameters()).device
    if isinstance(batch, Mapping):
        return model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
    return model(input_ids=batch.to(device))


def _scores_tensor(rows: list[torch.Tensor]) -> torch.Tensor:
    """``[layers, max heads]`` float32 on the CPU, NaN where a pruned layer has fewer heads."""
    out = torch.full((len(rows), max(len(r) for r in rows)), math.nan)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r.float().cpu()
    return out


def head_importance(model, batches: Iterable, loss_fn: Callable | None = None, normalize: bool = True
                    ) -> torch.Tensor:
    """Michel et al.'s head importance ``E |dL/dm_h|``: a ``[layers, heads]`` float32 tensor.

    ``batches``: input_ids tensors ``[B, S]`` (or dicts for ``model(**batch)``); ``loss_fn(model,
    batch)`` defaults to the next-token loss of a causal LM (an encoder needs its own, e.g. a
    contrastive loss on sentence pairs). ``normalize`` scales each layer's scores to unit L2 norm,
    as in the paper. Weights get no gradient (they are frozen during the call); the model runs in
    eval mode and is restored afterwards.
    """
    check_bool("normalize", normalize)
    if loss_fn is None:
        if family(model) != "llama":
            raise ValueError("loss_fn: required for an encoder (the default is a causal LM's next-token loss)")
        from tutx.train import causal_lm_loss
        loss_fn = causal_lm_loss
    device = next(model.parameters()).device
    masks = [torch.ones(n, device=device, requires_grad=True) for n in head_counts(model)]
    total = [torch.zeros(n, dtype=torch.float64) for n in head_counts(model)]
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    n_batches = 0
    try:
        for p, _ in frozen:
            p.requires_grad_(False)
        model.eval()
        with head_mask(model, masks):
            for batch in batches:
                if isinstance(batch, torch.Tensor):
                    batch = batch.to(device)
                loss = loss_fn(model, batch)
                grads = torch.autograd.grad(loss, masks)
                for t, g in zip(total, grads):
                    t += g.detach().abs().double().cpu()
                n_batches += 1
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)
    if n_batches == 0:
        raise ValueError("batches: is empty; expected at least one batch")
    scores = [t / n_batches for t in total]
    if normalize:
        scores = [s / s.norm().clamp(min=1e-20) for s in scores]
    return _scores_tensor(scores)


@torch.no_grad()
def mean_attention_score(model, batches: Iterable) -> torch.Tensor:
    """The seed's score: each head's attention weights averaged over batch, queries and keys, ``[layers, heads]``.

    Runs the model with eager attention (the only kind that returns its weights), then restores
    the model's attention implementation. Every softmax row sums to one, so each score is
    ``1 / S`` up to rounding: it says nothing about the head.
    """
    impl = model.config._attn_implementation
    was_training = model.training
    model.eval()
    total, n = None, 0
    try:
        model.set_attn_implementation("eager")
        for batch in batches:
            inputs = dict(batch) if isinstance(batch, Mapping) else {"input_ids": batch}
            out = run_batch(model, {**inputs, "output_attentions": True})
            means = torch.stack([a.double().mean(dim=(0, 2, 3)) for a in out.attentions])  # [L, H]
            total = means if total is None else total + means
            n += 1
    finally:
        model.set_attn_implementation(impl)
        model.train(was_training)
    if n == 0:
        raise ValueError("batches: is empty; expected at least one batch")
    return (total / n).float().cpu()


def heads_to_prune(scores: torch.Tensor, fraction: float, min_heads: int = 1) -> dict[int, list[int]]:
    """The ``round(fraction * heads)`` lowest-scoring heads, ``{layer: [head, ...]}``, ranked globally.

    A layer keeps at least ``min_heads`` heads (the next-lowest head elsewhere goes instead).
    Ties keep index order (a stable sort). NaN scores (heads a pruned layer lacks) are skipped.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise TypeError(f"scores: expected a [layers, heads] tensor, got "
                        f"{tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__}")
    check_probability("fraction", fraction, allow_one=False)
    check_int("min_heads", min_heads, minimum=1)
    present = ~torch.isnan(scores)
    alive = present.sum(1).tolist()
    target = round(fraction * int(present.sum()))
    flat = scores.flatten()
    order = torch.sort(torch.where(present.flatten(), flat, torch.inf), stable=True).indices.tolist()
    plan: dict[int, list[int]] = {}
    for i in order:
        if target == 0:
            break
        layer, head = divmod(i, scores.shape[1])
        if not present[layer, head] or alive[layer] <= min_heads:
            continue
        plan.setdefault(layer, []).append(head)
        alive[layer] -= 1
        target -= 1
    return {layer: sorted(h) for layer, h in sorted(plan.items())}
