"""Iteration-level scheduling (Orca): decide, every step, which sequences run.

A static batch waits for its longest member; here a finished request leaves at once and a waiting
one joins at the next step. Each :meth:`Scheduler.schedule` returns either a *prefill* batch
(new or preempted sequences, first come first served, within ``max_num_batched_tokens`` and
``max_num_seqs``) or, when no waiting sequence can be admitted, a *decode* batch of every running
sequence. Prefill and decode never share a step (as in nano-vllm): the simplest correct design.

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

    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int):
        if not isinstance(block_manager, BlockManager):
            raise TypeError(f"block_manager: expected a BlockManager, got {type(block_manager).__name__}")
        for name, value in (("max_num_seqs", max_num_seqs), ("max_num_batched_tokens", max_num_batched_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: deque[Sequence] = deque()  # in admission order: the last is the newest
        self.num_preemptions = 0

    def __repr__(self) -> str:
        return (f"Scheduler(waiting={len(self.waiting)}, running={len(self.running)}, "
                f"max_num_seqs={self.max_num_seqs}, max_num_batched_tokens={self.max_num_batched_tokens}, "
                f"preemptions={self.num_preemptions}, {self.block_manager!r})")

    def add(self, seq: Sequence) -> None:
        if seq.status is not SequenceStatus.WAITING:
            raise ValueError(f"seq: expected a WAITING sequence, got {seq!r}")
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """``(sequences to run, is_prefill)``; an empty list when nothing is left to do."""
        scheduled: list[Sequence] = []
        num_tokens = 0
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            # Budget counts the whole sequence: conservative when part of it is prefix-cached.
            if num_tokens + len(seq) > self.max_num_batched_tokens or not self.block_manager.can_allocate(seq):
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
            while not self.block_manager.can_append(seq):
                if self.running:
                    self.preempt(self.running.pop())  # the most recently admitted one
                else:
                    self.preempt(seq)
                    break
            else:
                self.block_manager.append_slot(seq)
                scheduled.append(seq)
        self.running.extend(scheduled)
        return scheduled, False

    def preempt(self, seq: Sequence) -> None:
        """Free ``seq``'s blocks and requeue it first in line, to be recomputed."""
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

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
