"""Iteration-level scheduling (Orca): decide, every step, which sequences run.

A static batch waits for its longest member; here a finished request leaves at once and a waiting
one joins at the next step. Each :meth:`Scheduler.schedule` returns either a *prefill* batch
(new or preempted sequences, first come first served, within ``max_num_batched_tokens`` and
``max_num_seqs``) or, when no waiting sequence can be admitted, a *decode* batch of every running
sequence. Prefill and decode never share a step (as in nano-vllm): the simplest correct design.

:meth:`schedule_mixed` is the other policy (``EngineConfig(mixed_batches=True)``): every step
decodes the running sequences and fills the rest of the token budget with chunks of prompts.

When the pool has no block for a decoding sequence's next token, the most recently admitted
running sequence is *preempted by recompute*: its blocks are freed and it goes back to the head of
the waiting queue; on readmission its prompt plus the tokens generated so far are prefilled again
(often largely from the prefix cache).
"""
from __future__ import annotations

from collections import deque

from tutx.engine.block_manager import BlockManager
from tutx.engine.sequence import Sequence, SequenceStatus


class Scheduler:
    """FCFS admission, decode of all running sequences, preemption by recompute."""

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int,
                 max_model_len: int | None = None, eos_token_ids=frozenset(),
                 mixed_prefill_budget: int | None = None, idle_prefill_budget: int | None = None):
        # Trusted arguments: LLMEngine and EngineConfig checked them (CONTRIBUTING.md, "Errors").
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.mixed_prefill_budget = mixed_prefill_budget  # prompt tokens per mixed step that also decodes
        self.idle_prefill_budget = idle_prefill_budget  # prompt tokens per prefill while nothing decodes
        self.max_model_len = max_model_len  # None: no context limit (tests of the scheduler alone)
        self.eos_token_ids = frozenset(eos_token_ids)
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()  # in admission order: the last is the newest
        self.num_preemptions = 0

    def __repr__(self) -> str:
        return (f"Scheduler(waiting={len(self.waiting)}, running={len(self.running)}, "
                f"max_num_seqs={self.max_num_seqs}, max_num_batched_tokens={self.max_num_batched_tokens}, "
                f"preemptions={self.num_preemptions}, {self.block_manager!r})")

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """``(sequences to run, is_prefill)``; an empty list when nothing is left to do."""
        scheduled: list[Sequence] = []
        num_tokens = 0
        # Nothing decoding (the start of a burst): a smaller first step streams its tokens sooner.
        budget = self.idle_prefill_budget if not self.running and self.idle_prefill_budget else \
            self.max_num_batched_tokens
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # Budget counts the whole sequence: conservative when part of it is prefix-cached.
            # (A first prompt longer than the idle budget goes alone, within the full one.)
            limit = budget if scheduled else self.max_num_batched_tokens
            if num_tokens + len(seq) > limit or not self.block_manager.can_allocate(seq):
                break
            self.block_manager.allocate(seq)
            num_tokens += len(seq) - seq.num_cached_tokens
            seq.status = SequenceStatus.RUNNING
            self.waiting.popleft()
            self.running.append(seq)
            scheduled.append(seq)
        if scheduled:
            return scheduled, True

        while self.running:
            seq = self.running.popleft()
            if self._slot_or_preempt(seq):
                scheduled.append(seq)
        self.running.extend(scheduled)
        return scheduled, False

    def _slot_or_preempt(self, seq: Sequence) -> bool:
        """Give ``seq`` (just taken from the front of ``running``) the slot for its next token,
        preempting the most recently admitted sequences while the pool is full; False when
        ``seq`` itself had to go."""
        while not self.block_manager.can_append(seq):
            if not self.running:
                self.preempt(seq)
                return False
            self.preempt(self.running.pop())  # the most recently admitted one
        self.block_manager.append_slot(seq)
        return True

    def schedule_mixed(self) -> tuple[list[Sequence], list[Sequence], list[int]]:
        """``(decode, prefill, chunks)`` for one step of chunked prefill mixed with decode (vLLM's
        scheduler). Every running sequence with a new token gets its slot and decodes (preempting
        the newest when the pool is full, as :meth:`schedule` does); then the running sequences
        part-way through their prompt, then waiting ones first come first served, get *chunks* of
        their prompts that fill what is left of ``max_num_batched_tokens``. ``chunks[i]`` is how
        many tokens ``prefill[i]`` computes in this step; a chunk that reaches the end of its
        sequence gives the next token. A sequence that wants prompt logprobs is admitted whole.
        In a step that decodes, prompts get at most ``mixed_prefill_budget`` tokens (when set), so
        the decoding requests' steps stay short; a step with nothing to decode gets the whole budget."""
        decode: list[Sequence] = []
        kept: list[Sequence] = []
        while self.running:
            seq = self.running.popleft()
            if seq.num_computed_tokens < len(seq) - 1:  # part-way through its prompt: its blocks are there
                kept.append(seq)
            elif self._slot_or_preempt(seq):
                decode.append(seq)
                kept.append(seq)
        self.running.extend(kept)
        full = self.max_num_batched_tokens - len(decode)  # what a whole prompt may take
        budget = full if not decode or self.mixed_prefill_budget is None else min(full, self.mixed_prefill_budget)
        prefill: list[Sequence] = []
        chunks: list[int] = []
        for seq in kept:
            if seq.num_computed_tokens < len(seq) - 1 and budget > 0:
                n = min(len(seq) - seq.num_computed_tokens, budget)
                prefill.append(seq)
                chunks.append(n)
                budget, full = budget - n, full - n
        while self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            seq = self.waiting[0]
            # A prompt-logprobs request goes whole, within the full budget (the cap would starve it).
            if (seq.wants_prompt_logits and len(seq) > full) or not self.block_manager.can_allocate(seq):
                break
            take = full if seq.wants_prompt_logits else budget
            self.block_manager.allocate(seq, take)
            n = min(len(seq) - seq.num_cached_tokens, take)
            seq.status = SequenceStatus.RUNNING
            self.waiting.popleft()
            self.running.append(seq)
            prefill.append(seq)
            chunks.append(n)
            budget, full = budget - n, full - n
        return decode, prefill, chunks

    def preempt(self, seq: Sequence) -> None:
        """Free ``seq``'s blocks and requeue it first in line, to be recomputed."""
        self.block_manager.free(seq)
        seq.status, seq.num_computed_tokens = SequenceStatus.WAITING, 0
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def postprocess(self, seqs: list[Sequence], tokens: list[int]) -> None:
        """After a step: append each sequence's new token, end those that are done, free their blocks.

        A sequence ends on its model's eos (unless ``ignore_eos``) or one of its ``stop_token_ids``
        ("stop", ``stop_reason`` = the stop token, None for eos), or at ``max_tokens`` or the
        context length ("length"). A prompt-scoring request (``max_tokens=0``) ends right after
        its prefill, without a token. Stop *strings* need the text: see :mod:`tutx.engine.output`.
        """
        eos, max_len = self.eos_token_ids, self.max_model_len
        for seq, token in zip(seqs, tokens):
            p = seq.params
            if p.max_tokens == 0:
                self.finish(seq, "length")
                continue
            seq.append_token(token)
            if (token in eos and not p.ignore_eos) or token in p.stop_token_ids:
                seq.stop_reason = token if token in p.stop_token_ids else None
                self.finish(seq, "stop")
            elif seq.num_completion_tokens >= p.max_tokens or (max_len is not None and len(seq) >= max_len):
                self.finish(seq, "length")

    def finish(self, seq: Sequence, reason: str) -> None:
        """A running sequence is done: release its blocks."""
        self.running.remove(seq)
        self.block_manager.free(seq)
        seq.status, seq.finish_reason = SequenceStatus.FINISHED, reason

    def abort(self, seq: Sequence) -> None:
        """Cancel a waiting or running sequence and release its blocks."""
        if seq in self.waiting:
            self.waiting.remove(seq)
        elif seq in self.running:
            self.running.remove(seq)
        else:
            raise ValueError(f"seq: {seq.request_id!r} is neither waiting nor running ({seq.status.name})")
        self.block_manager.free(seq)
        seq.status, seq.finish_reason = SequenceStatus.ABORTED, "abort"


__all__ = ["Scheduler"]
