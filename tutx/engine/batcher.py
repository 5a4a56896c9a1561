"""Dynamic (request-level) batching: gather concurrent requests into one call of a batched function.

A GPU runs a batch of 8 prompts in about the time of one, so a server that waits a few
milliseconds to group requests multiplies its throughput. :class:`DynamicBatcher` is that
waiting room (as in Triton Inference Server or Ray Serve's ``@serve.batch``): every caller does
``await batcher.submit(item)`` and gets back *its own* result, while behind the scenes
``fn(list_of_items)`` runs once per batch. A batch leaves when it has ``max_batch_size`` items
or ``max_wait_ms`` after its oldest item arrived, whichever comes first. Batches run one at a
time; requests that arrive meanwhile wait for the next one.

Failures stay with their request:

- ``fn`` may put an ``Exception`` instance in a result slot: that caller gets it raised;
- if the batched call raises, each item of the batch is retried alone, so only the bad ones fail;
- a caller cancelled while waiting is taken out of the queue and never reaches ``fn`` (once
  its batch has started, the result is simply dropped).

Continuous batching (:mod:`tutx.engine.llm_engine`) goes further — requests join and leave a
running batch at every decode step. Here whole requests are batched, the simpler idea it builds on;
:func:`tutx.engine.static_batching.greedy_generate` is the batched function for a decoder.
"""
from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tutx._validate import check_int, check_number

__all__ = ["DynamicBatcher", "BatcherStats", "QueueFull"]


class QueueFull(RuntimeError):
    """``submit`` found ``max_queue`` requests already waiting: the caller should back off (HTTP 503)."""


@dataclass
class BatcherStats:
    """Counters for plots: the size of every batch run, and what happened to the requests."""

    batch_sizes: list[int] = field(default_factory=list)
    requests: int = 0  # accepted by submit
    failed: int = 0  # resolved with an exception
    retried_batches: int = 0  # batched calls that raised, then ran item by item
    cancelled: int = 0  # cancelled while still queued
    rejected: int = 0  # refused with QueueFull

    @property
    def batches(self) -> int:
        return len(self.batch_sizes)

    @property
    def mean_batch_size(self) -> float:
        return sum(self.batch_sizes) / len(self.batch_sizes) if self.batch_sizes else 0.0

    def __repr__(self) -> str:
        return (f"BatcherStats({self.batches} batches, mean size {self.mean_batch_size:.2f}, "
                f"{self.requests} requests, {self.failed} failed, {self.retried_batches} retried batches, "
                f"{self.cancelled} cancelled, {self.rejected} rejected)")


@dataclass(eq=False)
class _Request:
    item: Any
    future: asyncio.Future
    arrived: float  # loop.time() when queued
    taken: bool = False  # put in a batch (cancelling it now only drops the result)


class _BadResults(Exception):
    """fn returned the wrong number of results: a bug in fn, failing the whole batch."""


class DynamicBatcher:
    """``await submit(item)`` → ``fn([..., item, ...])[i]``; see the module docstring.

    fn: ``list[item] -> list[result]`` of the same length, sync (run in ``executor``, default
    the loop's thread pool, so the event loop keeps accepting requests) or ``async``.
    max_batch_size: the most items per call of ``fn``.
    max_wait_ms: how long the oldest queued request may wait for others (0: no waiting —
    batches then form only from requests that queued while the previous batch ran).
    max_queue: the most requests waiting for a batch (not counting the batch running); one
    more gets :class:`QueueFull`.
    Use as ``async with DynamicBatcher(fn, 8, 5.0) as batcher:`` or call ``start()``/``stop()``;
    ``stats`` (:class:`BatcherStats`) counts batches and their sizes.
    """

    def __init__(self, fn: Callable, max_batch_size: int = 8, max_wait_ms: float = 5.0,
                 max_queue: int = 1024, executor=None):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable taking a list of items, got {fn!r}")
        check_int("max_batch_size", max_batch_size, minimum=1)
        check_number("max_wait_ms", max_wait_ms, minimum=0)
        check_int("max_queue", max_queue, minimum=1)
        self.fn, self.max_batch_size, self.max_wait_ms, self.max_queue = fn, max_batch_size, max_wait_ms, max_queue
        self.executor = executor
        self.stats = BatcherStats()
        self._is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None))
        self._pending: list[_Request] = []
        self._wake: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._closing = False

    # ---- life cycle ---------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._worker is not None and not self._closing

    async def start(self) -> "DynamicBatcher":
        if self._worker is not None:
            raise RuntimeError("DynamicBatcher.start: already started (a batcher runs once)")
        self._wake = asyncio.Event()
        self._worker = asyncio.get_running_loop().create_task(self._run())
        return self

    async def stop(self) -> None:
        """Stop accepting requests, run the ones already queued (without waiting), then return."""
        if self._worker is None or self._closing:
            return
        self._closing = True
        self._wake.set()
        await self._worker

    async def __aenter__(self) -> "DynamicBatcher":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # ---- the client side ------------------------------------------------------------------
    async def submit(self, item):
        """Queue ``item`` and wait for its own result (or its own exception)."""
        if not self.running:
            raise RuntimeError("DynamicBatcher.submit: the batcher is not running; call start() or "
                               "use 'async with DynamicBatcher(...)'")
        if len(self._pending) >= self.max_queue:
            self.stats.rejected += 1
            raise QueueFull(f"DynamicBatcher: {self.max_queue} requests are already waiting (max_queue="
                            f"{self.max_queue}); retry later or raise max_queue")
        loop = asyncio.get_running_loop()
        request = _Request(item, loop.create_future(), loop.time())
        self._pending.append(request)
        self.stats.requests += 1
        self._wake.set()
        try:
            return await request.future
        except asyncio.CancelledError:
            if not request.taken:  # still queued: it never reaches fn
                if request in self._pending:
                    self._pending.remove(request)
                self.stats.cancelled += 1
            raise

    # ---- the worker -------------------------------------------------------------------------
    def _drop_done(self) -> None:
        self._pending = [r for r in self._pending if not r.future.done()]

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._drop_done()
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            # wait for a full batch, or until the oldest request has waited max_wait_ms
            while len(self._pending) < self.max_batch_size and not self._closing:
                timeout = self._pending[0].arrived + self.max_wait_ms / 1000 - loop.time()
                if timeout <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except asyncio.TimeoutError:
                    break
                self._drop_done()
                if not self._pending:
                    break
            self._drop_done()
            batch, self._pending = self._pending[:self.max_batch_size], self._pending[self.max_batch_size:]
            for request in batch:
                request.taken = True
            if batch:
                await self._run_batch(batch)

    async def _call(self, items: list) -> list:
        if self._is_async:
            results = await self.fn(items)
        else:
            results = await asyncio.get_running_loop().run_in_executor(self.executor, self.fn, items)
            if inspect.isawaitable(results):  # e.g. a lambda that returns a coroutine
                results = await results
        if isinstance(results, (str, bytes)) or not isinstance(results, Sequence) or len(results) != len(items):
            got = f"{len(results)} results" if isinstance(results, Sequence) else repr(type(results).__name__)
            raise _BadResults(f"fn: expected a list of {len(items)} results (one per item), got {got}")
        return list(results)

    async def _run_batch(self, batch: list[_Request]) -> None:
        self.stats.batch_sizes.append(len(batch))
        try:
            results = await self._call([r.item for r in batch])
        except _BadResults as exc:  # a bug in fn, not in a request: retrying would not help
            results = [ValueError(str(exc))] * len(batch)
        except Exception as exc:
            if len(batch) == 1:
                results = [exc]
            else:
                self.stats.retried_batches += 1
                results = []
                for request in batch:
                    try:
                        results += await self._call([request.item])
                    except _BadResults as err:
                        results.append(ValueError(str(err)))
                    except Exception as err:
                        results.append(err)
        for request, result in zip(batch, results):
            if request.future.done():  # cancelled after its batch started
                continue
            if isinstance(result, BaseException):
                self.stats.failed += 1
                request.future.set_exception(result)
            else:
                request.future.set_result(result)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped" if self._closing else "not started"
        return (f"DynamicBatcher({getattr(self.fn, '__name__', type(self.fn).__name__)}, max_batch_size="
                f"{self.max_batch_size}, max_wait_ms={self.max_wait_ms}, max_queue={self.max_queue}, {state}, "
                f"{len(self._pending)} queued)")
