"""Chapter 6's checks accept right answers, reject wrong ones, say "not solved yet" to stubs, and
their references agree with the engine's own BlockManager and Scheduler."""
import random

import pytest

from tutx.engine.block_manager import BlockManager
from tutx.engine.scheduler import Scheduler
from tutx.engine.sequence import Sequence
from tutx.exercises import ch06


def can_allocate_right(num_tokens, block_size, num_free_blocks, num_held_blocks):
    needed = (num_tokens + block_size - 1) // block_size
    return needed - num_held_blocks <= num_free_blocks


def can_allocate_floor(num_tokens, block_size, num_free_blocks, num_held_blocks):
    """Forgets the partly filled last block."""
    return num_free_blocks >= num_tokens // block_size - num_held_blocks


def schedule_right(waiting, num_running, max_num_seqs, max_num_batched_tokens, num_free_blocks, block_size):
    out, budget, free = [], max_num_batched_tokens, num_free_blocks
    for i, n in enumerate(waiting[:max(0, max_num_seqs - num_running)]):
        blocks = -(-n // block_size)
        if n > budget or blocks > free:
            break
        out.append(i)
        budget, free = budget - n, free - blocks
    return out


def schedule_skips_ahead(waiting, num_running, max_num_seqs, max_num_batched_tokens, num_free_blocks, block_size):
    """Lets short requests overtake a long one that does not fit (not FCFS)."""
    out, budget, free = [], max_num_batched_tokens, num_free_blocks
    for i, n in enumerate(waiting):
        blocks = -(-n // block_size)
        if num_running + len(out) < max_num_seqs and n <= budget and blocks <= free:
            out.append(i)
            budget, free = budget - n, free - blocks
    return out


def schedule_ignores_blocks(waiting, num_running, max_num_seqs, max_num_batched_tokens, num_free_blocks, block_size):
    return schedule_right(waiting, num_running, max_num_seqs, max_num_batched_tokens, 10**9, block_size)


def waste_right(prompt_lens, output_lens, batch_size):
    slots = useful = 0
    for i in range(0, len(prompt_lens), batch_size):
        p, o = prompt_lens[i:i + batch_size], output_lens[i:i + batch_size]
        slots += len(p) * max(p) + len(o) * max(o)
        useful += sum(p) + sum(o)
    return (slots - useful) / slots


def waste_full_last_batch(prompt_lens, output_lens, batch_size):
    """Counts the last, smaller batch as if it were full."""
    slots = useful = 0
    for i in range(0, len(prompt_lens), batch_size):
        p, o = prompt_lens[i:i + batch_size], output_lens[i:i + batch_size]
        slots += batch_size * (max(p) + max(o))
        useful += sum(p) + sum(o)
    return 1 - useful / slots


def test_wrong_answers_fail_and_name_the_case():
    with pytest.raises(AssertionError, match=r"check_can_allocate: case 2/10 fn\(33, 16, 2, 0\) returned True, "
                                             r"expected False"):
        ch06.check_can_allocate(can_allocate_floor)
    with pytest.raises(AssertionError, match=r"check_schedule_rule: case 5/9 .* returned \[1, 2\], expected \[\]"):
        ch06.check_schedule_rule(schedule_skips_ahead)
    with pytest.raises(AssertionError, match=r"check_schedule_rule: case 6/9 .* returned \[0, 1, 2\], expected \[0, 1\]"):
        ch06.check_schedule_rule(schedule_ignores_blocks)
    with pytest.raises(AssertionError, match=r"check_static_batch_waste: case 6/7"):
        ch06.check_static_batch_waste(waste_full_last_batch)


def test_can_allocate_is_the_block_managers_rule():
    rng = random.Random(0)
    for _ in range(300):
        block_size, num_blocks = rng.choice([1, 4, 16]), rng.randint(1, 12)
        bm = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
        others = Sequence(list(range(rng.randint(1, num_blocks * block_size))))  # takes some blocks first
        bm.allocate(others)
        seq = Sequence(list(range(rng.randint(1, 3 * num_blocks * block_size))))
        assert bm.can_allocate(seq) == ch06._solution_can_allocate(len(seq), block_size, bm.num_free_blocks)
        if bm.can_allocate(seq):  # then let it grow by one token: can_append
            bm.allocate(seq)
            seq.append_token(0)
            assert bm.can_append(seq) == ch06._solution_can_allocate(len(seq), block_size, bm.num_free_blocks,
                                                           len(seq.block_table))


def test_schedule_rule_is_the_schedulers_admission():
    rng = random.Random(1)
    kinds = {"all": 0, "some": 0, "none": 0}
    for _ in range(300):
        block_size, num_blocks = rng.choice([2, 4, 8]), rng.randint(4, 40)
        max_num_seqs, budget = rng.randint(1, 6), rng.randint(4, 80)
        sched = Scheduler(BlockManager(num_blocks, block_size, enable_prefix_caching=False), max_num_seqs, budget)
        running = []
        for _ in range(rng.randint(0, max_num_seqs)):  # already running: they hold blocks and seats
            s = Sequence(list(range(rng.randint(1, block_size * 2))))
            if sched.block_manager.can_allocate(s):
                sched.block_manager.allocate(s)
                sched.running.append(s)
                running.append(s)
        waiting = [Sequence(list(range(rng.randint(1, 40)))) for _ in range(rng.randint(0, 6))]
        for s in waiting:
            sched.add(s)
        want = ch06._solution_schedule_rule([len(s) for s in waiting], len(running), max_num_seqs, budget,
                                  sched.block_manager.num_free_blocks, block_size)
        batch, is_prefill = sched.schedule()
        if is_prefill:
            assert [waiting.index(s) for s in batch] == want
        else:
            assert want == []
        kinds["none" if not want else "all" if len(want) == len(waiting) else "some"] += 1
    assert min(kinds.values()) >= 30, kinds  # every outcome is exercised


def test_static_batch_waste_extremes():
    assert ch06._solution_static_batch_waste([5, 9, 3], [4, 1, 7], 1) == 0
    assert ch06._solution_static_batch_waste([10, 10, 10], [1, 1, 1], 3) == 0
    assert ch06._solution_static_batch_waste([1, 99], [1, 1], 2) == pytest.approx(1 - 102 / 200)


def test_blocks_to_admit_reference_is_what_the_block_manager_takes():
    """The hidden cases come with the free blocks a real BlockManager's allocation took."""
    cases = ch06._admission_cases(seed=11, n=200)
    for prompt, block_size, cached, taken in cases:
        assert ch06._solution_blocks_to_admit(prompt, block_size, cached) == taken
    shared = sum(taken < -(-len(p) // bs) for p, bs, _, taken in cases)
    free_hits = sum(any(not held for held in c.values()) for _, _, c, _ in cases)
    assert shared >= 40 and free_hits >= 40  # both kinds of hit are exercised


def test_blocks_to_admit_check(capsys):
    ch06.check_blocks_to_admit(ch06._solution_blocks_to_admit)
    assert "✅ check_blocks_to_admit: all 42 cases passed" in capsys.readouterr().out

    def no_last_block_rule(prompt, block_size, cached):
        needed, shared = -(-len(prompt) // block_size), 0
        for i in range(needed):
            held = cached.get(tuple(prompt[:(i + 1) * block_size]))
            if held is None:
                break
            shared += held
        return needed - shared

    with pytest.raises(AssertionError, match="check_blocks_to_admit: case"):
        ch06.check_blocks_to_admit(no_last_block_rule)


def test_all_names_are_checks_and_the_contract_covers_them():
    assert all(name.startswith("check_") for name in ch06.__all__)
    assert set(ch06.CONTRACT) == set(ch06.__all__)
