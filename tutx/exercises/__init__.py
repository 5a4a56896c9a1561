"""Automatic checks for the exercises, one module per chapter: ``tutx.exercises.ch01`` …

A notebook's check cell calls ``tutx.exercises.ch01.check_kv_cache_bytes(my_fn)``; the chapter
modules load on first use, so ``import tutx.exercises`` costs nothing.
"""
from __future__ import annotations

import importlib
import pkgutil
import re

__all__ = sorted(m.name for m in pkgutil.iter_modules(__path__) if re.fullmatch(r"ch\d\d", m.name))


def __getattr__(name: str):
    if re.fullmatch(r"ch\d\d", name):
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
        else:
            globals()[name] = module
            return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
