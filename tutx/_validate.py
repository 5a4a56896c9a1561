"""Argument checks shared by every public entry point of ``tutx`` (see CONTRIBUTING.md, "Errors").

One rule everywhere: a value of the wrong *type* raises ``TypeError``, a value of the right type
but out of range raises ``ValueError``; both messages name the argument, show the value and say
what was expected. Each check returns the value, so a caller can write
``n = check_int("n", n, minimum=1)``. Public entry points check; the layers below them trust it.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

__all__ = ["check_int", "check_positive_int", "check_optional_int", "check_number", "check_positive",
           "check_probability", "check_bool", "check_choice", "check_str"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` is an int (bools refused) within ``[minimum, maximum]``."""
    if not _is_int(value):
        raise TypeError(f"{name}: expected an int, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected an int <= {maximum}, got {value}")
    return value


def check_positive_int(name: str, value) -> int:
    """``value`` is an int >= 1."""
    return check_int(name, value, minimum=1)


def check_optional_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int | None:
    """``None``, or an int within ``[minimum, maximum]``."""
    return None if value is None else check_int(name, value, minimum, maximum)


def check_number(name: str, value, minimum: float | None = None, maximum: float | None = None,
                 *, strict_min: bool = False) -> float:
    """``value`` is a finite real number (int or float, not bool) within the bounds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if minimum is not None and (value <= minimum if strict_min else value < minimum):
        raise ValueError(f"{name}: expected a number {'>' if strict_min else '>='} {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected a number <= {maximum}, got {value}")
    return value


def check_positive(name: str, value) -> float:
    """``value`` is a finite number > 0."""
    return check_number(name, value, minimum=0, strict_min=True)


def check_probability(name: str, value, *, allow_zero: bool = True, allow_one: bool = True) -> float:
    """``value`` is a number in [0, 1] (ends excluded when asked)."""
    check_number(name, value)
    low_ok = value > 0 or (allow_zero and value == 0)
    high_ok = value < 1 or (allow_one and value == 1)
    if not (low_ok and high_ok):
        lo, hi = "[" if allow_zero else "(", "]" if allow_one else ")"
        raise ValueError(f"{name}: expected a probability in {lo}0, 1{hi}, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` is exactly ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {value!r} ({type(value).__name__})")
    return value


def check_str(name: str, value, *, allow_empty: bool = False) -> str:
    """``value`` is a str (non-empty unless allowed)."""
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected a str, got {value!r} ({type(value).__name__})")
    if not allow_empty and not value:
        raise ValueError(f"{name}: expected a non-empty str, got ''")
    return value


def check_choice(name: str, value, choices: Iterable):
    """``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
    return value
