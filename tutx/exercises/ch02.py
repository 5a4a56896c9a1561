"""Checks for Chapter 2's exercises (model compression).

Each ``check_…(fn)`` runs your function on cases generated inside the check (hidden: not the
ones shown in the notebook) and compares it with a reference solution. It prints ``✅ …`` when
all cases pass, ``✏️ … not solved yet`` while your function is still the stub, and raises an
``AssertionError`` naming the first failing case otherwise.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tutx.compress.distill import kd_loss
from tutx.exercises._check import run_tensor_cases

__all__ = ["check_kd_loss", "check_head_importance", "check_o_proj_columns"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- 1. the distillation loss, T² included ----------------------------------------------------------

def _solution_kd_loss(student_logits, teacher_logits, labels, temperature, alpha):
    return kd_loss(student_logits, teacher_logits, labels, temperature=temperature, alpha=alpha)


def _wrong_kd_loss(student_logits, teacher_logits, labels, temperature, alpha):
    """Forgets the T² factor: the soft term's gradient then shrinks like 1/T²."""
    keep = labels != -100
    s, t = student_logits[keep], teacher_logits[keep]
    kl = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                  reduction="batchmean")
    return alpha * kl + (1 - alpha) * F.cross_entropy(s, labels[keep])


def check_kd_loss(fn) -> None:
    """``fn(student_logits, teacher_logits, labels, temperature, alpha) -> loss`` (a 0-d tensor).

    Logits are float32 ``[B, S, V]``, ``labels`` int64 ``[B, S]`` (already aligned: ``labels[b, s]``
    is the target of ``logits[b, s]``), ``-100`` marks positions that count in neither term. The
    loss is ``alpha * T² * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, labels)``, each
    term averaged over the positions that count.
    """
    cases = []
    for k, (shape, T, alpha) in enumerate((((2, 3, 5), 1.0, 0.5), ((1, 4, 7), 2.0, 0.5), ((3, 2, 11), 4.0, 0.9),
                                           ((2, 5, 6), 0.5, 0.2), ((1, 3, 4), 3.0, 1.0))):
        g = _gen(20 + k)
        s, t = 2 * torch.randn(*shape, generator=g), 2 * torch.randn(*shape, generator=g)
        labels = torch.randint(0, shape[-1], shape[:-1], generator=g)
        labels[0, -1] = -100  # a padded position
        cases.append((s, t, labels, T, alpha))
    run_tensor_cases("check_kd_loss", fn, _solution_kd_loss, cases, rtol=1e-4, atol=1e-5)


# --- 2. the gradient head-importance score of Michel et al. ------------------------------------------

def _solution_head_importance(mask_grads):
    scores = mask_grads.abs().mean(0)  # [L, H]: E_batches |dL/dm_h|
    return scores / scores.norm(dim=-1, keepdim=True)  # each layer to unit L2 norm


def _wrong_head_importance(mask_grads):
    """Averages the signed gradients: a head that helps on some batches and hurts on others cancels out."""
    scores = mask_grads.mean(0).abs()
    return scores / scores.norm(dim=-1, keepdim=True)


def check_head_importance(fn) -> None:
    """``fn(mask_grads) -> scores``: ``mask_grads`` float32 ``[N, L, H]`` holds ``dL/dm_h`` of the head
    gates on ``N`` batches; return float32 ``[L, H]``: the mean over batches of ``|dL/dm_h|``, each
    layer's row divided by its L2 norm.
    """
    cases = []
    for k, (n, layers, heads) in enumerate(((4, 2, 4), (1, 3, 8), (6, 5, 2), (3, 1, 6))):
        g = _gen(40 + k)
        grads = torch.randn(n, layers, heads, generator=g) * torch.rand(1, layers, heads, generator=g)
        cases.append((grads,))
    run_tensor_cases("check_head_importance", fn, _solution_head_importance, cases, rtol=1e-5, atol=1e-6)


# --- 3. which columns of o_proj survive when heads go ------------------------------------------------

def _solution_o_proj_columns(num_heads, head_dim, remove):
    keep = [h for h in range(num_heads) if h not in set(remove)]
    return torch.tensor([h * head_dim + d for h in keep for d in range(head_dim)], dtype=torch.long)


def _wrong_o_proj_columns(num_heads, head_dim, remove):
    """Treats the head index as the fast-moving one (``d * num_heads + h``): not how the heads are laid out."""
    keep = [h for h in range(num_heads) if h not in set(remove)]
    return torch.tensor(sorted(d * num_heads + h for h in keep for d in range(head_dim)), dtype=torch.long)


def check_o_proj_columns(fn) -> None:
    """``fn(num_heads, head_dim, remove) -> index``: ``o_proj.weight`` is ``[hidden, num_heads * head_dim]``,
    its input features grouped head by head. Return the int64 indices (ascending) of the columns
    to keep when the heads listed in ``remove`` are pruned.
    """
    cases = [(8, 4, [1, 6]), (4, 3, [0]), (12, 2, [11, 0, 5]), (2, 5, [1]), (6, 1, [2, 3]), (8, 4, [])]
    run_tensor_cases("check_o_proj_columns", fn, _solution_o_proj_columns, cases, rtol=0, atol=0)


CONTRACT = {
    "check_kd_loss": (_solution_kd_loss, _wrong_kd_loss),
    "check_head_importance": (_solution_head_importance, _wrong_head_importance),
    "check_o_proj_columns": (_solution_o_proj_columns, _wrong_o_proj_columns),
}
