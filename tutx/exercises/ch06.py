"""Checks for Chapter 6's exercises (deployment: batching and the engine's bookkeeping).

Each ``check_…(fn)`` runs your function on a handful of cases and compares it with the reference
solution written below — the same rules :class:`~tutx.engine.BlockManager` and
:class:`~tutx.engine.Scheduler` apply (the tests check that they agree). It prints ``✅ …`` when
all cases pass and raises an ``AssertionError`` that names the first failing case otherwise; a
stub that still returns ``None`` (or ``...``) prints "not solved yet".
"""
from __future__ import annotations

from tutx.exercises._check import check_fn, run_cases

__all__ = ["check_can_allocate", "check_schedule_rule", "check_static_batch_waste",
           "can_allocate", "schedule_rule", "static_batch_waste"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---- 1. can a sequence get its blocks? ------------------------------------------------------

def can_allocate(num_tokens: int, block_size: int, num_free_blocks: int, num_held_blocks: int = 0) -> bool:
    """Whether a sequence of ``num_tokens`` tokens that already holds ``num_held_blocks`` blocks
    can get the rest from ``num_free_blocks`` free ones.

    A sequence needs ``ceil(num_tokens / block_size)`` blocks in all. ``num_held_blocks = 0`` is
    the admission of a new (or preempted) sequence — ``BlockManager.can_allocate``, conservative
    about prefix-cache hits; a running sequence that holds its blocks and has just grown by one
    token is ``BlockManager.can_append`` (it needs a new block only when it crosses a boundary).
    """
    return num_free_blocks >= _cdiv(num_tokens, block_size) - num_held_blocks


def check_can_allocate(fn) -> None:
    """``fn(num_tokens, block_size, num_free_blocks, num_held_blocks) -> bool``."""
    cases = [
        (32, 16, 2, 0),  # exactly two full blocks: fits
        (33, 16, 2, 0),  # one token more needs a third block
        (1, 16, 1, 0),  # the shortest prompt still takes a whole block
        (1, 16, 0, 0),  # ... which must be free
        (100, 8, 12, 0),  # 13 blocks needed
        (100, 8, 13, 0),
        (17, 16, 0, 1),  # a running sequence crossed a boundary: needs one new block, none free
        (17, 16, 1, 1),
        (16, 16, 0, 1),  # still inside its block: nothing new needed
        (250, 16, 3, 13),  # 16 blocks in all, 13 held, 3 free
    ]
    check_fn(fn, "check_can_allocate")
    run_cases("check_can_allocate", fn, can_allocate, cases)


# ---- 2. which waiting sequences does a prefill step admit? ------------------------------------

def schedule_rule(waiting: list[int], num_running: int, max_num_seqs: int, max_num_batched_tokens: int,
                  num_free_blocks: int, block_size: int) -> list[int]:
    """Indices of the ``waiting`` sequences (their lengths in tokens, oldest first) that one
    prefill step admits.

    First come, first served: take the oldest waiting sequence while the running ones plus those
    admitted stay within ``max_num_seqs``, its tokens fit what is left of the step's
    ``max_num_batched_tokens`` and its blocks fit the free ones (each admitted sequence takes its
    blocks); stop at the first sequence that does not fit — later ones wait their turn even if
    they would fit, so no request can be overtaken forever.
    """
    admitted, tokens, free = [], 0, num_free_blocks
    for i, n in enumerate(waiting):
        if num_running + len(admitted) >= max_num_seqs:
            break
        if tokens + n > max_num_batched_tokens or not can_allocate(n, block_size, free):
            break
        admitted.append(i)
        tokens += n
        free -= _cdiv(n, block_size)
    return admitted


def check_schedule_rule(fn) -> None:
    """``fn(waiting, num_running, max_num_seqs, max_num_batched_tokens, num_free_blocks, block_size)
    -> list of admitted indices``."""
    cases = [
        ([8, 10, 5], 0, 4, 20, 16, 4),  # 8 + 10 fit the 20-token budget, 5 more do not
        ([8, 10, 5], 0, 4, 100, 16, 4),  # everything fits
        ([3, 3, 3, 3], 2, 4, 100, 16, 4),  # two seats left
        ([3, 3], 4, 4, 100, 16, 4),  # no seat: a decode step instead
        ([30, 2, 2], 0, 8, 20, 16, 4),  # the oldest is too long for the budget: nobody overtakes it
        ([9, 9, 9], 0, 8, 100, 7, 4),  # blocks: 3 + 3 of 7 free, the third needs 3 more
        ([16, 17], 0, 8, 100, 2, 16),  # 17 tokens need 2 blocks, 1 is left
        ([5], 0, 1, 5, 2, 4),  # exactly at every limit
        ([], 0, 4, 100, 16, 4),  # nothing waiting
    ]
    check_fn(fn, "check_schedule_rule")
    run_cases("check_schedule_rule", fn, schedule_rule, cases)


# ---- 3. how much of a static batch is waste? --------------------------------------------------

def static_batch_waste(prompt_lens: list[int], output_lens: list[int], batch_size: int) -> float:
    """Fraction of the token slots a static batcher computes that nobody asked for.

    The requests are cut into consecutive batches of ``batch_size`` (the last may be smaller).
    Each batch pads every prompt to its longest prompt and decodes every row until its longest
    output is done, so it computes ``rows * (max prompt + max output)`` token slots, of which
    ``sum(prompt) + sum(output)`` are wanted.
    """
    slots = useful = 0
    for start in range(0, len(prompt_lens), batch_size):
        p, o = prompt_lens[start:start + batch_size], output_lens[start:start + batch_size]
        slots += len(p) * (max(p) + max(o))
        useful += sum(p) + sum(o)
    return 1 - useful / slots


def check_static_batch_waste(fn) -> None:
    """``fn(prompt_lens, output_lens, batch_size) -> fraction in [0, 1)``."""
    cases = [
        ([10, 10], [5, 5], 2),  # equal lengths: no waste
        ([10, 30], [5, 5], 2),  # prompt padding only
        ([10, 10], [5, 25], 2),  # one row waits for the other
        ([10, 30, 20, 40], [8, 2, 30, 10], 2),  # two batches
        ([10, 30, 20, 40], [8, 2, 30, 10], 4),  # one batch: more waste
        ([7, 100, 12], [3, 4, 90], 2),  # the last batch is smaller
        ([50, 60, 70], [10, 20, 30], 1),  # batch size 1 is sequential: no waste
    ]
    check_fn(fn, "check_static_batch_waste")
    run_cases("check_static_batch_waste", fn, static_batch_waste, cases, rel_tol=1e-9)
