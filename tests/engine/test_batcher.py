"""Dynamic batching: batches by size and by time, per-request failures, cancellation, back-pressure,
and the tiny LM served through the batcher gives each prompt the output it gets alone."""
import asyncio
import functools
import time

import pytest
from _generate import PROMPTS, alone

from tutx.engine.batcher import BatcherStats, DynamicBatcher, QueueFull
from tutx.engine.static_batching import greedy_generate
from tutx.models import load_tiny


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=30))


class Recorder:
    """A batched fn that doubles its items and remembers every batch it saw."""

    def __init__(self, fail_on=None, delay=0.0):
        self.batches, self.fail_on, self.delay = [], fail_on, delay

    def __call__(self, items):
        self.batches.append(list(items))
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError(f"bad item {self.fail_on}")
        return [2 * x for x in items]


# ---- batching ---------------------------------------------------------------------------------
def test_each_caller_gets_its_own_result_in_full_batches():
    fn = Recorder()

    async def main():
        async with DynamicBatcher(fn, max_batch_size=4, max_wait_ms=2000) as batcher:
            start = time.perf_counter()
            results = await asyncio.gather(*(batcher.submit(i) for i in range(8)))
            return results, time.perf_counter() - start, batcher.stats

    results, elapsed, stats = run(main())
    assert results == [2 * i for i in range(8)]
    assert fn.batches == [[0, 1, 2, 3], [4, 5, 6, 7]]  # full batches leave without waiting
    assert elapsed < 1.5
    assert stats.batches == 2 and stats.mean_batch_size == 4.0 and stats.requests == 8


def test_partial_batch_leaves_after_max_wait():
    fn = Recorder()

    async def main():
        async with DynamicBatcher(fn, max_batch_size=16, max_wait_ms=100) as batcher:
            start = time.perf_counter()
            first = await asyncio.gather(*(batcher.submit(i) for i in range(3)))
            waited = time.perf_counter() - start
            later = await batcher.submit(10)  # a new batch, its own clock
            return first, waited, later

    first, waited, later = run(main())
    assert first == [0, 2, 4] and later == 20
    assert fn.batches == [[0, 1, 2], [10]]
    assert 0.09 <= waited < 2.0


def test_async_fn_and_requests_arriving_during_a_batch():
    seen = []

    async def fn(items):
        seen.append(list(items))
        await asyncio.sleep(0.05)
        return [x + 1 for x in items]

    async def main():
        async with DynamicBatcher(fn, max_batch_size=8, max_wait_ms=0) as batcher:
            first = asyncio.ensure_future(batcher.submit(0))
            await asyncio.sleep(0.01)  # the first batch [0] is running now
            rest = await asyncio.gather(*(batcher.submit(i) for i in range(1, 4)))
            return [await first] + rest, batcher.stats

    results, stats = run(main())
    assert results == [1, 2, 3, 4]
    assert seen == [[0], [1, 2, 3]]  # queued while [0] ran, then left together
    assert stats.batch_sizes == [1, 3] and stats.mean_batch_size == 2.0


# ---- failures -----------------------------------------------------------------------------------
def test_exception_in_a_slot_fails_only_that_request():
    def fn(items):
        return [ValueError(f"no {x}") if x == 2 else x for x in items]

    async def main():
        async with DynamicBatcher(fn, max_batch_size=4, max_wait_ms=1000) as batcher:
            return await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True), batcher.stats

    results, stats = run(main())
    assert results[:2] == [0, 1] and results[3] == 3
    assert isinstance(results[2], ValueError) and str(results[2]) == "no 2"
    assert stats.failed == 1 and stats.retried_batches == 0


def test_batch_that_raises_is_retried_item_by_item():
    fn = Recorder(fail_on=3)

    async def main():
        async with DynamicBatcher(fn, max_batch_size=4, max_wait_ms=1000) as batcher:
            return await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True), batcher.stats

    results, stats = run(main())
    assert results[:3] == [0, 2, 4]
    assert isinstance(results[3], RuntimeError) and "bad item 3" in str(results[3])
    assert fn.batches == [[0, 1, 2, 3], [0], [1], [2], [3]]
    assert stats.retried_batches == 1 and stats.failed == 1 and stats.batches == 1


def test_wrong_number_of_results_fails_the_batch_clearly():
    async def main():
        async with DynamicBatcher(lambda items: items[:-1], max_batch_size=2, max_wait_ms=1000) as batcher:
            return await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)

    results = run(main())
    for r in results:
        assert isinstance(r, ValueError) and "fn: expected a list of 2 results (one per item), got 1 results" in str(r)


def test_cancelled_request_never_reaches_fn():
    fn = Recorder()

    async def main():
        async with DynamicBatcher(fn, max_batch_size=8, max_wait_ms=200) as batcher:
            tasks = [asyncio.ensure_future(batcher.submit(i)) for i in range(4)]
            await asyncio.sleep(0.02)  # all four are queued, the batch is still waiting
            tasks[1].cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            return results, batcher.stats

    results, stats = run(main())
    assert isinstance(results[1], asyncio.CancelledError)
    assert [results[0], results[2], results[3]] == [0, 4, 6]
    assert fn.batches == [[0, 2, 3]]
    assert stats.cancelled == 1


def test_queue_full_is_a_clear_runtime_error():
    async def main():
        async with DynamicBatcher(Recorder(), max_batch_size=8, max_wait_ms=100, max_queue=2) as batcher:
            queued = [asyncio.ensure_future(batcher.submit(i)) for i in range(2)]
            await asyncio.sleep(0)
            with pytest.raises(QueueFull, match=r"2 requests are already waiting \(max_queue=2\)") as err:
                await batcher.submit(99)
            assert isinstance(err.value, RuntimeError)
            return await asyncio.gather(*queued), batcher.stats

    results, stats = run(main())
    assert results == [0, 2] and stats.rejected == 1


def test_life_cycle():
    fn = Recorder()

    async def main():
        batcher = DynamicBatcher(fn, max_batch_size=8, max_wait_ms=10_000)
        assert "not started" in repr(batcher)
        with pytest.raises(RuntimeError, match="not running; call start"):
            await batcher.submit(1)
        await batcher.start()
        with pytest.raises(RuntimeError, match="already started"):
            await batcher.start()
        pending = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        await batcher.stop()  # runs what is queued now, without waiting the 10 s
        assert time.perf_counter() - start < 5
        assert [p.result() for p in pending] == [0, 2, 4]
        with pytest.raises(RuntimeError, match="not running"):
            await batcher.submit(1)
        await batcher.stop()  # twice is fine
        return repr(batcher), repr(batcher.stats)

    text, stats = run(main())
    assert "stopped" in text and "max_batch_size=8" in text
    assert stats.startswith("BatcherStats(1 batches, mean size 3.00")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(fn=42), TypeError, "fn: expected a callable"),
    (dict(max_batch_size=0), ValueError, "max_batch_size: expected an int >= 1, got 0"),
    (dict(max_batch_size=2.0), TypeError, "max_batch_size: expected an int, got 2.0"),
    (dict(max_wait_ms=-1), ValueError, "max_wait_ms: expected a number >= 0, got -1"),
    (dict(max_wait_ms=float("inf")), ValueError, "max_wait_ms: expected a finite number, got inf"),
    (dict(max_queue=0), ValueError, "max_queue: expected an int >= 1, got 0"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        DynamicBatcher(**{"fn": Recorder(), **kwargs})


def test_stats_empty():
    assert BatcherStats().mean_batch_size == 0.0


@pytest.fixture(scope="module")
def tiny(one_thread):
    return load_tiny()


def test_batcher_serves_the_tiny_lm(tiny):
    model, tokenizer = tiny
    prompts = [tokenizer.encode(p) for p in PROMPTS] + [[]]  # the empty prompt is invalid
    fn = functools.partial(greedy_generate, model, max_new_tokens=10, pad_id=tokenizer.pad_token_id,
                           eos_id=tokenizer.eos_token_id)

    async def main():
        async with DynamicBatcher(fn, max_batch_size=8, max_wait_ms=50) as batcher:
            results = await asyncio.gather(*(batcher.submit(p) for p in prompts), return_exceptions=True)
            return results, batcher.stats

    results, stats = run(main())
    assert results[:4] == [alone(model, p, 10) for p in prompts[:4]]
    assert isinstance(results[4], ValueError) and "expected a non-empty list of token ids" in str(results[4])
    assert stats.batch_sizes == [5] and stats.retried_batches == 1 and stats.failed == 1
