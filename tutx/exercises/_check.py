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


def _attempt(fn, args, where: str):
    """The learner's ``fn(*args)``; None for a stub (``...`` body, ``return ...``, NotImplementedError)."""
    try:
        got = fn(*args)
    except NotImplementedError:
        return None
    except Exception as exc:
        raise AssertionError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    return None if got is Ellipsis else got


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
    returns None — or ``return ...`` — or it raises ``NotImplementedError``) is not a failure: the check says
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
        got = _attempt(fn, args, f"{name}: case {k}/{len(cases)} {_call(args)} (expected {expected!r})")
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


def _describe(a) -> str:
    try:
        import torch

        if isinstance(a, torch.Tensor):
            return f"tensor(shape={tuple(a.shape)}, dtype={a.dtype})"
    except ImportError:  # pragma: no cover
        pass
    return repr(a)


def run_tensor_cases(
    name: str,
    fn: Callable,
    reference: Callable,
    cases: Sequence[tuple],
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Like :func:`run_cases`, for functions that return a tensor or a tuple of tensors.

    Shapes and dtypes must match exactly, values within ``torch.testing.assert_close``'s
    ``rtol``/``atol``; the message names the case (arguments described by shape and dtype).
    """
    import torch

    check_fn(fn, name)
    if not cases:
        raise ValueError(f"cases={cases!r}: expected at least one case")
    for k, args in enumerate(cases, start=1):
        call = "fn(" + ", ".join(_describe(a) for a in args) + ")"
        expected = reference(*args)
        got = _attempt(fn, args, f"{name}: case {k}/{len(cases)} {call}")
        if got is None and k == 1:
            print(f"✏️ {name}: not solved yet ({call} returned None). "
                  "Write the body of your function and run this cell again.")
            return
        exp_items = expected if isinstance(expected, tuple) else (expected,)
        got_items = got if isinstance(got, tuple) else (got,)
        if len(got_items) != len(exp_items):
            raise AssertionError(f"{name}: case {k}/{len(cases)} {call} returned {len(got_items)} value(s), "
                                 f"expected {len(exp_items)}")
        for i, (g, e) in enumerate(zip(got_items, exp_items)):
            where = f"{name}: case {k}/{len(cases)} {call}" + (f", output {i}" if len(exp_items) > 1 else "")
            if not isinstance(g, torch.Tensor):
                raise AssertionError(f"{where} returned {type(g).__name__}, expected a tensor")
            if g.shape != e.shape or g.dtype != e.dtype:
                raise AssertionError(f"{where} returned shape {tuple(g.shape)} {g.dtype}, "
                                     f"expected {tuple(e.shape)} {e.dtype}")
            try:
                torch.testing.assert_close(g, e, rtol=rtol, atol=atol)
            except AssertionError as err:
                raise AssertionError(f"{where}: values differ. {err}") from None
    print(f"✅ {name}: all {len(cases)} cases passed")
