"""The asyncio front of :class:`~tutx.engine.LLMEngine`: one worker thread owns the engine.

The engine is plain, synchronous and not thread-safe, so exactly one thread touches it. Requests
come in through a thread-safe inbox (add / abort), the worker runs ``engine.step()`` while work
exists, and hands each step's outputs back to the event loop with one ``call_soon_threadsafe``
per step. Every HTTP request gets a :class:`RequestHandle`: an asyncio queue of
``(index, RequestOutput)`` for its ``n`` sequences. Many clients are batched by the engine
together — nothing is serialised behind a per-request lock.

A step that raises fails the requests that were in the engine (their handles raise
:class:`EngineStepError`, the server answers 500) and the worker goes on serving new ones.
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from tutx._validate import check_int


class QueueFull(Exception):
    """More sequences waiting than ``max_queued`` allows (the server answers 429)."""


class EngineStepError(RuntimeError):
    """``engine.step()`` raised while this request was in the engine (the server answers 500)."""


class RequestAborted(RuntimeError):
    """The server aborted the request (shutting down) — not the client (the server answers 503)."""


@dataclass(frozen=True)
class EngineStats:
    """A snapshot the worker publishes after every loop turn (read from any thread)."""

    num_running: int = 0
    num_waiting: int = 0
    num_free_blocks: int = 0
    num_blocks: int = 0
    num_preemptions: int = 0
    num_steps: int = 0
    last_step_s: float = 0.0

    @property
    def kv_usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks if self.num_blocks else 0.0


_ABORTED = object()  # delivered for a sequence that left the engine without a final output


class RequestHandle:
    """The ``n`` engine sequences of one request; ``async for index, out in handle`` streams them."""

    def __init__(self, front: "AsyncEngine", request_id: str, n: int):
        self.request_id = request_id
        self.sub_ids = [f"{request_id}-{i}" for i in range(n)]
        self.queue: asyncio.Queue = asyncio.Queue()
        self.done = [False] * n
        self.submitted_at = time.perf_counter()
        self.first_scheduled_at: float | None = None
        self.aborted = False  # set by abort(): aborts we asked for end the stream quietly
        self._front = front

    @property
    def finished(self) -> bool:
        return all(self.done)

    async def __aiter__(self):
        ended = [False] * len(self.done)  # consumed here (``done`` is set when delivered)
        while not all(ended):
            index, item = await self.queue.get()
            if isinstance(item, BaseException):
                self.abort()
                raise item
            if item is _ABORTED:
                if not self.aborted:
                    raise RequestAborted("the server aborted the request (shutting down)")
                ended[index] = True
                continue
            ended[index] = item.finished
            yield index, item

    def abort(self) -> None:
        """Abort the sequences still running (their KV blocks are freed by the worker)."""
        self.aborted = True
        for i, sub in enumerate(self.sub_ids):
            if not self.done[i]:
                self._front._post(("abort", sub, None))


class AsyncEngine:
    """Runs ``engine.step()`` in a background thread; ``submit`` returns a :class:`RequestHandle`."""

    def __init__(self, engine, max_queued: int = 64):
        self.engine = engine
        self.max_queued = check_int("max_queued", max_queued, minimum=0)
        self.max_num_seqs = engine.config.max_num_seqs
        self.stats = self._snapshot(0, 0.0)
        self.step_hooks: list = []  # fn(stats, outputs), called in the worker thread after each step
        self._inbox: list = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._subs: dict[str, tuple[RequestHandle, int]] = {}  # touched in the loop thread only
        self._outstanding = 0  # sequences submitted and not yet released by the engine (loop thread)
        self._idle: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    # -- life cycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker; call from inside the event loop that will consume the outputs."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tutx-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Abort everything still running and join the worker."""
        if self._thread is None:
            return
        for sub in list(self._subs):
            self._post(("abort", sub, None))
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self._thread = None

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def num_outstanding(self) -> int:
        return self._outstanding

    async def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until no sequence is outstanding; False if ``timeout`` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    # -- the loop side -----------------------------------------------------------------------
    def submit(self, request_id: str, prompts: list[tuple[list[int], object]]) -> RequestHandle:
        """Queue ``n`` sequences ``(prompt token ids, SamplingParams)``; raises :class:`QueueFull`."""
        if not self.is_running:
            raise RuntimeError("AsyncEngine.submit: the worker is not running; call start() first")
        n = len(prompts)
        if self._outstanding + n > self.max_num_seqs + self.max_queued:
            raise QueueFull(f"{self._outstanding} sequences outstanding, room for "
                            f"{self.max_num_seqs} running + {self.max_queued} queued")
        handle = RequestHandle(self, request_id, n)
        for i, (ids, params) in enumerate(prompts):
            self._subs[handle.sub_ids[i]] = (handle, i)
            self._post(("add", handle.sub_ids[i], (ids, params)))
        self._outstanding += n
        self._idle.clear()
        return handle

    def _deliver(self, batch: list) -> None:
        for sub, item in batch:
            entry = self._subs.get(sub)
            if entry is None:
                continue
            handle, index = entry
            if handle.first_scheduled_at is None and item is not _ABORTED:
                handle.first_scheduled_at = time.perf_counter()
            ends = item is _ABORTED or isinstance(item, BaseException) or item.finished
            if ends:
                del self._subs[sub]
                handle.done[index] = True
                self._outstanding -= 1
            handle.queue.put_nowait((index, item))
        if self._outstanding == 0:
            self._idle.set()

    def _post(self, op) -> None:
        with self._lock:
            self._inbox.append(op)
        self._wake.set()

    # -- the worker thread -----------------------------------------------------------------
    def _snapshot(self, num_steps: int, step_s: float) -> EngineStats:
        e = self.engine
        return EngineStats(e.num_running, e.num_waiting, e.num_free_blocks, e.config.num_blocks,
                           e.scheduler.num_preemptions, num_steps, step_s)

    def _send(self, batch: list) -> None:
        if batch and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._deliver, batch)

    def _run(self) -> None:
        live: set[str] = set()  # sequences in the engine
        steps = 0
        while True:
            with self._lock:
                ops, self._inbox = self._inbox, []
            batch = []
            for kind, sub, payload in ops:
                if kind == "add":
                    try:
                        self.engine.add_request(payload[0], payload[1], sub)
                        live.add(sub)
                    except Exception as exc:  # bad input the server did not catch: this request only
                        batch.append((sub, exc))
                elif sub in live:
                    live.discard(sub)
                    self.engine.abort(sub)
                    batch.append((sub, _ABORTED))
            if self._stopping and not live:
                self._send(batch)
                return
            if self.engine.has_unfinished():
                t0 = time.perf_counter()
                try:
                    outputs = self.engine.step()
                except Exception as exc:
                    batch.extend(self._fail_all(live, exc))
                    outputs = []
                steps += 1
                self.stats = self._snapshot(steps, time.perf_counter() - t0)
                for out in outputs:
                    if out.finished:
                        live.discard(out.request_id)
                    batch.append((out.request_id, out))
                for hook in self.step_hooks:
                    hook(self.stats, outputs)
                self._send(batch)
            else:
                self.stats = self._snapshot(steps, 0.0)
                self._send(batch)
                self._wake.wait(0.5)
                self._wake.clear()

    def _fail_all(self, live: set[str], exc: Exception) -> list:
        error = EngineStepError(f"engine step failed: {type(exc).__name__}: {exc}")
        batch = []
        for sub in sorted(live):
            try:
                self.engine.abort(sub)
            except Exception:  # the engine's state may be broken for this one; it is gone either way
                pass
            batch.append((sub, error))
        live.clear()
        return batch


__all__ = ["AsyncEngine", "RequestHandle", "EngineStats", "QueueFull", "EngineStepError", "RequestAborted"]
