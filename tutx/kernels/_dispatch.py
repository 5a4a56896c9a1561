"""When a wrapper launches its Triton kernel, and when it runs the PyTorch reference instead.

The rule (see CONTRIBUTING.md): CUDA tensors take the kernel; CPU tensors take it only when
``TRITON_INTERPRET=1`` is set, which is how the tests exercise kernels without a GPU; without
Triton installed nothing does. Triton reads that variable when a kernel is *defined*, so it must
be set before ``tutx.kernels`` modules are imported (``tests/conftest.py`` does so on machines
without CUDA).
"""
from __future__ import annotations

import os

import torch

from tutx.kernels._triton import TRITON_AVAILABLE


def interpreter_enabled() -> bool:
    """Whether Triton's interpreter is switched on for this process."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in {"1", "true", "yes", "on"}


def triton_available() -> bool:
    """Whether Triton imported (it is missing on macOS and Windows)."""
    return TRITON_AVAILABLE


def use_triton(*tensors: torch.Tensor) -> bool:
    """True if the kernel should run on these tensors (all on CUDA, or all on CPU with the interpreter)."""
    if not TRITON_AVAILABLE:
        return False
    devices = {t.device.type for t in tensors}
    if devices == {"cuda"}:
        return True
    return devices == {"cpu"} and interpreter_enabled()
