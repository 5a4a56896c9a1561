"""Run a learner's function on a list of cases and compare it with the reference solution.

The message on failure names the case, the arguments, what was expected and what came back,
so a learner can reproduce the failing call in the next cell.

Three outcomes, the same in every chapter (``tests/exercises/test_contract.py`` checks each
chapter's ``CONTRACT`` against them):

- the exercise's stub, untouched (its body is only ``...``, ``pass``, a docstring,
  ``return ...`` or ``raise NotImplementedError``): prints "not solved yet", so a notebook runs
  top to bottom before the learner starts;
- a function with a real body that returns ``None``: an ``AssertionError`` that asks
  "did you forget `return`?";
- any other wrong answer: an ``AssertionError`` naming the case; all cases right: ``✅``.

A check with its own logic (a build-it exercise) uses :func:`attempt` and :func:`not_solved`
so it behaves the same way.
"""
from __future__ import annotations

import dis
import math
from numbers import Real
from typing import Callable, Sequence

from tutx._validate import check_number

__all__ = ["check_fn", "is_stub", "attempt", "not_solved", "NotSolved", "run_cases", "run_tensor_cases"]


def check_fn(fn, name: str) -> None:
    """A check's first line of defence: ``fn`` must be something we can call."""
    if not callable(fn):
        raise TypeError(f"{name}(fn): expected a function, got {type(fn).__name__} {fn!r}")


# Bytecode a stub compiles to: constants, returning them, and raising NotImplementedError.
# (A docstring, ``...`` and ``pass`` compile to nothing; the interpreter's bookkeeping ops are skipped.)
_BOOKKEEPING = {"RESUME", "NOP", "CACHE", "EXTENDED_ARG", "PUSH_NULL", "PRECALL", "COPY_FREE_VARS", "MAKE_CELL"}
_STUB_OPS = {"LOAD_CONST", "RETURN_CONST", "RETURN_VALUE", "POP_TOP", "CALL", "CALL_FUNCTION", "RAISE_VARARGS"}


def is_stub(fn) -> bool:
    """Whether ``fn``'s body does nothing yet: only a docstring, ``...``, ``pass``, ``return ...``
    or ``raise NotImplementedError``. Read from the bytecode, so it works for functions defined in a
    notebook cell. Something that is not a plain function (no code to read) is not a stub."""
    fn = getattr(fn, "func", fn)  # functools.partial
    code = getattr(fn, "__code__", None)
    if code is None:
        return False
    for ins in dis.get_instructions(code):
        if ins.opname in _BOOKKEEPING:
            continue
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME") and ins.argval == "NotImplementedError":
            continue
        if ins.opname not in _STUB_OPS:
            return False
        if ins.opname in ("LOAD_CONST", "RETURN_CONST") and not (ins.argval is None or ins.argval is Ellipsis
                                                                  or isinstance(ins.argval, str)):
            return False
    return True


class NotSolved(Exception):
    """Raised by :func:`attempt` when the learner's function is still the exercise's stub."""


def attempt(fn, args, where: str, expected=Ellipsis):
    """The learner's ``fn(*args)``.

    Raises :class:`NotSolved` for a stub (it returned None or ``...``, or raised
    ``NotImplementedError``), ``AssertionError`` naming ``where`` when it raised anything else, or
    when a real body returned None where a value was ``expected`` (pass ``expected=None`` for a
    function that is meant to return None).
    """
    try:
        got = fn(*args)
    except NotImplementedError:
        raise NotSolved(where) from None
    except Exception as exc:
        raise AssertionError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    if got is Ellipsis or (got is None and is_stub(fn)):
        raise NotSolved(where)
    if got is None and expected is not None:
        raise AssertionError(f"{where} returned None: did you forget `return`?")
    return got


def not_solved(name: str, call: str) -> None:
    """Print the "not solved yet" line for a stub."""
    print(f"✏️ {name}: not solved yet ({call} is still the stub). "
          "Write the body of your function and run this cell again.")


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
    Prints ``✅ name: all N cases passed``, or raises ``AssertionError`` for the first failure.
    The exercise's untouched stub is not a failure: the check prints "not solved yet" (see the
    module docstring).
    """
    check_fn(fn, name)
    check_number("rel_tol", rel_tol, minimum=0)
    check_number("abs_tol", abs_tol, minimum=0)
    if not cases:
        raise ValueError(f"cases={cases!r}: expected at least one case")
    for k, args in enumerate(cases, start=1):
        expected = reference(*args)
        try:
            got = attempt(fn, args, f"{name}: case {k}/{len(cases)} {_call(args)} (expected {expected!r})",
                          expected)
        except NotSolved:
            not_solved(name, _call(args))
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
        try:
            got = attempt(fn, args, f"{name}: case {k}/{len(cases)} {call}", expected)
        except NotSolved:
            not_solved(name, call)
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
