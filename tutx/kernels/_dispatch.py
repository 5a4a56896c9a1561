"""When a wrapper launches its Triton kernel, and when it runs the PyTorch reference instead.

The rule (see DESIGN.md): CUDA tensors take the kernel; CPU tensors take it only when
``TRITON_INTERPRET=1`` is set, which is how the tests exercise kernels without a GPU. Triton
reads that variable when a kernel is *defined*, so it must be set before ``tutx.kernels``
modules are imported (``tests/conftest.py`` does so on machines without CUDA).
"""
from __future__ import annotations

import os

import torch


def interpreter_enabled() -> bool:
    """Whether Triton's interpreter is switched on for this process."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "yes", "on"}


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(*tensors: torch.Tensor) -> bool:
    """True if the kernel should run on these tensors (all on CUDA, or all on CPU with the interpreter)."""
    if not triton_available():
        return False
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        return True
    return devices == {"cpu"} and interpreter_enabled()
