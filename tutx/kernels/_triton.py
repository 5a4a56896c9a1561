"""Triton if it is installed, else a stand-in that lets the kernel modules import.

Triton ships for Linux only, so a learner on a macOS laptop has none; ``tutx`` must still import
there and run every operation through its PyTorch reference. Kernel modules therefore import
``triton`` and ``tl`` from here. Without Triton:

* ``@triton.jit`` keeps the Python function (``.fn``, so ``tutx.show`` still prints a kernel's
  source) and refuses to launch, with a message that says why;
* ``triton.autotune`` / ``triton.Config`` build nothing; ``triton.cdiv`` and
  ``triton.next_power_of_2`` are the plain integer functions;
* ``tl`` is never touched: kernel bodies run only when launched, and annotations such as
  ``BLOCK: tl.constexpr`` are not evaluated (every kernel module uses
  ``from __future__ import annotations``).

The wrappers never launch a kernel then (:func:`tutx.kernels._dispatch.use_triton` is False), so
they fall back to their ``_ref``. ``TRITON_INTERPRET`` is read by Triton when a kernel is
*defined*, i.e. when its module is first imported; ``tests/conftest.py`` sets it before that.
"""
from __future__ import annotations

import functools

__all__ = ["triton", "tl", "TRITON_AVAILABLE", "TritonMissingError"]


class TritonMissingError(RuntimeError):
    """Raised when a Triton kernel is launched on a machine without Triton."""


class _KernelStub:
    """What ``@triton.jit`` gives without Triton: the function, which cannot be launched."""

    def __init__(self, fn):
        self.fn = fn
        functools.update_wrapper(self, fn)

    def _refuse(self, *args, **kwargs):
        raise TritonMissingError(f"{self.fn.__name__}: Triton is not installed, so its kernels cannot run "
                                 f"(pip install triton, Linux only); the tutx wrappers run the PyTorch "
                                 f"reference instead")

    __call__ = _refuse

    def __getitem__(self, grid):
        return self._refuse


class _MissingTriton:
    """The few ``triton`` names the kernel modules use at import time."""

    @staticmethod
    def jit(fn=None, **kwargs):
        return _KernelStub(fn) if fn is not None else _KernelStub

    @staticmethod
    def autotune(configs, key, **kwargs):
        return lambda kernel: kernel

    @staticmethod
    def Config(kwargs, num_warps=4, num_stages=2, **extra):  # noqa: N802 (Triton's name)
        return None

    @staticmethod
    def cdiv(x: int, y: int) -> int:
        return -(-x // y)

    @staticmethod
    def next_power_of_2(n: int) -> int:
        return 1 if n <= 1 else 1 << (n - 1).bit_length()


try:
    import triton
    import triton.language as tl

    TRITON_AVAILABLE = True
except ImportError:  # not installed (macOS, Windows) or hidden by a test
    triton = _MissingTriton()
    tl = None
    TRITON_AVAILABLE = False
