"""Per-layer sensitivity to quantization: which layers can take 4 bits, which need more.

:func:`layer_sensitivity` quantizes **one layer at a time** (at each candidate bit width),
measures the model (the KL divergence from the float model's predictions, perplexity, or any
``eval_fn``) and puts the float layer back. :mod:`tutx.quant.mixed_precision` turns the result
into a bit width per layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from tutx.quant.api import quantize_, select_linears, set_submodule
from tutx.quant.configs import Int4WeightOnly, Int8WeightOnly

CHOICES = (4, 8, 16)
"""Bit widths a layer may get: 4 (``Int4WeightOnly``), 8 (``Int8WeightOnly``), 16 (left unquantized)."""


def check_bit_choices(choices, name: str = "choices", allow_16: bool = True) -> tuple[int, ...]:
    """``choices``: distinct widths from :data:`CHOICES` (without 16 unless ``allow_16``), sorted."""
    allowed = CHOICES if allow_16 else (4, 8)
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Iterable):
        raise TypeError(f"{name}: expected a sequence of bit widths from {allowed}, got {choices!r}")
    choices = tuple(choices)
    bad = [c for c in choices if isinstance(c, bool) or c not in allowed]
    if not choices or bad or len(set(choices)) != len(choices):
        raise ValueError(f"{name}: expected distinct bit widths from {allowed}, got {choices!r}")
    return tuple(sorted(choices))


def config_for_bits(bits: int, group_size: int = 128):
    """The config for a width: 4 → ``Int4WeightOnly(group_size)``, 8 → ``Int8WeightOnly()``, 16 → None (as is)."""
    if bits == 16:
        return None
    if bits == 8:
        return Int8WeightOnly()
    if bits == 4:
        return Int4WeightOnly(group_size)
    raise ValueError(f"bits: expected one of {CHOICES}, got {bits!r}")


@dataclass(frozen=True)
class Sensitivity:
    """What :func:`layer_sensitivity` measured.

    ``baseline``: the metric of the model as given; ``scores[fqn][bits]``: the metric with only
    ``fqn`` quantized to ``bits``. :attr:`delta` is the damage, ``score - baseline`` (16 bits: 0).
    """

    baseline: float
    scores: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def delta(self) -> dict[str, dict[int, float]]:
        return {fqn: {16: 0.0, **{b: s - self.baseline for b, s in by_bits.items()}}
                for fqn, by_bits in self.scores.items()}

    def ranking(self, bits: int = 4) -> list[tuple[str, float]]:
        """Layers from most to least sensitive at ``bits``: ``[(fqn, delta), ...]``."""
        rows = [(fqn, d[bits]) for fqn, d in self.delta.items() if bits in d]
        if not rows:
            probed = sorted({b for s in self.scores.values() for b in s})
            raise ValueError(f"bits: {bits} was not probed; probed {probed}")
        return sorted(rows, key=lambda r: -r[1])


def output_kl_fn(reference: nn.Module, input_ids: torch.Tensor) -> Callable[[nn.Module], float]:
    """An ``eval_fn``: mean ``KL(reference || model)`` of the next-token distributions on ``input_ids [B, T]``.

    The reference log-probabilities are computed now, once (pass the model before quantizing).
    Never negative and zero for the reference itself, so per-layer damage is not drowned in the
    noise that a perplexity difference on a short text has.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids: expected an integer tensor [batch, seq_len], got {got}")
    device = next(reference.parameters()).device
    input_ids = input_ids.to(device)

    def log_probs(m: nn.Module) -> torch.Tensor:
        was_training = m.training
        m.eval()
        try:
            with torch.inference_mode():
                out = m(input_ids=input_ids)
                # float64: the KL of two nearly equal distributions is a small difference of large terms
                return torch.log_softmax(getattr(out, "logits", out).double(), dim=-1).flatten(0, 1)  # [B*T, V]
        finally:
            m.train(was_training)

    ref = log_probs(reference)

    def eval_fn(m: nn.Module) -> float:
        logp = log_probs(m)
        return max(float((ref.exp() * (ref - logp)).sum(-1).mean()), 0.0)

    return eval_fn


def _text_windows(tokenizer, text: str, window: int) -> torch.Tensor:
    """Non-overlapping windows ``[n, window]`` of ``text``'s tokens (one shorter window if the text is short)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"text: expected a non-empty string, got {text!r}")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]  # [N]
    if ids.numel() < 2:
        raise ValueError(f"text: needs at least 2 tokens, got {ids.numel()}")
    n = ids.numel() // window
    return ids[: n * window].reshape(n, window) if n else ids[None]


METRICS = ("kl", "ppl")


def _make_eval_fn(model, tokenizer_or_eval_fn, metric, text, window, stride) -> Callable[[nn.Module], float]:
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if hasattr(tokenizer_or_eval_fn, "encode") or hasattr(tokenizer_or_eval_fn, "convert_tokens_to_ids"):
        from tutx.models.perplexity import perplexity

        tokenizer = tokenizer_or_eval_fn
        if text is None:
            raise ValueError("text: a tokenizer needs the text to score the model on (e.g. a few thousand "
                             "characters of held-out text); or pass eval_fn(model) -> float instead")
        if metric == "kl":
            return output_kl_fn(model, _text_windows(tokenizer, text, window))
        return lambda m: perplexity(m, tokenizer, text, window=window, stride=stride)
    if callable(tokenizer_or_eval_fn):
        if text is not None:
            raise ValueError("text: only used with a tokenizer; your eval_fn chooses its own data")
        return tokenizer_or_eval_fn
    raise TypeError("tokenizer_or_eval_fn: expected a tokenizer (to score the model on text) or a function "
                    f"eval_fn(model) -> float, lower is better; got {type(tokenizer_or_eval_fn).__name__}")


def _evaluate(eval_fn, model, what: str) -> float:
    value = eval_fn(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"eval_fn: returned {value!r} for {what}; expected a finite number (lower is better)")
    return float(value)


@torch.no_grad()
def layer_sensitivity(model: nn.Module, tokenizer_or_eval_fn, candidates=(4, 8), *, metric: str = "kl",
                      text: str | None = None, window: int = 256, stride: int = 256, group_size: int = 128,
                      filter_fn=None, progress: bool = True) -> Sensitivity:
    """Quantize each selected layer alone at each of ``candidates`` bits and measure the model.

    ``tokenizer_or_eval_fn``: a tokenizer, to score the model on ``text`` (required then: e.g.
    a few thousand characters the model was not trained on) in non-overlapping windows of
    ``window=256`` tokens — by ``metric="kl"``, the KL divergence from the unquantized model's
    predictions (:func:`output_kl_fn`; the default: never negative, little noise), or
    ``metric="ppl"``, perplexity (``stride`` as in :func:`~tutx.models.perplexity`). Or a function
    ``eval_fn(model) -> float`` (lower is better), e.g. the output error on calibration batches.
    Layers: as ``quantize_`` selects them (``filter_fn``). Each probe swaps in the real quantized
    module and puts the float layer back afterwards, even on error: ``model`` is unchanged.
    Costs ``1 + layers * len(candidates)`` evaluations.
    """
    candidates = check_bit_choices(candidates, "candidates", allow_16=False)
    group_config = Int4WeightOnly(group_size)  # validates group_size
    eval_fn = _make_eval_fn(model, tokenizer_or_eval_fn, metric, text, window, stride)
    layers = select_linears(model, filter_fn)
    if not layers:
        raise ValueError("model: no nn.Linear layer selected; nothing to probe")
    baseline = _evaluate(eval_fn, model, "the unquantized model")
    scores: dict[str, dict[int, float]] = {}
    with tqdm(total=len(layers) * len(candidates), desc="sensitivity", unit="probe", disable=not progress) as bar:
        for fqn, lin in layers:
            scores[fqn] = {}
            for bits in candidates:
                quantize_(model, {fqn: config_for_bits(bits, group_config.group_size)})
                try:
                    scores[fqn][bits] = _evaluate(eval_fn, model, f"{fqn!r} at {bits} bits")
                finally:
                    set_submodule(model, fqn, lin)  # restore the float layer
                bar.set_postfix_str(fqn, refresh=False)
                bar.update(1)
    return Sensitivity(baseline, scores)


