"""Checks for Chapter 6's exercises (deployment: batching and the engine's bookkeeping).

Each ``check_…(fn)`` runs your function on a handful of cases and compares it with the reference
solution (private, ``_solution_…``) — the same rules :class:`~tutx.engine.BlockManager` and
:class:`~tutx.engine.Scheduler` apply (the tests check that they agree). It prints ``✅ …`` when
all cases pass and raises an ``AssertionError`` that names the first failing case otherwise; a
stub that still returns ``None`` (or ``...``) prints "not solved yet".
"""
from __future__ import annotations

import random

from tutx.exercises._check import check_fn, run_cases

__all__ = ["check_can_allocate", "check_blocks_to_admit", "check_schedule_rule", "check_static_batch_waste"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---- 1. can a sequence get its blocks? ------------------------------------------------------

def _solution_can_allocate(num_tokens: int, block_size: int, num_free_blocks: int, num_held_blocks: int = 0) -> bool:
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
    run_cases("check_can_allocate", fn, _solution_can_allocate, cases)


# ---- 1b. build it: how many free blocks does an admission take, with prefix sharing? -------------

def _solution_blocks_to_admit(prompt: list[int], block_size: int, cached: dict) -> int:
    """Free blocks a new ``prompt`` takes from the pool, counting the blocks it shares.

    ``cached`` maps a prefix (a tuple of ``k * block_size`` tokens) to whether the pool block that
    ends it is held by a running sequence (True) or free but still cached (False). The prompt's
    leading full blocks are looked up in order until the first miss; a hit on a held block costs
    no free block, a hit on a free cached block still takes that block off the free list; the
    block with the prompt's last token is never shared (its logits must be computed).
    """
    needed = -(-len(prompt) // block_size)
    shared = 0
    for i in range(needed):
        end = (i + 1) * block_size
        if end >= len(prompt):
            break
        held = cached.get(tuple(prompt[:end]))
        if held is None:
            break
        shared += held
    return needed - shared


def _admission_cases(seed: int = 6, n: int = 40) -> list[tuple]:
    """Hidden cases from a real :class:`~tutx.engine.BlockManager`: a few requests run (some finish),
    then a new prompt that may share part of their prefix arrives. Each case is ``(prompt,
    block_size, cached, taken)`` with ``taken`` the free blocks its allocation really took."""
    from tutx.engine.block_manager import BlockManager, chain_hash
    from tutx.engine.sequence import Sequence

    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        bs = rng.choice([2, 3, 4, 8])
        bm = BlockManager(64, bs)
        base = [rng.randrange(50) for _ in range(6 * bs)]
        seqs = [Sequence(base[:rng.randint(1, len(base))] + [rng.randrange(50) for _ in range(rng.randint(0, 2 * bs))])
                for _ in range(rng.randint(1, 4))]
        for seq in seqs:
            bm.allocate(seq)
        for seq in seqs:
            if rng.random() < 0.4:
                bm.free(seq)  # finished: its blocks are free but keep their content
        cached = {}
        for seq in seqs:  # every full prefix whose last block is in the pool, and whether it is held
            h = None
            for i in range(len(seq.token_ids) // bs):
                tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
                h = chain_hash(h, tokens)
                block_id = bm.hash_to_block.get(h)
                if block_id is None or bm.blocks[block_id].token_ids != tokens:
                    break
                cached[tuple(seq.token_ids[:(i + 1) * bs])] = bm.blocks[block_id].ref_count > 0
        prompt = base[:rng.randint(1, len(base))] + [rng.randrange(50) for _ in range(rng.randint(0, bs))]
        free = bm.num_free_blocks
        bm.allocate(Sequence(prompt))
        cases.append((prompt, bs, cached, free - bm.num_free_blocks))
    return cases


def check_blocks_to_admit(fn) -> None:
    """``fn(prompt, block_size, cached) -> int``: free blocks the prompt's admission takes (hidden cases)."""
    check_fn(fn, "check_blocks_to_admit")
    cases = [([1, 2, 3, 4, 5], 2, {}),  # nothing cached: 3 blocks
             ([1, 2, 3, 4, 5], 2, {(1, 2): True, (1, 2, 3, 4): True})]  # 2 held blocks shared: 1 free block
    hidden = [case[:3] for case in _admission_cases()]
    run_cases("check_blocks_to_admit", fn, _solution_blocks_to_admit, cases + hidden)


# ---- 2. which waiting sequences does a prefill step admit? ------------------------------------

def _solution_schedule_rule(waiting: list[int], num_running: int, max_num_seqs: int, max_num_batched_tokens: int,
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
        if tokens + n > max_num_batched_tokens or not _solution_can_allocate(n, block_size, free):
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
    run_cases("check_schedule_rule", fn, _solution_schedule_rule, cases)


# ---- 3. how much of a static batch is waste? --------------------------------------------------

def _solution_static_batch_waste(prompt_lens: list[int], output_lens: list[int], batch_size: int) -> float:
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
    run_cases("check_static_batch_waste", fn, _solution_static_batch_waste, cases, rel_tol=1e-9)


# ---- plausible wrong answers, for the contract test (stub -> not solved, wrong -> fails, reference -> passes)

def _wrong_can_allocate(num_tokens, block_size, num_free_blocks, num_held_blocks=0):
    return num_free_blocks >= num_tokens // block_size - num_held_blocks  # forgets the partial last block


def _wrong_blocks_to_admit(prompt, block_size, cached):
    needed = -(-len(prompt) // block_size)
    return needed - sum(1 for k in range(block_size, len(prompt), block_size)
                        if tuple(prompt[:k]) in cached)  # counts free cached blocks as shared


def _wrong_schedule_rule(waiting, num_running, max_num_seqs, max_num_batched_tokens, num_free_blocks, block_size):
    admitted, tokens, free = [], 0, num_free_blocks  # lets short requests overtake (not FCFS)
    for i, n in enumerate(waiting):
        blocks = -(-n // block_size)
        if num_running + len(admitted) < max_num_seqs and tokens + n <= max_num_batched_tokens and blocks <= free:
            admitted.append(i)
            tokens, free = tokens + n, free - blocks
    return admitted


def _wrong_static_batch_waste(prompt_lens, output_lens, batch_size):
    slots = useful = 0  # counts the last, smaller batch as full
    for start in range(0, len(prompt_lens), batch_size):
        p, o = prompt_lens[start:start + batch_size], output_lens[start:start + batch_size]
        slots += batch_size * (max(p) + max(o))
        useful += sum(p) + sum(o)
    return 1 - useful / slots


CONTRACT = {
    "check_can_allocate": (_solution_can_allocate, _wrong_can_allocate),
    "check_blocks_to_admit": (_solution_blocks_to_admit, _wrong_blocks_to_admit),
    "check_schedule_rule": (_solution_schedule_rule, _wrong_schedule_rule),
    "check_static_batch_waste": (_solution_static_batch_waste, _wrong_static_batch_waste),
}
