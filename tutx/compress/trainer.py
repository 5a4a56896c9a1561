"""Train a small student from a frozen teacher: :class:`DistillationTrainer` and :func:`make_student`.

The trainer is :func:`tutx.train.train` (AdamW, linear warm-up then cosine decay, gradient
clipping, a progress bar with the loss, a fixed seed) with :func:`tutx.compress.distill.kd_loss`
as the loss, the teacher frozen in eval mode, and a periodic held-out perplexity::

    student = make_student(teacher, num_layers=3, hidden_size=192)
    trainer = DistillationTrainer(student, teacher, tokenizer=tok, eval_every=50)
    history = trainer.fit(random_windows(train_ids, 8, 128, 300))
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from tutx._validate import check_bool, check_int, check_optional_int, check_positive, check_probability
from tutx.compress.distill import HiddenStateDistillLoss, kd_loss
from tutx.train import train

__all__ = ["DistillationTrainer", "make_student", "check_same_tokenizer"]

_STUDENT_FIELDS = ("num_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


def _logits_dim(model: nn.Module) -> int | None:
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None and hasattr(out, "weight"):
        return out.weight.shape[0]
    return getattr(getattr(model, "config", None), "vocab_size", None)


def check_same_tokenizer(student: nn.Module, teacher: nn.Module, student_tokenizer=None, teacher_tokenizer=None) -> None:
    """Raise ``ValueError`` unless ``student`` and ``teacher`` predict over the same vocabulary.

    Compares the models' output sizes, and the two tokenizers' vocabularies when both are given:
    distilling logits is meaningless when token ``i`` is not the same string for both.
    """
    vs, vt = _logits_dim(student), _logits_dim(teacher)
    if vs is not None and vt is not None and vs != vt:
        raise ValueError(f"teacher: predicts over {vt} tokens but the student over {vs}; "
                         "teacher and student must share a tokenizer")
    if student_tokenizer is not None and teacher_tokenizer is not None and student_tokenizer is not teacher_tokenizer:
        if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
            raise ValueError("teacher_tokenizer: its vocabulary differs from student_tokenizer's; "
                             "teacher and student must share a tokenizer")


def make_student(teacher, num_layers: int | None = None, hidden_size: int | None = None,
                 intermediate_size: int | None = None, num_attention_heads: int | None = None,
                 num_key_value_heads: int | None = None, init_from_teacher: bool = False, seed: int = 0):
    """A smaller ``LlamaForCausalLM`` shaped like ``teacher`` (a Llama config or model), fp32, in train mode.

    Each argument left ``None`` keeps the teacher's value; ``num_layers`` sets
    ``num_hidden_layers``. The head dimension stays ``hidden_size / num_attention_heads``, so
    shrink the heads with the width. ``init_from_teacher=True`` (same width only) copies the
    teacher's embeddings, final norm and ``num_layers`` of its layers spread over its depth — the
    DistilBERT initialisation; otherwise the weights are random (``seed``).
    """
    from transformers import LlamaConfig, LlamaForCausalLM, PretrainedConfig

    model = teacher if isinstance(teacher, nn.Module) else None
    config = getattr(teacher, "config", teacher)
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"teacher: expected a Llama config or model, got {type(teacher).__name__}")
    if not isinstance(config, LlamaConfig):
        raise ValueError(f"teacher: make_student builds Llama students; got a {type(config).__name__}")
    check_bool("init_from_teacher", init_from_teacher)
    check_int("seed", seed)
    values = dict(zip(_STUDENT_FIELDS, (num_layers, hidden_size, intermediate_size, num_attention_heads,
                                        num_key_value_heads)))
    for name, v in values.items():
        check_optional_int(name, v, minimum=1)
    cfg = copy.deepcopy(config)
    new = {"num_hidden_layers": num_layers, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
           "num_attention_heads": num_attention_heads, "num_key_value_heads": num_key_value_heads}
    for key, v in new.items():
        if v is not None:
            setattr(cfg, key, v)
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"hidden_size: {cfg.hidden_size} is not a multiple of num_attention_heads="
                         f"{cfg.num_attention_heads}")
    if cfg.num_attention_heads % cfg.num_key_value_heads:
        raise ValueError(f"num_key_value_heads: {cfg.num_key_value_heads} does not divide num_attention_heads="
                         f"{cfg.num_attention_heads}")
    cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    if getattr(cfg, "layer_types", None) is not None:
        cfg.layer_types = [cfg.layer_types[0]] * cfg.num_hidden_layers
    torch.manual_seed(seed)
    student = LlamaForCausalLM(cfg).float()
    if init_from_teacher:
        if model is None:
            raise ValueError("init_from_teacher: needs the teacher model, not only its config")
        same = all(getattr(cfg, k) == getattr(config, k) for k in
                   ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"))
        if not same or cfg.num_hidden_layers > config.num_hidden_layers:
            raise ValueError("init_from_teacher: only for a student with the teacher's width and at most its depth "
                             "(prune the width first: tutx.compress head/FFN pruning)")
        from tutx.compress.layerdrop import layers_to_keep
        keep = layers_to_keep(config.num_hidden_layers, "spread", cfg.num_hidden_layers)
        sd = model.state_dict()
        mapped = {}
        for k, v in sd.items():
            if ".layers." in k:
                prefix, rest = k.split(".layers.", 1)
                idx, tail = rest.split(".", 1)
                if int(idx) in keep:
                    mapped[f"{prefix}.layers.{keep.index(int(idx))}.{tail}"] = v.float()
            else:
                mapped[k] = v.float()
        student.load_state_dict(mapped, strict=False)
    student.train()
    return student


class DistillationTrainer:
    """Distil ``teacher`` into ``student`` (two HF causal LMs sharing a tokenizer).

    ``fit(batches, steps=None)`` trains on batches of ``input_ids [B, T]`` with ``kd_loss``
    (``temperature``, ``alpha``: the weight of the soft term; the rest is next-token
    cross-entropy) plus, if ``hidden_weight > 0``, a :class:`HiddenStateDistillLoss` between the
    last hidden states (its projection is trained too). Every ``eval_every`` steps and at the end
    it records the student's perplexity on ``eval_text`` windows of ``eval_window`` tokens
    (``eval_text=None``: :func:`tutx.models.heldout_perplexity`, the course's protocol; pass a
    shorter slice for cheap curves). ``history`` holds ``{"step", "loss"}`` rows in ``"train"``
    and ``{"step", "perplexity"}`` rows in ``"eval"``. ``alpha=0`` with ``hidden_weight=0``
    trains the student from scratch on the same data: the baseline.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module, *, tokenizer=None, teacher_tokenizer=None,
                 temperature: float = 2.0, alpha: float = 0.5, hidden_weight: float = 0.0, lr: float = 1e-3,
                 warmup_steps: int = 10, weight_decay: float = 0.0, max_grad_norm: float | None = 1.0,
                 seed: int = 0, eval_every: int | None = None, eval_text: str | None = None,
                 eval_window: int = 256):
        for name, m in (("student", student), ("teacher", teacher)):
            if not isinstance(m, nn.Module):
                raise TypeError(f"{name}: expected an nn.Module (an HF causal LM), got {type(m).__name__}")
        if student is teacher:
            raise ValueError("student: is the teacher itself; pass a separate model (tutx.compress.make_student)")
        check_same_tokenizer(student, teacher, tokenizer, teacher_tokenizer)
        check_positive("temperature", temperature)
        check_probability("alpha", alpha)
        if not (isinstance(hidden_weight, (int, float)) and not isinstance(hidden_weight, bool)
                and math.isfinite(hidden_weight) and hidden_weight >= 0):
            raise ValueError(f"hidden_weight: expected a finite number >= 0, got {hidden_weight!r}")
        check_optional_int("eval_every", eval_every, minimum=1)
        check_int("eval_window", eval_window, minimum=2)
        if eval_every is not None and tokenizer is None:
            raise ValueError("tokenizer: needed to evaluate perplexity every eval_every steps")
        self.student, self.teacher, self.tokenizer = student, teacher, tokenizer
        self.temperature, self.alpha, self.hidden_weight = temperature, alpha, float(hidden_weight)
        self.train_kw = dict(lr=lr, warmup_steps=warmup_steps, weight_decay=weight_decay,
                             max_grad_norm=max_grad_norm, seed=seed)
        self.eval_every, self.eval_text, self.eval_window = eval_every, eval_text, eval_window
        self.hidden_loss = None
        if self.hidden_weight > 0:
            torch.manual_seed(seed)
            self.hidden_loss = HiddenStateDistillLoss(student.config.hidden_size, teacher.config.hidden_size)
        self.history: dict[str, list[dict]] = {"train": [], "eval": []}

    def loss(self, student: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
        """The training loss on one batch ``input_ids [B, T]`` (next-token targets, shifted here)."""
        need_hidden = self.hidden_loss is not None
        s_out = student(input_ids=input_ids, output_hidden_states=need_hidden)
        s_logits = s_out.logits[:, :-1]  # [B, T-1, V]: logits at t predict token t+1
        labels = input_ids[:, 1:]  # [B, T-1]
        if self.alpha == 0 and not need_hidden:  # from scratch: no teacher pass (alpha=0 keeps only the CE term)
            return kd_loss(s_logits, s_logits.detach(), labels, self.temperature, alpha=0.0)
        with torch.no_grad():
            t_out = self.teacher(input_ids=input_ids, output_hidden_states=need_hidden)
        loss = kd_loss(s_logits, t_out.logits[:, :-1], labels, self.temperature, self.alpha)
        if self.hidden_loss is not None:
            loss = loss + self.hidden_weight * self.hidden_loss(s_out.hidden_states[-1], t_out.hidden_states[-1])
        return loss

    def evaluate(self) -> float:
        """The student's perplexity on the evaluation text (see the class docstring)."""
        from tutx.models import heldout_perplexity, perplexity

        if self.eval_text is None:
            return heldout_perplexity(self.student, self.tokenizer)
        return perplexity(self.student, self.tokenizer, self.eval_text, window=self.eval_window, stride=self.eval_window)

    def fit(self, batches, steps: int | None = None, progress: bool = True, desc: str = "distil") -> dict:
        """Train; returns :attr:`history` (also kept on the trainer)."""
        teacher_mode = self.teacher.training
        grads = [p.requires_grad for p in self.teacher.parameters()]
        self.teacher.eval().requires_grad_(False)
        trainable = self.student if self.hidden_loss is None else _WithProjection(self.student, self.hidden_loss)
        first = len(self.history["train"])

        def on_step(step, value):
            self.history["train"].append({"step": first + step + 1, "loss": value})
            if self.eval_every is not None and (step + 1) % self.eval_every == 0:
                self.history["eval"].append({"step": first + step + 1, "perplexity": self.evaluate()})

        def loss_fn(module, batch):
            return self.loss(self.student, batch)

        try:
            train(trainable, batches, loss_fn, steps=steps, progress=progress, desc=desc, callback=on_step,
                  **self.train_kw)
        finally:
            self.teacher.train(teacher_mode)
            for p, g in zip(self.teacher.parameters(), grads):
                p.requires_grad_(g)
        last = self.history["train"][-1]["step"]
        if self.tokenizer is not None and (not self.history["eval"] or self.history["eval"][-1]["step"] != last):
            self.history["eval"].append({"step": last, "perplexity": self.evaluate()})
        self.student.eval()
        return self.history


class _WithProjection(nn.Module):
    """Student and hidden-state projection under one module, so the optimiser trains both."""

    def __init__(self, student: nn.Module, hidden_loss: nn.Module):
        super().__init__()
        self.student, self.hidden_loss = student, hidden_loss
