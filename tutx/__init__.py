"""tutx — the companion package of *Scaling and Optimization of Transformers*.

Submodules are imported lazily so that ``import tutx`` stays cheap:
``tutx.models``, ``tutx.scaling``, ``tutx.bench``, ``tutx.device`` and
``tutx.exercises`` load on first use.
"""
from __future__ import annotations

import importlib

from tutx.show import show

__version__ = "0.1.0"
__all__ = ["show", "models", "scaling", "bench", "device", "exercises", "__version__"]

_SUBMODULES = {"models", "scaling", "bench", "device", "exercises"}


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f"tutx.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'tutx' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _SUBMODULES)
