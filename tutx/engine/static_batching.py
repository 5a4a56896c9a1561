"""Static batching for a decoder: pad a batch of prompts, then decode them together.

The baseline that continuous batching (:mod:`tutx.engine.llm_engine`) improves on, and the
batched function a :class:`~tutx.engine.batcher.DynamicBatcher` calls: prompts are padded on the
left with an attention mask, and every row decodes until the batch is done.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch

from tutx._validate import check_choice, check_int, check_positive_int

__all__ = ["pad_batch", "greedy_generate"]


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "left"):
    """``(input_ids, attention_mask)``, both ``[B, S_max]`` long tensors; mask 0 on the padding.

    Decoders pad on the *left*, so that every prompt's last token sits in the last column,
    where the next token is read from and appended.
    """
    check_choice("side", side, ("left", "right"))
    check_int("pad_id", pad_id, minimum=0)
    if isinstance(sequences, (str, torch.Tensor)) or not isinstance(sequences, Sequence) or not sequences:
        raise TypeError(f"sequences: expected a non-empty list of token-id lists, got {sequences!r}")
    for i, seq in enumerate(sequences):
        if isinstance(seq, (str, torch.Tensor)) or not isinstance(seq, Sequence) or not seq \
                or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in seq):
            raise ValueError(f"sequences[{i}]={seq!r}: expected a non-empty list of token ids (ints >= 0)")
    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)  # [B, S]
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)  # [B, S]
    for i, seq in enumerate(sequences):
        cols = slice(longest - len(seq), longest) if side == "left" else slice(0, len(seq))
        input_ids[i, cols] = torch.tensor(seq, dtype=torch.long)
        attention_mask[i, cols] = 1
    return input_ids, attention_mask


@torch.no_grad()
def greedy_generate(model, prompts: Sequence[Sequence[int]], max_new_tokens: int = 16, pad_id: int = 0,
                    eos_id: int | None = None) -> list[list[int]]:
    """Greedy completions of a batch of prompts: each list holds only the new tokens.

    Left padding with an attention mask and position ids counted from each prompt's first real
    token give every prompt the output it would get alone. A sequence stops after ``eos_id``
    (kept in its output, as ``generate`` does); the others go on. Use it with the batcher:
    ``DynamicBatcher(functools.partial(greedy_generate, model, max_new_tokens=32, pad_id=0), 8, 10)``.
    """
    check_positive_int("max_new_tokens", max_new_tokens)
    input_ids, mask = pad_batch(prompts, pad_id, "left")  # [B, S]
    device = next(model.parameters()).device
    input_ids, mask = input_ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, S]: 0 at each prompt's first real token
    outputs = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)  # [B]
    # transformers 5 names the KV cache argument ``cache``; earlier versions ``past_key_values``
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    tokens, cache = input_ids, None
    for _ in range(max_new_tokens):
        out = model(input_ids=tokens, attention_mask=mask, position_ids=positions, use_cache=True,
                    **{cache_arg: cache})
        cache = out["cache"] if "cache" in out else out["past_key_values"]
        nxt = out.logits[:, -1].argmax(-1)  # [B]
        for i in (~done).nonzero().flatten().tolist():
            outputs[i].append(int(nxt[i]))
        if eos_id is not None:
            done |= nxt == eos_id
            if bool(done.all()):
                break
        tokens = torch.where(done, pad_id, nxt)[:, None]  # [B, 1]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # [B, S + 1]
        positions = positions[:, -1:] + 1  # [B, 1]
    return outputs
