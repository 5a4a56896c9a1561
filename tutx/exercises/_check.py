"""Run a learner's function on a list of cases and compare it with the reference solution.

The message on failure names the case, the arguments, what was expected and what came back,
so a learner can reproduce the failing call in the next cell.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import Callable, Sequence


def check_fn(fn, name: str) -> None:
    """A check's first line of defence: ``fn`` must be something we can call."""
    if not callable(fn):
        raise TypeError(f"{name}(fn): expected a function, got {type(fn).__name__} {fn!r}")


def _call(args) -> str:
    return "fn(" + ", ".join(repr(a) for a in args) + ")"


def run_cases(
    name: str,
    fn: Callable,
    reference: Callable,
    cases: Sequence[tuple],
    rel_tol: float = 1e-6,
    abs_tol: float = 0.0,
) -> None:
    """Call ``fn(*args)`` for every case and compare with ``reference(*args)``.

    Numbers match within ``rel_tol`` (relative) or ``abs_tol``; anything else must be equal.
    Prints ``✅ name: all N cases passed``, or raises ``AssertionError`` for
    the first failure. A function that is still the exercise's stub (its body is ``...``, so it
    returns None, or it raises ``NotImplementedError``) is not a failure: the check says
    "not solved yet", so a notebook runs top to bottom before you start.
    """
    check_fn(fn, name)
    for tol_name, tol in (("rel_tol", rel_tol), ("abs_tol", abs_tol)):
        if isinstance(tol, bool) or not isinstance(tol, Real) or not tol >= 0:
            raise ValueError(f"{tol_name}={tol!r}: expected a number >= 0")
    if not cases:
        raise ValueError(f"cases={cases!r}: expected at least one case")
    for k, args in enumerate(cases, start=1):
        expected = reference(*args)
        try:
            got = fn(*args)
        except NotImplementedError:
            got = None
        except Exception as exc:
            raise AssertionError(
                f"{name}: case {k}/{len(cases)} {_call(args)} raised {type(exc).__name__}: {exc}; "
                f"expected {expected!r}"
            ) from exc
        if got is None and expected is not None and k == 1:
            print(f"✏️ {name}: not solved yet ({_call(args)} returned None). "
                  "Write the body of your function and run this cell again.")
            return
        if isinstance(expected, Real) and not isinstance(expected, bool):
            ok = isinstance(got, Real) and not isinstance(got, bool) and math.isclose(
                got, expected, rel_tol=rel_tol, abs_tol=abs_tol
            )
        else:
            ok = got == expected
        if not ok:
            raise AssertionError(
                f"{name}: case {k}/{len(cases)} {_call(args)} returned {got!r}, expected {expected!r}"
                + (f" (relative tolerance {rel_tol:g})" if isinstance(expected, Real) and rel_tol else "")
            )
    print(f"✅ {name}: all {len(cases)} cases passed")
