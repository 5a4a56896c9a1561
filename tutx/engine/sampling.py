"""Per-request sampling: the parameters a client sends, and the sampler that turns logits into tokens.

Each request brings its own :class:`SamplingParams` (as in vLLM and the OpenAI API), so one
batch can mix greedy and sampled requests. A request with a ``seed`` draws from its own
``torch.Generator``: its output does not depend on which other requests share its batches,
nor on whether it was preempted and recomputed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request's completion.

    temperature: 0 is greedy (argmax); > 0 divides the logits before the softmax.
    top_k: keep only the ``top_k`` most likely tokens (None: all).
    top_p: nucleus sampling, keep the smallest set of tokens whose probability reaches ``top_p``.
    seed: seed of the request's own random generator (None: torch's global generator).
    max_tokens: the most tokens to generate.
    stop: strings that end the completion; the text is cut before the first one (OpenAI semantics).
    stop_token_ids: token ids that end the completion (their text is not added).
    ignore_eos: keep generating past the model's end-of-sequence token.
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop: tuple[str, ...] = field(default=())
    stop_token_ids: tuple[int, ...] = field(default=())
    ignore_eos: bool = False

    def __post_init__(self):
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise TypeError(f"temperature: expected a float >= 0, got {t!r}")
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature: expected a finite float >= 0 (0 means greedy), got {t!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k: expected None or an int >= 1, got {self.top_k!r}")
        p = self.top_p
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 1:
            raise ValueError(f"top_p: expected a float in (0, 1], got {p!r}")
        if self.seed is not None and not _is_int(self.seed):
            raise TypeError(f"seed: expected None or an int, got {self.seed!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens: expected an int > 0, got {self.max_tokens!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if stop is None:
            stop = ()
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop: expected a non-empty string or a list of them, got {self.stop!r}")
        ids = self.stop_token_ids if self.stop_token_ids is not None else ()
        if not isinstance(ids, (list, tuple)) or not all(_is_int(i) and i >= 0 for i in ids):
            raise ValueError(f"stop_token_ids: expected a list of token ids (ints >= 0), "
                             f"got {self.stop_token_ids!r}")
        if not isinstance(self.ignore_eos, bool):
            raise TypeError(f"ignore_eos: expected a bool, got {self.ignore_eos!r}")
        object.__setattr__(self, "temperature", float(t))
        object.__setattr__(self, "top_p", float(p))
        object.__setattr__(self, "stop", tuple(stop))
        object.__setattr__(self, "stop_token_ids", tuple(ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float) -> torch.Tensor:
    """Set the logits outside the top-k / top-p sets to -inf. ``logits``: ``[V]``, already tempered."""
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)  # [V]
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (the top one always stays).
        drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p  # [V]
        drop = torch.empty_like(drop_sorted).scatter_(0, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class Sampler:
    """Turns a batch of last-position logits into one token per sequence, by each sequence's params.

    Keeps a ``torch.Generator`` per seeded request (keyed by the sequence id) until
    :meth:`release` is called when the request ends.
    """

    def __init__(self):
        self._generators: dict[int, torch.Generator] = {}

    def __repr__(self) -> str:
        return f"Sampler(seeded_requests={len(self._generators)})"

    def _generator(self, seq_id: int, params: SamplingParams, device) -> torch.Generator | None:
        if params.seed is None:
            return None
        gen = self._generators.get(seq_id)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(params.seed)
            self._generators[seq_id] = gen
        return gen

    def release(self, seq_id: int) -> None:
        self._generators.pop(seq_id, None)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seq_ids: list[int], params: list[SamplingParams]) -> list[int]:
        """``logits [B, V]`` -> B token ids (plain ints)."""
        if logits.ndim != 2 or logits.shape[0] != len(seq_ids) or len(seq_ids) != len(params):
            raise ValueError(f"logits: expected shape [B={len(seq_ids)}, V] with one params per row, "
                             f"got {tuple(logits.shape)} and {len(params)} params")
        logits = logits.float()
        tokens = logits.argmax(dim=-1).tolist()  # greedy rows are done
        for i, (seq_id, p) in enumerate(zip(seq_ids, params)):
            if p.greedy:
                continue
            row = filter_logits(logits[i] / p.temperature, p.top_k, p.top_p)  # [V]
            probs = torch.softmax(row, dim=-1)
            gen = self._generator(seq_id, p, logits.device)
            tokens[i] = int(torch.multinomial(probs, 1, generator=gen))
        return tokens


__all__ = ["SamplingParams", "Sampler", "filter_logits"]
