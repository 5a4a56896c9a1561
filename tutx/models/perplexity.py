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


def window_nlls(model, tokenizer, text: str | None = None, window: int = HELDOUT_WINDOW,
                stride: int | None = None, batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The pieces of a perplexity, one per window: summed NLL (float64 ``[W]``) and scored tokens (``[W]``).

    Same windows and scoring as :func:`perplexity` (``text`` defaults to the course's held-out text,
    ``window``/``stride`` to :func:`heldout_perplexity`'s), so ``exp(nll.sum() / count.sum())`` is the
    perplexity. Per window, so :func:`perplexity_noise` can resample them. A float64 model's logits
    stay float64.
    """
    if text is None:
        from tutx.models.tiny import heldout_text
        text = heldout_text()[:HELDOUT_CHARS]
    window, stride = _check(model, text, window, window if stride is None else stride, batch_size)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]  # [N]
    if ids.numel() < 2:
        raise ValueError(f"text: needs at least 2 tokens to score one, got {ids.numel()}")
    spans = windows(ids.numel(), window, stride)
    device = next(model.parameters()).device
    nll = torch.zeros(len(spans), dtype=torch.float64)
    count = torch.zeros(len(spans), dtype=torch.int64)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for i in range(0, len(spans), batch_size):
                chunk = spans[i : i + batch_size]
                for length in sorted({e - b for b, e, _ in chunk}):  # only the last window can be shorter
                    rows = [(k, s) for k, s in enumerate(chunk, start=i) if s[1] - s[0] == length]
                    x = torch.stack([ids[b:e] for _, (b, e, _) in rows]).to(device)  # [B, L]
                    logits = model(input_ids=x).logits[:, :-1]  # [B, L-1, V]
                    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
                    targets = x[:, 1:].clone()  # [B, L-1]
                    for r, (_, (b, _, first)) in enumerate(rows):
                        targets[r, : first - b - 1] = -100  # already scored by an earlier window
                    loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
                    for r, (k, _) in enumerate(rows):
                        nll[k] = loss[r].double().sum()
                        count[k] = int((targets[r] != -100).sum())
    finally:
        model.train(was_training)
    return nll, count


def perplexity_noise(nll: torch.Tensor, count: torch.Tensor, baseline: tuple[torch.Tensor, torch.Tensor] | None = None,
                     n_boot: int = 2000, seed: int = 0) -> float:
    """Bootstrap standard deviation of a perplexity over its windows (from :func:`window_nlls`).

    Resamples the windows with replacement ``n_boot`` times: how much the perplexity would move
    on another text of the same length. With ``baseline=(nll, count)`` of another model on the
    *same* windows, the spread of the difference ``ppl - ppl(baseline)`` instead (a paired
    bootstrap: both models see the same resampled windows, so the text's own difficulty cancels)
    — the noise to state before ranking two models.
    """
    if nll.shape != count.shape or nll.dim() != 1 or nll.numel() < 2:
        raise ValueError(f"nll, count: expected two 1-D tensors of the same length >= 2, got "
                         f"{tuple(nll.shape)} and {tuple(count.shape)}")
    from tutx._validate import check_int

    check_int("n_boot", n_boot, minimum=2)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, nll.numel(), (n_boot, nll.numel()), generator=gen)  # [n_boot, W]
    c = count.double()[idx].sum(1)  # [n_boot]
    ppl = torch.exp(nll.double()[idx].sum(1) / c)  # [n_boot]
    if baseline is not None:
        b_nll, b_count = baseline
        if b_nll.shape != nll.shape or not torch.equal(b_count, count):
            raise ValueError("baseline: expected window_nlls of another model on the same windows")
        ppl = ppl - torch.exp(b_nll.double()[idx].sum(1) / c)
    return float(ppl.std())
