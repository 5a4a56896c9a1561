"""Peak bytes held by tensors during a call, counted exactly on any device (a dispatch mode).

On the CPU the process's resident set is a poor proxy for what a call allocates: the allocator
keeps freed memory, so a second forward pass needs no new pages and "uses" nothing. Instead we
watch every ATen operator's outputs: each new storage adds its size to a running total and a
finaliser subtracts it when the storage is freed; the running total's maximum is the peak. Only
storages created inside the call are counted (not the weights, not the inputs).
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class _StorageTracker(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self.seen: dict = {}
        self.finalizers: list = []

    def _free(self, key, nbytes):
        self.live -= nbytes
        self.seen.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and not t.is_meta:
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes == 0 or key in self.seen:
                    continue  # a view of a storage already counted
                self.seen[key] = nbytes
                self.live += nbytes
                self.peak = max(self.peak, self.live)
                self.finalizers.append(weakref.finalize(storage, self._free, key, nbytes))
        return out


def tensor_peak(fn: Callable[[], object]) -> tuple[object, int]:
    """Run ``fn()`` and return ``(result, peak_bytes)``: the most bytes its new tensors held at once."""
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    tracker = _StorageTracker()
    with tracker:
        result = fn()
    for f in tracker.finalizers:  # stop counting after the call
        f.detach()
    return result, tracker.peak
