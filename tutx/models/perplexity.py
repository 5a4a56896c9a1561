"""Sliding-window perplexity: the quality number every compression chapter reports.

A causal LM sees at most ``window`` tokens, so a long text is scored in overlapping windows
(the strided evaluation of the Hugging Face perplexity guide): windows start every
``stride`` tokens, and each window scores only the tokens that no earlier window scored,
so every token after the first is scored exactly once, with up to ``window - stride``
tokens of context. Smaller strides give more context per token (a lower, fairer
perplexity) at more compute; ``stride == window`` scores non-overlapping chunks.

The course compares models under ONE protocol, :func:`heldout_perplexity`: the first
``HELDOUT_CHARS`` characters of the held-out plays, non-overlapping windows of ``HELDOUT_WINDOW``
tokens. Every chapter that ranks models uses it, so its numbers can be compared across chapters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from tutx._validate import check_int, check_positive_int, check_str


def model_context(model) -> int | None:
    """The longest sequence the model's positions support, if its config says."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def windows(n_tokens: int, window: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first_target)`` for each window over ``n_tokens`` tokens.

    The window is ``tokens[begin:end]``; it scores positions ``first_target .. end-1``
    (a position needs at least one token of context inside its window).
    """
    out, prev_end, begin = [], 0, 0
    while prev_end < n_tokens:
        end = min(begin + window, n_tokens)
        first = max(prev_end, begin + 1)
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        begin += stride
    return out


def _check(model, text, window, stride, batch_size) -> tuple[int, int]:
    check_str("text", text)
    check_positive_int("batch_size", batch_size)
    context = model_context(model)
    if window is None:
        window = min(context, 512) if context else 512
    check_int("window", window, minimum=2)  # one token of context, one scored
    if context is not None and window > context:
        raise ValueError(f"window: {window} is longer than the model's context of {context} tokens")
    stride = window // 2 if stride is None else check_positive_int("stride", stride)
    if stride > window:
        raise ValueError(f"stride: {stride} is larger than window={window}; tokens would be skipped")
    return window, stride


def perplexity(model, tokenizer, text: str, window: int | None = None, stride: int | None = None,
               batch_size: int = 8) -> float:
    """Perplexity of ``model`` on ``text``: exp of the mean next-token NLL over scored tokens.

    ``window`` defaults to ``min(model context, 512)`` and ``stride`` to ``window // 2``.
    Runs under ``torch.inference_mode()`` on the model's device, in eval mode (the model's
    train/eval mode is restored afterwards). NLLs are summed in float64 so the result
    does not depend on ``batch_size``.
    """
    window, stride = _check(model, text, window, stride, batch_size)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]  # [N]
    if ids.numel() < 2:
        raise ValueError(f"text: needs at least 2 tokens to score one, got {ids.numel()}")
    spans = windows(ids.numel(), window, stride)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    try:
        with torch.inference_mode():
            # Windows of equal length are batched together; only the last one can be shorter.
            by_length: dict[int, list[tuple[int, int, int]]] = {}
            for span in spans:
                by_length.setdefault(span[1] - span[0], []).append(span)
            for length, group in by_length.items():
                for i in range(0, len(group), batch_size):
                    chunk = group[i : i + batch_size]
                    x = torch.stack([ids[b:e] for b, e, _ in chunk]).to(device)  # [B, L]
                    logits = model(input_ids=x).logits[:, :-1].float()  # [B, L-1, V]
                    targets = x[:, 1:].clone()  # [B, L-1]; logits[:, t] predicts x[:, t+1]
                    for row, (b, _, first) in enumerate(chunk):
                        targets[row, : first - b - 1] = -100  # already scored by an earlier window
                    loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100,
                                           reduction="sum")
                    nll += loss.double().item()
                    count += int((targets != -100).sum())
    finally:
        model.train(was_training)
    return math.exp(nll / count)


HELDOUT_CHARS = 40_000  # the first 40k characters of Macbeth + Twelfth Night (about 14k tokens)
HELDOUT_WINDOW = 256    # non-overlapping windows (stride == window): fast, and the same everywhere


def heldout_perplexity(model, tokenizer, text: str | None = None) -> float:
    """The course's one perplexity protocol (see the module docstring).

    ``text`` defaults to the first ``HELDOUT_CHARS`` characters of ``tutx.models.heldout_text()``;
    windows of ``HELDOUT_WINDOW`` tokens with stride ``HELDOUT_WINDOW``.
    """
    if text is None:
        from tutx.models.tiny import heldout_text
        text = heldout_text()[:HELDOUT_CHARS]
    return perplexity(model, tokenizer, text, window=HELDOUT_WINDOW, stride=HELDOUT_WINDOW)
