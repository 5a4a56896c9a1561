"""FFN (MLP) width pruning: remove the intermediate neurons that contribute least.

An FFN neuron ``j`` is row ``j`` of each input projection (Llama: ``gate_proj`` and ``up_proj``;
BERT: ``intermediate.dense``) and column ``j`` of the output projection (``down_proj``,
``output.dense``). What it adds to the residual stream is ``a_j * W_out[:, j]``, so its importance
is the size of that contribution:

- ``"activation"`` (needs a few batches, as Minitron does): ``E|a_j| * ||W_out[:, j]||``;
- ``"weight"`` (no data): ``||W_in[j, :]|| * ||W_out[:, j]||`` over the input projections.

A neuron of importance 0 adds nothing, so removing it leaves the outputs unchanged::

    prune_ffn_(model, 0.25, batches=random_windows(train_ids, 8, 128, 4, seed=1))  # a quarter of each layer
"""
from __future__ import annotations

from collections.abc import Iterable

import torch

from tutx._validate import check_choice, check_int, check_probability
from tutx.compress.importance import run_batch
from tutx.compress.structure import (
    ffn_projections,
    keep_cols,
    keep_rows,
    layers,
    layout,
)

__all__ = ["METHODS", "ffn_importance", "prune_ffn_"]

METHODS = ("activation", "weight")


@torch.no_grad()
def ffn_importance(model, batches: Iterable | None = None, method: str = "activation") -> list[torch.Tensor]:
    """One float32 tensor ``[intermediate]`` of neuron importances per layer (see the module docstring)."""
    check_choice("method", method, METHODS)
    blocks = layers(model)
    out_norms = [ffn_projections(b)[1].weight.float().norm(dim=0).cpu() for b in blocks]  # each [I]
    if method == "weight":
        scores = []
        for block, norm_out in zip(blocks, out_norms):
            ins, _ = ffn_projections(block)
            norm_in = torch.stack([lin.weight.float().norm(dim=1).cpu() for lin in ins]).prod(0)  # [I]
            scores.append(norm_in * norm_out)
        return scores
    if batches is None:
        raise ValueError("batches: method='activation' needs a few batches of inputs (or use method='weight')")
    sums = [torch.zeros(n, dtype=torch.float64) for n in (s.numel() for s in out_norms)]
    counts = [0]
    handles = []

    def record(i):
        def hook(module, args):
            a = args[0].detach().abs().double().flatten(0, -2)  # [tokens, I]
            sums[i] += a.sum(0).cpu()
            if i == 0:
                counts[0] += a.shape[0]
        return hook

    was_training = model.training
    model.eval()
    try:
        for i, block in enumerate(blocks):
            handles.append(ffn_projections(block)[1].register_forward_pre_hook(record(i)))
        for batch in batches:
            run_batch(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if counts[0] == 0:
        raise ValueError("batches: is empty; expected at least one batch")
    return [(s / counts[0]).float() * n for s, n in zip(sums, out_norms)]


def _plan(model, amount) -> dict[int, int]:
    """``amount`` (a ratio, or ``{layer: neurons to remove}``) as ``{layer: n_remove}``."""
    sizes = layout(model)["intermediate"]
    if isinstance(amount, dict):
        plan = {}
        for layer, n in amount.items():
            check_int("amount: layer", layer, minimum=0)
            if layer >= len(sizes):
                raise ValueError(f"amount: layer {layer} does not exist (the model has layers 0..{len(sizes) - 1})")
            check_int(f"amount[{layer}]", n, minimum=0)
            if n >= sizes[layer]:
                raise ValueError(f"amount[{layer}]: {n} would remove all {sizes[layer]} neurons of layer {layer}; "
                                 f"expected at most {sizes[layer] - 1}")
            plan[layer] = n
        return plan
    if isinstance(amount, bool) or not isinstance(amount, (int, float)):
        raise TypeError(f"amount: expected a ratio in [0, 1) or a dict {{layer: n}}, got {type(amount).__name__}")
    check_probability("amount", amount, allow_one=False)
    return {i: min(round(amount * n), n - 1) for i, n in enumerate(sizes)}


@torch.no_grad()
def prune_ffn_(model, amount, importance: list[torch.Tensor] | None = None, batches: Iterable | None = None,
               method: str = "activation"):
    """Remove the least important FFN neurons of ``model`` in place; returns ``model``.

    ``amount``: a ratio in ``[0, 1)`` (that fraction of every layer's neurons, rounded) or
    ``{layer: n}`` (remove ``n`` neurons of that layer). ``importance`` (one tensor per layer, e.g.
    from :func:`ffn_importance`) defaults to ``ffn_importance(model, batches, method)``; ``"weight"``
    needs no batches. The lowest-scoring neurons go (ties: lowest index first); the survivors keep
    their order. ``config.pruned_layout`` records the new widths; for a model whose layers keep
    equal widths, ``config.intermediate_size`` is updated too.
    """
    plan = _plan(model, amount)
    blocks = layers(model)
    if importance is None:
        importance = ffn_importance(model, batches, method)
    sizes = layout(model)["intermediate"]
    if len(importance) != len(blocks) or any(len(s) != n for s, n in zip(importance, sizes)):
        raise ValueError(f"importance: expected one score per neuron, {sizes} per layer")
    for layer, n_remove in plan.items():
        if n_remove == 0:
            continue
        ins, out = ffn_projections(blocks[layer])
        order = torch.sort(importance[layer].float(), stable=True).indices  # ascending
        keep = order[n_remove:].sort().values.to(out.weight.device)
        for lin in ins:
            keep_rows(lin, keep)
        keep_cols(out, keep)
        if hasattr(blocks[layer], "mlp"):
            blocks[layer].mlp.intermediate_size = keep.numel()
    model.config.pruned_layout = layout(model)
    widths = set(model.config.pruned_layout["intermediate"])
    if len(widths) == 1:
        model.config.intermediate_size = widths.pop()
    return model

