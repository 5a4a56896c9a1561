"""tutx — the companion package of *Scaling and Optimization of Transformers*.

``import tutx`` is cheap: every submodule loads on first use (PEP 562), and ``transformers``
only when a model is loaded. ``tutx.models`` (the tiny Shakespeare LM, loading, perplexity),
``tutx.scaling`` and ``tutx.hardware`` (Chapter 1's calculators), ``tutx.configs`` (shapes of
well-known models), ``tutx.bench`` (timing, tables, measured results), ``tutx.device``, the
chapter packages (``tutx.quant``, ``tutx.attention``, ``tutx.kernels``, ``tutx.engine``, …) and
the exercise checks (``tutx.exercises``) are all attributes that import their module when first
touched. ``tutx.show(fn)`` prints a function's source.
"""
from __future__ import annotations

import importlib
import pkgutil

# Imported now: the function ``show`` shares its name with its (tiny) module, and a later
# ``import tutx.show`` must not replace the function by the module.
from tutx.show import show

__version__ = "0.1.0"

_SUBMODULES = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")
                     and m.name != "show")
__all__ = ["show", "__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
