"""Distillation losses: the soft-target loss of Hinton et al. (2015) and a logit-free hidden-state loss.

:func:`kd_loss` is the one implementation of the logit distillation loss in ``tutx``
(``tutx.train.distillation_loss`` calls it). With teacher and student distributions softened by
a temperature :math:`T`, :math:`p^T = \\mathrm{softmax}(z / T)`,

.. math::

    L = \\alpha \\, T^2 \\, \\mathrm{KL}(p_t^T \\,\\|\\, p_s^T) + (1 - \\alpha) \\, \\mathrm{CE}(p_s^1, y)

averaged over the positions that count. The :math:`T^2` keeps the soft term's gradient the same
size whatever :math:`T` (the gradient of the softened KL shrinks like :math:`1/T^2`), so
``alpha`` means the same thing at every temperature.

:class:`HiddenStateDistillLoss` is the variant for when the teacher's logits are not available
or not enough: it pulls the student's hidden states, through a learned linear projection
(student and teacher widths differ), towards the teacher's, by mean squared error.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tutx._validate import check_int, check_positive, check_positive_int, check_probability

__all__ = ["kd_loss", "HiddenStateDistillLoss"]


def _check_logits(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor of logits [..., V], got "
                        f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{name}: expected logits of shape [..., V] with at least 2 dims, got {tuple(x.shape)}")


def _valid_mask(labels, logits: torch.Tensor, ignore_index: int) -> torch.Tensor | None:
    """``None`` when every position counts, else a bool ``[N]`` mask of the positions whose label is not ignored."""
    if labels is None:
        return None
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels: expected an integer tensor of token ids, got "
                        f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"labels: shape {tuple(labels.shape)} does not match the logits' positions "
                         f"{tuple(logits.shape[:-1])} (labels[..., i] is the target of logits[..., i, :]; "
                         f"shift them first for a causal LM)")
    mask = labels.reshape(-1) != ignore_index  # [N]
    if not bool(mask.any()):
        raise ValueError(f"labels: every position is ignore_index={ignore_index}; nothing to learn from")
    bad = labels.reshape(-1)[mask]
    if bool(((bad < 0) | (bad >= logits.shape[-1])).any()):
        raise ValueError(f"labels: ids must lie in [0, {logits.shape[-1]}) or equal ignore_index={ignore_index}")
    return mask


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
            temperature: float = 2.0, alpha: float = 0.5, ignore_index: int = -100) -> torch.Tensor:
    """The distillation loss ``alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)``.

    ``student_logits`` and ``teacher_logits`` are ``[..., V]`` (``[B, S, V]`` for an LM) with the
    same shape; ``labels`` (optional) is ``[...]`` with ``labels[..., i]`` the target of
    ``logits[..., i, :]`` — shift them first for a causal LM. Positions whose label is
    ``ignore_index`` count in neither term; the loss is the mean over the positions that count.
    Without ``labels`` the loss is the soft term alone, ``T² * KL`` (``alpha`` is not used). The
    teacher's logits are detached: no gradient flows into the teacher. Computed in at least fp32.
    """
    _check_logits("student_logits", student_logits)
    _check_logits("teacher_logits", teacher_logits)
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise ValueError(f"teacher_logits: vocabulary of {teacher_logits.shape[-1]} does not match the student's "
                         f"{student_logits.shape[-1]}; teacher and student must share a tokenizer")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"teacher_logits: shape {tuple(teacher_logits.shape)} does not match student_logits "
                         f"{tuple(student_logits.shape)}")
    check_positive("temperature", temperature)
    check_probability("alpha", alpha)
    check_int("ignore_index", ignore_index)
    mask = _valid_mask(labels, student_logits, ignore_index)

    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    V = student_logits.shape[-1]
    s = student_logits.reshape(-1, V).to(dtype)  # [N, V]
    t = teacher_logits.detach().reshape(-1, V).to(dtype)  # [N, V]
    if mask is not None:
        s, t = s[mask], t[mask]  # [M, V]: only the positions that count
    t_logp = F.log_softmax(t / temperature, dim=-1)
    s_logp = F.log_softmax(s / temperature, dim=-1)
    kl = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean()  # KL(teacher || student), mean over positions
    soft = temperature ** 2 * kl
    if labels is None:
        return soft
    hard = F.cross_entropy(s, labels.reshape(-1)[mask])  # at T = 1
    return alpha * soft + (1 - alpha) * hard


class HiddenStateDistillLoss(nn.Module):
    """Logit-free distillation: MSE between ``proj(student_hidden)`` and ``teacher_hidden``.

    ``proj`` is a learned ``Linear(student_dim, teacher_dim)`` (train it with the student), as in
    TinyBERT and Minitron's intermediate-state losses. ``forward(student_hidden, teacher_hidden,
    attention_mask=None)`` takes ``[..., S, D_s]`` and ``[..., S, D_t]`` (a list or tuple of
    layers each, paired in order, is averaged); positions where ``attention_mask`` is 0 do not count.
    """

    def __init__(self, student_dim: int, teacher_dim: int):
        super().__init__()
        check_positive_int("student_dim", student_dim)
        check_positive_int("teacher_dim", teacher_dim)
        self.student_dim, self.teacher_dim = student_dim, teacher_dim
        self.proj = nn.Linear(student_dim, teacher_dim, bias=False)
        if student_dim == teacher_dim:
            nn.init.eye_(self.proj.weight)  # start from "the same space"

    def forward(self, student_hidden, teacher_hidden, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(student_hidden, (list, tuple)) or isinstance(teacher_hidden, (list, tuple)):
            if not (isinstance(student_hidden, (list, tuple)) and isinstance(teacher_hidden, (list, tuple))
                    and len(student_hidden) == len(teacher_hidden) and len(student_hidden) > 0):
                raise ValueError("teacher_hidden: pass one tensor each, or two non-empty lists of the same length "
                                 "(layer pairs)")
            return torch.stack([self(s, t, attention_mask) for s, t in zip(student_hidden, teacher_hidden)]).mean()
        _check_logits("student_hidden", student_hidden)
        _check_logits("teacher_hidden", teacher_hidden)
        if student_hidden.shape[-1] != self.student_dim:
            raise ValueError(f"student_hidden: last dim {student_hidden.shape[-1]}, expected student_dim={self.student_dim}")
        if teacher_hidden.shape[-1] != self.teacher_dim:
            raise ValueError(f"teacher_hidden: last dim {teacher_hidden.shape[-1]}, expected teacher_dim={self.teacher_dim}")
        if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
            raise ValueError(f"teacher_hidden: positions {tuple(teacher_hidden.shape[:-1])} do not match the student's "
                             f"{tuple(student_hidden.shape[:-1])}")
        err = (self.proj(student_hidden) - teacher_hidden.detach()).pow(2).mean(-1)  # [..., S]
        if attention_mask is None:
            return err.mean()
        if tuple(attention_mask.shape) != tuple(err.shape):
            raise ValueError(f"attention_mask: shape {tuple(attention_mask.shape)}, expected {tuple(err.shape)}")
        keep = attention_mask.to(err.dtype)
        if float(keep.sum()) == 0:
            raise ValueError("attention_mask: is all zeros; nothing to compare")
        return (err * keep).sum() / keep.sum()
