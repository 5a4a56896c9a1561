"""What one engine step did: the record that timelines (Chapter 6) and metrics (Chapter 7) read.

``LLMEngine.step()`` fills one :class:`StepStats` per step that ran a batch, keeps it as
``engine.last_step_stats`` and passes it to every hook registered with
``engine.add_step_hook(fn)``. Plain data, cheap to build: a hook must not slow the step down.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepStats:
    """One step of the engine.

    - ``kind``: "prefill", "decode", or "mixed" (both, with ``EngineConfig(mixed_batches=True)``).
    - ``request_ids``: the requests that ran, in batch order.
    - ``num_tokens``: positions computed (the prompt tokens, or chunks of them, not served by the
      prefix cache, plus one per decoding sequence).
    - ``num_cached_tokens``: prompt tokens served by the prefix cache (counted in the step that
      admitted the prompt).
    - ``prefill_request_ids``: the requests whose prompts this step prefilled (all of them in a
      prefill step, none in a decode step; in a mixed step the newly admitted ones and the
      chunked prompts it continued).
    - ``block_tables``: each *running* request's block table during the step (before finished ones
      freed theirs), request id -> pool block ids.
    - ``num_blocks_used / num_blocks_free``: the pool after the step.
    - ``num_waiting / num_running``: the queues after the step.
    - ``num_preemptions``: sequences preempted while scheduling this step.
    - ``finished``: requests that ended in this step, request id -> finish reason.
    - ``duration_s``: wall time of the step (schedule, forward, sample, postprocess).
    """

    step: int
    kind: str
    request_ids: tuple[str, ...]
    num_tokens: int
    num_cached_tokens: int
    block_tables: dict[str, tuple[int, ...]]
    num_blocks_used: int
    num_blocks_free: int
    num_waiting: int
    num_running: int
    num_preemptions: int
    finished: dict[str, str] = field(default_factory=dict)
    duration_s: float = 0.0
    prefill_request_ids: tuple[str, ...] = ()

    @property
    def is_prefill(self) -> bool:
        return self.kind == "prefill"

    @property
    def num_seqs(self) -> int:
        return len(self.request_ids)


__all__ = ["StepStats"]
