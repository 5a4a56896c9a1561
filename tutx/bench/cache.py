"""Cold-cache timing on a GPU: flush L2 between calls, or rotate through copies of the weights.

A kernel timed in a loop finds its weights in L2 from the previous call; in a real model each
layer's weights come from HBM, because the other layers evicted them. Two ways to time it cold:

- :func:`flush_l2` writes a buffer larger than any L2 (256 MB, as ``triton.testing.do_bench``
  does) before each timed call — simple, but the flush itself must stay outside the timed region;
- :func:`rotating_calls` gives each call its *own copy* of the weights, enough copies to overflow
  L2, so back-to-back calls (even captured in one CUDA graph) never hit a warm cache.

On the CPU both are no-ops (the caches are small and the OS shares them; there is no timing
harness that could flush them reliably), which :func:`rotating_calls` reports as one copy.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from tutx._validate import check_int, check_positive_int

L2_FLUSH_BYTES = 256 * 2**20  # larger than the L2 of every GPU we target (H100: 50 MB)
_FLUSH_BUFFERS: dict = {}


def flush_l2(device: str | torch.device | None = None) -> None:
    """Evict the GPU's L2 by zeroing a 256 MB buffer (kept between calls); nothing on the CPU."""
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda":
        return
    buf = _FLUSH_BUFFERS.get(dev)
    if buf is None:
        buf = _FLUSH_BUFFERS[dev] = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=dev)
    buf.zero_()


def copies_to_flush(weight_bytes: int, device: str | torch.device | None = None) -> int:
    """How many weight copies overflow L2: ``ceil(256 MB / weight_bytes)``, at least 2, on CUDA; 1 elsewhere."""
    check_int("weight_bytes", weight_bytes, minimum=0)
    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda":
        return 1
    return max(2, math.ceil(L2_FLUSH_BYTES / max(weight_bytes, 1)))


def rotating_calls(make_call: Callable[[], Callable[[], object]], weight_bytes: int,
                   device: str | torch.device | None = None, min_calls: int = 8) -> tuple[Callable[[], None], int]:
    """``(run, calls)``: ``run()`` makes ``calls`` back-to-back calls, each on a different weight copy.

    ``make_call()`` must return a zero-argument callable that owns a fresh copy of the weights
    (e.g. ``lambda: functools.partial(F.linear, x, w.clone())``). Time ``run`` (with
    :func:`~tutx.bench.timeit`, or capture it in a CUDA graph first) and divide by ``calls``.
    """
    if not callable(make_call):
        raise TypeError(f"make_call: expected a callable returning a call, got {type(make_call).__name__}")
    check_positive_int("min_calls", min_calls)
    copies = copies_to_flush(weight_bytes, device)
    fns = [make_call() for _ in range(copies)]
    calls = max(copies, min_calls) if copies > 1 else 1
    seq = [fns[i % copies] for i in range(calls)]

    def run():
        for f in seq:
            f()

    return run, calls
