"""tutx — the companion package of *Scaling and Optimization of Transformers*.

``import tutx`` loads the pieces every chapter uses (it imports torch and transformers):
``tutx.models`` (the tiny Shakespeare LM, loading, perplexity), ``tutx.scaling`` and
``tutx.hardware`` (Chapter 1's calculators), ``tutx.configs`` (shapes of well-known models),
``tutx.bench`` (timing and tables), ``tutx.device`` and ``tutx.show``. Chapter packages with
Triton kernels (``tutx.quant``, ``tutx.kernels``) and the exercise checks (``tutx.exercises``)
are imported on first use.
"""
from __future__ import annotations

import importlib

from tutx import bench, configs, device, hardware, models, scaling
from tutx.show import show

__version__ = "0.1.0"
__all__ = ["show", "bench", "configs", "device", "hardware", "models", "scaling",
           "exercises", "quant", "kernels", "__version__"]

_LAZY = {"exercises", "quant", "kernels"}


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"tutx.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'tutx' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _LAZY)
