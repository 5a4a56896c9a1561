"""One request as the engine sees it: its tokens, its state, and where its KV cache lives.

Plain Python (no torch), so the block manager and the scheduler can be tested without a model.
"""
from __future__ import annotations

import enum
import itertools

from tutx.engine.sampling import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = "waiting"  # queued for a prefill (new, or preempted and to be recomputed)
    RUNNING = "running"  # holds KV-cache blocks and decodes one token per step
    FINISHED = "finished"  # stopped by eos, a stop token/string, max_tokens or the context length
    ABORTED = "aborted"  # cancelled by the client


class Sequence:
    """Token ids (prompt then completion), status, block table and finish reason of one request.

    ``block_table[i]`` is the pool block holding positions ``i*block_size .. (i+1)*block_size-1``;
    ``num_cached_tokens`` is how many leading tokens already had their K/V in the pool
    (prefix cache) when the sequence was last admitted, so its prefill skips them;
    ``num_computed_tokens`` how many leading tokens have their K/V in the pool now (cached ones and
    every computed chunk of the prompt; ``len - 1`` while it decodes).
    """

    _ids = itertools.count()

    def __init__(self, token_ids: list[int], params: SamplingParams | None = None,
                 request_id: str | None = None):
        # Trusted input: LLMEngine checked the token ids and the params (CONTRIBUTING.md, "Errors").
        self.seq_id = next(Sequence._ids)
        self.request_id = request_id if request_id is not None else f"seq-{self.seq_id}"
        self.params = params if params is not None else SamplingParams()
        self.token_ids: list[int] = list(token_ids)
        self.num_prompt_tokens = len(token_ids)
        self.status = SequenceStatus.WAITING
        self.block_table: list[int] = []
        self.num_cached_tokens = 0
        self.num_computed_tokens = 0
        self.finish_reason: str | None = None  # "stop", "length" or "abort"
        self.stop_reason: int | str | None = None  # the stop token id or stop string that matched
        # Log-probabilities, when the params ask for them (filled by the engine).
        self.logprobs: list[dict[int, float]] | None = [] if self.params.logprobs is not None else None
        self.prompt_logprobs: list[dict[int, float] | None] | None = None
        # Incremental detokenization state (owned by tutx.engine.output).
        self.output_text = ""
        self.num_emitted_chars = 0
        self.prefix_offset = max(0, self.num_prompt_tokens - 5)
        self.read_offset = self.num_prompt_tokens

    def __len__(self) -> int:
        return len(self.token_ids)

    def __repr__(self) -> str:
        return (f"Sequence(id={self.seq_id}, request_id={self.request_id!r}, status={self.status.name}, "
                f"prompt={self.num_prompt_tokens}, completion={self.num_completion_tokens}, "
                f"blocks={self.block_table}, finish_reason={self.finish_reason!r})")

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def completion_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_completion_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def last_token(self) -> int:
        return self.token_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.status in (SequenceStatus.FINISHED, SequenceStatus.ABORTED)

    def num_blocks(self, block_size: int) -> int:
        """Blocks needed to hold K/V for all current tokens."""
        return (len(self.token_ids) + block_size - 1) // block_size

    def block_tokens(self, i: int, block_size: int) -> list[int]:
        """The token ids stored in logical block ``i``."""
        return self.token_ids[i * block_size: (i + 1) * block_size]

    @property
    def wants_prompt_logits(self) -> bool:
        """Its next prefill must compute logits at every prompt position (and take no prefix-cache hits)."""
        return self.params.prompt_logprobs is not None and self.prompt_logprobs is None

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)


__all__ = ["Sequence", "SequenceStatus"]
