"""Per-request sampling: the parameters a client sends, and the sampler that turns logits into tokens.

Each request brings its own :class:`SamplingParams` (as in vLLM and the OpenAI API), so one
batch can mix greedy and sampled requests. Unseeded sampled rows are drawn together, in one
batched call; a request with a ``seed`` draws from its own ``torch.Generator``, row by row, so its
output does not depend on which other requests share its batches, nor on whether it was
preempted and recomputed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tutx.kernels.cpu_build import KernelBuildError
from tutx.kernels.llama_cpu_ops import argmax_rows_cpu
from tutx._validate import check_bool, check_int, check_number, check_optional_int, check_probability

MAX_LOGPROBS = 20  # top-N alternatives per token a request may ask for (as vLLM's default limit)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one request's completion.

    - ``temperature``: 0 is greedy (argmax); > 0 divides the logits before the softmax.
    - ``top_k``: keep only the ``top_k`` most likely tokens (None: all).
    - ``top_p``: nucleus sampling, keep the smallest set of tokens whose probability reaches ``top_p``.
    - ``seed``: seed of the request's own random generator (None: torch's global generator).
    - ``max_tokens``: the most tokens to generate (0 only with ``prompt_logprobs``: score the prompt).
    - ``stop``: strings that end the completion; the text is cut before the first one (OpenAI semantics).
    - ``stop_token_ids``: token ids that end the completion (their text is not added).
    - ``ignore_eos``: keep generating past the model's end-of-sequence token.
    - ``logprobs``: report, per generated token, its log-probability and those of the ``logprobs`` most
      likely alternatives (log-softmax of the raw logits, before temperature and filtering).
    - ``prompt_logprobs``: the same for every prompt token (the first has none); such a request's
      prefill computes the whole prompt (no prefix-cache hits).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop: tuple[str, ...] = field(default=())
    stop_token_ids: tuple[int, ...] = field(default=())
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self):
        check_number("temperature", self.temperature, minimum=0)
        check_optional_int("top_k", self.top_k, minimum=1)
        check_probability("top_p", self.top_p, allow_zero=False)
        check_optional_int("seed", self.seed)
        check_optional_int("logprobs", self.logprobs, minimum=0, maximum=MAX_LOGPROBS)
        check_optional_int("prompt_logprobs", self.prompt_logprobs, minimum=0, maximum=MAX_LOGPROBS)
        check_int("max_tokens", self.max_tokens, minimum=0 if self.prompt_logprobs is not None else 1)
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        stop = () if stop is None else stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"stop: expected a non-empty string or a list of them, got {self.stop!r}")
        ids = self.stop_token_ids if self.stop_token_ids is not None else ()
        if not isinstance(ids, (list, tuple)):
            raise TypeError(f"stop_token_ids: expected a list of token ids, got {self.stop_token_ids!r}")
        for i, t in enumerate(ids):
            check_int(f"stop_token_ids[{i}]", t, minimum=0)
        check_bool("ignore_eos", self.ignore_eos)
        object.__setattr__(self, "temperature", float(self.temperature))
        object.__setattr__(self, "top_p", float(self.top_p))
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


def filter_logits_batch(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """:func:`filter_logits` for ``[R, V]`` rows at once; ``top_k [R]`` (V for all), ``top_p [R]``."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # [R, V]
    kth = sorted_logits.gather(1, (top_k - 1)[:, None])  # [R, 1]
    probs = torch.softmax(sorted_logits, dim=-1)  # [R, V]
    drop_sorted = (torch.cumsum(probs, dim=-1) - probs) >= top_p[:, None]  # [R, V]
    drop = torch.empty_like(drop_sorted).scatter_(1, order, drop_sorted)
    return logits.masked_fill(drop | (logits < kth), float("-inf"))


def top_logprobs(logits: torch.Tensor, chosen: list[int], n: list[int]) -> list[dict[int, float]]:
    """Per row of ``logits [R, V]``: ``{token: logprob}`` for ``chosen[r]`` and the ``n[r]`` most likely."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # [R, V]
    k = max(n)
    idx = torch.tensor(chosen, device=logits.device)[:, None]  # [R, 1]
    picked = logp.gather(1, idx)[:, 0].tolist()  # [R]
    vals, ids = (logp.topk(k, dim=-1) if k else (logp[:, :0], idx[:, :0]))
    vals, ids = vals.tolist(), ids.tolist()
    return [{**dict(zip(ids[r][:n[r]], vals[r][:n[r]])), chosen[r]: picked[r]} for r in range(len(chosen))]


class Sampler:
    """Turns a batch of last-position logits into one token per sequence, by each sequence's params.

    Keeps a ``torch.Generator`` per seeded request (keyed by the sequence id) until
    :meth:`release` is called when the request ends.
    """

    def __init__(self):
        self._generators: dict[int, torch.Generator] = {}
        try:  # greedy batches on the CPU: a C argmax (torch's takes ~170 us for 48 rows of 4,096)
            argmax_rows_cpu(torch.zeros(1, 1))
            self._fast_argmax = True
        except KernelBuildError:
            self._fast_argmax = False

    def __repr__(self) -> str:
        return f"Sampler(seeded_requests={len(self._generators)})"

    def _generator(self, seq_id: int, params: SamplingParams, device) -> torch.Generator:
        gen = self._generators.get(seq_id)
        if gen is None:
            gen = torch.Generator(device=device).manual_seed(params.seed)
            self._generators[seq_id] = gen
        return gen

    def release(self, seq_id: int) -> None:
        self._generators.pop(seq_id, None)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seq_ids: list[int], params: list[SamplingParams]) -> list[int]:
        """``logits [B, V]`` -> B token ids (plain ints); one device->host copy for the whole batch."""
        if logits.ndim != 2 or logits.shape[0] != len(seq_ids) or len(seq_ids) != len(params):
            raise ValueError(f"logits: expected shape [B={len(seq_ids)}, V] with one params per row, "
                             f"got {tuple(logits.shape)} and {len(params)} params")
        logits = logits.float()
        if self._fast_argmax and logits.device.type == "cpu" and logits.is_contiguous() and \
                all(p.greedy for p in params):  # all greedy: one C pass per row
            return argmax_rows_cpu(logits)
        tokens = logits.argmax(dim=-1)  # [B]: greedy rows are done
        free = [i for i, p in enumerate(params) if not p.greedy and p.seed is None]
        if free:  # unseeded sampled rows: one batched draw
            ps = [params[i] for i in free]
            dev, vocab = logits.device, logits.shape[1]
            temp = torch.tensor([p.temperature for p in ps], device=dev)[:, None]  # [R, 1]
            top_k = torch.tensor([min(p.top_k or vocab, vocab) for p in ps], device=dev)  # [R]
            top_p = torch.tensor([p.top_p for p in ps], device=dev)  # [R]
            rows = filter_logits_batch(logits[free] / temp, top_k, top_p)  # [R, V]
            tokens[free] = torch.multinomial(torch.softmax(rows, dim=-1), 1)[:, 0]
        for i, (seq_id, p) in enumerate(zip(seq_ids, params)):
            if p.greedy or p.seed is None:
                continue
            row = filter_logits(logits[i] / p.temperature, p.top_k, p.top_p)  # [V]
            gen = self._generator(seq_id, p, logits.device)
            tokens[i] = torch.multinomial(torch.softmax(row, dim=-1), 1, generator=gen)[0]
        return tokens.tolist()


__all__ = ["SamplingParams", "Sampler", "filter_logits", "filter_logits_batch", "top_logprobs", "MAX_LOGPROBS"]
