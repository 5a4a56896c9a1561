"""What a serving benchmark sends, and when: arrival times and prompts, both fixed by a seed.

Arrivals (as ``vllm bench serve``): at ``request_rate`` requests/s the gaps between requests are
drawn from a gamma distribution with shape ``burstiness`` and mean ``1 / request_rate``;
``burstiness = 1`` is a Poisson process, below 1 burstier, above 1 more regular. An infinite
rate sends every request at once.

Prompts are spans of the held-out plays (text the tiny LM never trained on), tokenized with the
tiny LM's tokenizer, with input and output lengths drawn uniformly in
``[len * (1 - range_ratio), len * (1 + range_ratio)]`` (vLLM's random dataset; 0 = fixed).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from tutx._validate import check_int, check_number, check_positive, check_positive_int


def arrival_times(num_requests: int, request_rate: float, burstiness: float = 1.0, seed: int = 0) -> list[float]:
    """Send offsets in seconds from the start, one per request (the first at 0)."""
    check_positive_int("num_requests", num_requests)
    check_rate(request_rate)
    check_positive("burstiness", burstiness)
    check_int("seed", seed)
    if math.isinf(request_rate):
        return [0.0] * num_requests
    rng = random.Random(seed)
    scale = 1.0 / (request_rate * burstiness)  # shape * scale = mean gap = 1 / rate
    times, t = [0.0], 0.0
    for _ in range(num_requests - 1):
        t += rng.gammavariate(burstiness, scale)
        times.append(t)
    return times


def check_rate(request_rate) -> float:
    """A request rate: a number > 0, or ``float('inf')`` (everything at once)."""
    if isinstance(request_rate, bool) or not isinstance(request_rate, (int, float)):
        raise TypeError(f"request_rate: expected a number of requests/s or inf, got {request_rate!r}")
    if math.isnan(request_rate) or request_rate <= 0:
        raise ValueError(f"request_rate: expected a number > 0 (or inf), got {request_rate}")
    return float(request_rate)


def parse_rate(text: str) -> float:
    """``"inf"`` or a positive number (for the command line)."""
    try:
        rate = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"request rate: expected a number of requests/s or 'inf', got {text!r}") from None
    return check_rate(rate)


@dataclass(frozen=True)
class Prompt:
    """One request's prompt (text and its token ids under the tiny LM's tokenizer) and how many tokens to ask for."""

    text: str
    token_ids: tuple[int, ...]
    output_len: int

    @property
    def prompt_len(self) -> int:
        return len(self.token_ids)


_IDS: dict = {}


def _lengths(rng: random.Random, n: int, length: int, ratio: float) -> list[int]:
    lo, hi = max(1, math.floor(length * (1 - ratio))), math.ceil(length * (1 + ratio))
    return [rng.randint(lo, hi) for _ in range(n)]


def sample_prompts(num_prompts: int, input_len: int = 128, output_len: int = 64, range_ratio: float = 0.0,
                   seed: int = 0, tokenizer=None, text: str | None = None) -> list[Prompt]:
    """``num_prompts`` spans of held-out text (``text``, default the held-out plays) with the
    lengths described in the module docstring, deterministic in ``seed``."""
    check_positive_int("num_prompts", num_prompts)
    check_positive_int("input_len", input_len)
    check_positive_int("output_len", output_len)
    check_number("range_ratio", range_ratio, minimum=0, maximum=1)
    check_int("seed", seed)
    if tokenizer is None:
        from tutx.models import load_tiny_tokenizer
        tokenizer = load_tiny_tokenizer()
    if text is None:
        from tutx.models import heldout_text
        text = heldout_text()
    key = (id(tokenizer), hash(text))
    if key not in _IDS:  # tokenizing the plays takes a second or more; do it once per tokenizer and text
        _IDS[key] = tokenizer.encode(text)
    ids = _IDS[key]
    rng = random.Random(seed)
    in_lens = _lengths(rng, num_prompts, input_len, range_ratio)
    out_lens = _lengths(rng, num_prompts, output_len, range_ratio)
    if max(in_lens) >= len(ids):
        raise ValueError(f"input_len: the text has {len(ids)} tokens, too few for prompts of up to {max(in_lens)}")
    prompts = []
    for n_in, n_out in zip(in_lens, out_lens):
        start = rng.randrange(len(ids) - n_in)
        span = tuple(ids[start:start + n_in])
        prompts.append(Prompt(tokenizer.decode(span), span, n_out))
    return prompts


__all__ = ["arrival_times", "check_rate", "parse_rate", "Prompt", "sample_prompts"]
