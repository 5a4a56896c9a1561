"""Scheduler: FCFS admission within budgets, decode batches, preemption by recompute (no model)."""
import pytest

from tutx.engine.block_manager import BlockManager
from tutx.engine.scheduler import Scheduler
from tutx.engine.sequence import Sequence, SequenceStatus


def make(num_blocks=16, block_size=4, max_num_seqs=4, max_tokens=32):
    return Scheduler(BlockManager(num_blocks, block_size), max_num_seqs, max_tokens)


def seq(n, start):
    return Sequence(list(range(start, start + n)))


def test_prefill_admits_fcfs_within_token_budget_then_decodes():
    sched = make(max_tokens=20)
    a, b, c = seq(8, 0), seq(10, 100), seq(5, 200)
    for s in (a, b, c):
        sched.add(s)
    batch, is_prefill = sched.schedule()
    assert is_prefill and batch == [a, b]  # 8 + 10 fit 20; c (5 more) does not
    assert all(s.status is SequenceStatus.RUNNING for s in batch)
    batch, is_prefill = sched.schedule()
    assert is_prefill and batch == [c]
    for s in (a, b, c):
        s.append_token(1)
    batch, is_prefill = sched.schedule()
    assert not is_prefill and batch == [a, b, c]


def ran(decode, prefill, chunks, token=1):
    """What the engine does after a mixed step: count the computed tokens, and give a next token to
    every sequence whose computed tokens reached its end (the decodes, the finished prompts)."""
    for s in decode:
        s.num_computed_tokens = len(s)
    for s, n in zip(prefill, chunks):
        s.num_computed_tokens += n
    for s in decode + prefill:
        if s.num_computed_tokens == len(s):
            s.append_token(token)
            s.num_computed_tokens = len(s) - 1


def test_mixed_step_decodes_the_running_then_admits_into_the_rest_of_the_budget():
    sched = make(max_tokens=20)
    a, b, c = seq(8, 0), seq(10, 100), seq(5, 200)
    sched.add(a)
    step = sched.schedule_mixed()
    assert step == ([], [a], [8])  # nothing runs yet: a plain prefill
    ran(*step)
    sched.add(b)
    sched.add(c)
    step = sched.schedule_mixed()  # a decodes (1 token); b (10) and c (5) fit the other 19
    assert step == ([a], [b, c], [10, 5])
    assert list(sched.running) == [a, b, c] and not sched.waiting
    ran(*step)
    assert sched.schedule_mixed() == ([a, b, c], [], [])


def test_mixed_step_chunks_a_prompt_into_what_is_left_of_the_budget():
    sched = make(max_tokens=10)
    a, b, c = seq(8, 0), seq(10, 100), seq(3, 200)
    sched.add(a)
    ran(*sched.schedule_mixed())
    sched.add(b)
    sched.add(c)
    step = sched.schedule_mixed()  # 1 decode token + the first 9 of b's 10; c waits
    assert step == ([a], [b], [9]) and list(sched.waiting) == [c]
    ran(*step)
    assert b.num_computed_tokens == 9 and b.num_completion_tokens == 0  # no token before its prompt's end
    step = sched.schedule_mixed()  # b's last prompt token runs like a decode (one token over the rest); then c
    assert step == ([a, b], [c], [3])
    ran(*step)
    assert b.num_completion_tokens == 1 and c.num_completion_tokens == 1
    assert sched.schedule_mixed() == ([a, b, c], [], [])


def test_mixed_step_admits_a_prompt_logprobs_request_whole_only():
    from tutx.engine.sampling import SamplingParams
    sched = make(max_tokens=10)
    a, b = seq(8, 0), Sequence(list(range(100, 110)), SamplingParams(prompt_logprobs=1))
    sched.add(a)
    ran(*sched.schedule_mixed())
    sched.add(b)
    assert sched.schedule_mixed() == ([a], [], [])  # 9 tokens left, b needs its 10 in one step
    assert list(sched.waiting) == [b]


def test_preempting_a_chunked_prompt_starts_it_again():
    sched = make(num_blocks=5, block_size=4, max_tokens=12)
    a, b = seq(11, 0), seq(8, 100)
    sched.add(a)
    ran(*sched.schedule_mixed())  # a: 11 prompt tokens + its first token: 3 blocks
    sched.add(b)
    step = sched.schedule_mixed()  # a decodes; b gets 2 blocks, 11 of budget left: all 8 of its tokens
    assert step == ([a], [b], [8])
    sched.preempt(b)
    assert b.num_computed_tokens == 0 and not b.block_table and sched.waiting[0] is b


def test_max_num_seqs_limits_running():
    sched = make(max_num_seqs=2)
    seqs = [seq(2, 10 * i) for i in range(3)]
    for s in seqs:
        sched.add(s)
    batch, _ = sched.schedule()
    assert batch == seqs[:2]
    for s in batch:
        s.append_token(1)
    batch, is_prefill = sched.schedule()  # the third must wait for a free seat
    assert not is_prefill and batch == seqs[:2]
    sched.finish(seqs[0], "stop")
    batch, is_prefill = sched.schedule()
    assert is_prefill and batch == [seqs[2]]
    assert seqs[0].finish_reason == "stop" and sched.block_manager.num_free_blocks == 16 - 2


def test_preempts_most_recent_and_requeues_at_head():
    sched = make(num_blocks=3, block_size=4)
    a, b, c = seq(4, 0), seq(4, 100), seq(4, 200)
    for s in (a, b, c):
        sched.add(s)
    batch, _ = sched.schedule()
    assert batch == [a, b, c] and sched.block_manager.num_free_blocks == 0
    for s in (a, b, c):
        s.append_token(1)  # each needs a second block; none is free
    batch, is_prefill = sched.schedule()
    # a needs a block: c (newest) is preempted; b then needs one: c's block went to a, so b goes too.
    assert not is_prefill and batch == [a]
    assert list(sched.waiting) == [b, c] and sched.num_preemptions == 2
    assert b.status is SequenceStatus.WAITING and b.block_table == []
    assert len(b) == 5  # tokens kept: it will be recomputed, prompt plus generated token
    sched.finish(a, "length")
    batch, is_prefill = sched.schedule()
    assert is_prefill and batch == [b]  # FCFS among the preempted; c (2 more blocks) does not fit yet
    assert b.num_cached_tokens == 4  # b's full first block survived in the prefix cache
    assert sched.block_manager.num_free_blocks == 1 and list(sched.waiting) == [c]


def test_abort_frees_blocks_from_either_queue():
    sched = make(num_blocks=4, max_num_seqs=1)
    a, b = seq(5, 0), seq(3, 50)
    sched.add(a)
    sched.add(b)
    sched.schedule()
    sched.abort(b)  # waiting
    sched.abort(a)  # running
    assert a.status is SequenceStatus.ABORTED and a.finish_reason == "abort"
    assert not sched.has_unfinished() and sched.block_manager.num_free_blocks == 4
    with pytest.raises(ValueError, match="neither waiting nor running"):
        sched.abort(a)


def test_postprocess_appends_ends_and_frees():
    """eos, a stop token, max_tokens and the context end a sequence; its blocks go back at once."""
    from tutx.engine.sampling import SamplingParams
    sched = Scheduler(BlockManager(16, 4), 8, 64, max_model_len=8, eos_token_ids={2})
    seqs = [Sequence([5, 6], SamplingParams(max_tokens=4)), Sequence([5, 6], SamplingParams(max_tokens=4)),
            Sequence([5, 6], SamplingParams(max_tokens=4, stop_token_ids=[9])),
            Sequence([5, 6], SamplingParams(max_tokens=1)), Sequence([5, 6, 7, 8, 9, 10, 11], SamplingParams()),
            Sequence([5, 6], SamplingParams(max_tokens=4, ignore_eos=True))]
    for s in seqs:
        sched.add(s)
    ran, is_prefill = sched.schedule()
    assert is_prefill and ran == seqs
    sched.postprocess(ran, [2, 3, 9, 3, 3, 2])
    assert [s.finish_reason for s in seqs] == ["stop", None, "stop", "length", "length", None]
    assert seqs[0].stop_reason is None and seqs[2].stop_reason == 9  # eos vs a stop token
    assert [s.num_completion_tokens for s in seqs] == [1] * 6
    assert list(sched.running) == [seqs[1], seqs[5]]
    assert all(not s.block_table for s in seqs if s.is_finished)
    assert sched.block_manager.num_free_blocks == 16 - 2


def test_prompt_scoring_request_ends_after_prefill_without_a_token():
    from tutx.engine.sampling import SamplingParams
    sched = make()
    s = Sequence([5, 6, 7], SamplingParams(max_tokens=0, prompt_logprobs=1))
    sched.add(s)
    ran, _ = sched.schedule()
    sched.postprocess(ran, [4])
    assert s.finish_reason == "length" and s.num_completion_tokens == 0 and not sched.has_unfinished()


def test_repr():
    sched = make()
    s = seq(2, 0)
    sched.add(s)
    sched.schedule()
    assert "running=1" in repr(sched)


def test_mixed_prefill_budget_caps_prompts_only_in_steps_that_decode():
    sched = Scheduler(BlockManager(16, 4), 4, 20, mixed_prefill_budget=5)
    a, b = seq(12, 0), seq(10, 100)
    sched.add(a)
    step = sched.schedule_mixed()
    assert step == ([], [a], [12])  # nothing decodes yet: the whole budget
    ran(*step)
    sched.add(b)
    step = sched.schedule_mixed()  # a decodes: b gets 5 tokens, not the 19 left
    assert step == ([a], [b], [5])
    ran(*step)
    assert sched.schedule_mixed() == ([a], [b], [5])


def test_mixed_prefill_budget_does_not_starve_a_prompt_logprobs_request():
    from tutx.engine.sampling import SamplingParams
    sched = Scheduler(BlockManager(16, 4), 4, 20, mixed_prefill_budget=5)
    a, b = seq(8, 0), Sequence(list(range(100, 110)), SamplingParams(prompt_logprobs=1))
    sched.add(a)
    ran(*sched.schedule_mixed())
    sched.add(b)
    assert sched.schedule_mixed() == ([a], [b], [10])  # whole, within the 19 left of the full budget


def test_idle_prefill_budget_caps_only_the_steps_taken_while_nothing_decodes():
    sched = Scheduler(BlockManager(32, 4), 8, 24, idle_prefill_budget=10)
    a, b, c, d, e = seq(6, 0), seq(6, 100), seq(6, 200), seq(6, 300), seq(12, 400)
    for s in (a, b, c, d):
        sched.add(s)
    assert sched.schedule() == ([a], True)  # idle: 6 + 6 would pass 10
    assert sched.schedule() == ([b, c, d], True)  # a is running: the full 24
    for s in (a, b, c, d):
        sched.finish(s, "length")
    sched.add(e)
    assert sched.schedule() == ([e], True)  # idle again: a first prompt over 10 goes alone (within 24)


def test_engine_config_checks_idle_prefill_budget():
    from tutx.engine import EngineConfig
    with pytest.raises(ValueError, match="^idle_prefill_budget: expected at most max_num_batched_tokens=100"):
        EngineConfig(max_num_batched_tokens=100, idle_prefill_budget=101)
    with pytest.raises(ValueError, match="^idle_prefill_budget: applies to whole-prompt"):
        EngineConfig(mixed_batches=True, idle_prefill_budget=64)
    with pytest.raises(ValueError, match="idle_prefill_budget"):
        EngineConfig(idle_prefill_budget=0)
