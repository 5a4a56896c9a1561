"""One contract for every exercise check of every chapter (``tutx.exercises.chNN.CONTRACT``).

Each chapter module maps each ``check_*`` name to ``(reference_fn, wrong_fn)``: a correct
implementation and a plausible wrong one. For every check:

- the untouched stub (``def f(*a): ...``) prints "not solved yet" and does not fail;
- a function with a real body that forgets ``return`` fails with "did you forget `return`?";
- the wrong implementation fails with an ``AssertionError``;
- the reference passes and prints ``✅``;
- something that is not a function is a ``TypeError`` naming the check.

Chapter modules without a ``CONTRACT`` yet are skipped with a reason, not failed.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
import re

import pytest

import tutx.exercises
from tutx.exercises._check import NotSolved, attempt, is_stub, run_cases, run_tensor_cases


def _chapters() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(tutx.exercises.__path__) if re.fullmatch(r"ch\d\d", m.name))


def _contract_params():
    params = []
    for chapter in _chapters():
        try:
            module = importlib.import_module(f"tutx.exercises.{chapter}")
        except Exception:  # reported by the test below, not as a collection error of every chapter
            params.append(pytest.param(chapter, None, id=f"{chapter}-import"))
            continue
        contract = getattr(module, "CONTRACT", None)
        if contract is None:
            params.append(pytest.param(chapter, None, id=f"{chapter}-no-contract",
                                       marks=pytest.mark.skip(reason=f"tutx.exercises.{chapter} has no CONTRACT yet")))
            continue
        params += [pytest.param(chapter, name, id=f"{chapter}.{name}") for name in contract]
    return params


def _check_and_pair(chapter: str, name: str):
    module = importlib.import_module(f"tutx.exercises.{chapter}")
    return getattr(module, name), module.CONTRACT[name]


def _stub(*args):
    ...


@pytest.mark.parametrize("chapter, name", _contract_params())
def test_stub_wrong_forgotten_return_and_reference(chapter, name, capsys):
    if name is None:  # the chapter module failed to import: show why
        importlib.import_module(f"tutx.exercises.{chapter}")
        pytest.fail(f"tutx.exercises.{chapter} failed to import while the tests were collected")
    check, (reference, wrong) = _check_and_pair(chapter, name)

    check(_stub)
    out = capsys.readouterr().out
    assert "not solved yet" in out and "✅" not in out, f"{name}(stub) printed {out!r}"

    @functools.wraps(reference)
    def forgets_return(*args):
        reference(*args)  # the right computation, but the result is dropped

    with pytest.raises(AssertionError, match=r"did you forget `return`\?"):
        check(forgets_return)

    with pytest.raises(AssertionError):
        check(wrong)
    assert "✅" not in capsys.readouterr().out

    check(reference)
    assert "✅" in capsys.readouterr().out, f"{name}(reference) did not print ✅"

    with pytest.raises(TypeError, match=name):
        check(3)  # not a function


@pytest.mark.parametrize("chapter", _chapters())
def test_contract_covers_every_public_check(chapter):
    module = importlib.import_module(f"tutx.exercises.{chapter}")
    if not hasattr(module, "CONTRACT"):
        pytest.skip(f"tutx.exercises.{chapter} has no CONTRACT yet")
    checks = {n for n in module.__all__ if n.startswith("check_")}
    assert set(module.CONTRACT) == checks, f"CONTRACT {sorted(module.CONTRACT)} vs check_* in __all__ {sorted(checks)}"
    assert all(n.startswith("check_") for n in module.__all__), \
        f"{chapter}.__all__ should list only the check_* functions: {module.__all__}"
    for name, pair in module.CONTRACT.items():
        assert len(pair) == 2 and all(callable(f) for f in pair), name
        assert pair[0] is not pair[1], name


# --- the shared runner's stub detection ---------------------------------------------------------

def _doc_only(x):
    """Return twice x."""


def _pass(x):
    pass


def _return_ellipsis(x):
    return ...


def _raises(x):
    raise NotImplementedError("write me")


def _no_return(x):
    y = 2 * x  # noqa: F841


def _prints(x):
    print(x)


def _right(x):
    return 2 * x


@pytest.mark.parametrize("fn, stub", [(_stub, True), (_doc_only, True), (_pass, True), (_return_ellipsis, True),
                                      (_raises, True), (lambda x: ..., True), (_no_return, False),
                                      (_prints, False), (_right, False), (lambda x: None, True),
                                      (functools.partial(_pass, 1), True), (len, False)])
def test_is_stub(fn, stub):
    assert is_stub(fn) is stub


def test_attempt_tells_a_stub_from_a_forgotten_return(capsys):
    for fn in (_stub, _pass, _return_ellipsis, _raises):
        with pytest.raises(NotSolved):
            attempt(fn, (3,), "case 1")
    with pytest.raises(AssertionError, match=r"case 1 returned None: did you forget `return`\?"):
        attempt(_no_return, (3,), "case 1")
    assert attempt(_prints, (3,), "case 1", expected=None) is None  # None is the right answer here
    assert attempt(_right, (3,), "case 1") == 6
    with pytest.raises(AssertionError, match="case 1 raised ZeroDivisionError"):
        attempt(lambda x: x / 0, (3,), "case 1")


def test_run_cases_tolerances_messages_and_arguments(capsys):
    ref = lambda x: x * 1.0  # noqa: E731
    run_cases("close", lambda x: x * 1.001, ref, [(1,), (2,)], rel_tol=1e-2)
    assert "✅ close: all 2 cases passed" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"case 2/2 fn\(2\) returned 2.002, expected 2.0"):
        run_cases("tight", lambda x: x * 1.001 if x == 2 else x, ref, [(1,), (2,)], rel_tol=1e-6)
    with pytest.raises(AssertionError, match="returned True"):
        run_cases("bool", lambda x: True, ref, [(1,)])
    with pytest.raises(AssertionError, match=r"case 1/1 fn\(1\) .* raised ZeroDivisionError"):
        run_cases("boom", lambda x: x / 0, ref, [(1,)])
    with pytest.raises(AssertionError, match=r"case 2/2 fn\(2\) .*returned None: did you forget `return`\?"):
        run_cases("half", lambda x: x * 1.0 if x == 1 else None, ref, [(1,), (2,)])
    run_cases("exact", lambda s: s.upper(), str.upper, [("a",)])
    with pytest.raises(ValueError, match="rel_tol: expected a number >= 0, got -1"):
        run_cases("x", ref, ref, [(1,)], rel_tol=-1)
    with pytest.raises(TypeError, match="abs_tol: expected a number"):
        run_cases("x", ref, ref, [(1,)], abs_tol="0")
    with pytest.raises(ValueError, match="cases"):
        run_cases("x", ref, ref, [])
    with pytest.raises(TypeError, match=r"x\(fn\): expected a function"):
        run_cases("x", 3, ref, [(1,)])
    run_cases("stub", _stub, ref, [(1,)])
    assert "✏️ stub: not solved yet" in capsys.readouterr().out


def test_run_tensor_cases_shapes_dtypes_and_stubs(capsys):
    import torch

    ref = lambda x: 2 * x  # noqa: E731
    cases = [(torch.ones(2, 3),)]
    run_tensor_cases("double", lambda x: x + x, ref, cases)
    assert "✅ double: all 1 cases passed" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"returned shape \(3, 2\)"):
        run_tensor_cases("double", lambda x: (2 * x).T, ref, cases)
    with pytest.raises(AssertionError, match="did you forget `return`"):
        run_tensor_cases("double", _no_return, ref, cases)
    run_tensor_cases("double", _pass, ref, cases)
    assert "not solved yet" in capsys.readouterr().out


def test_chapter_modules_load_on_first_use():
    for chapter in _chapters():
        assert chapter in dir(tutx.exercises)
        assert getattr(tutx.exercises, chapter) is importlib.import_module(f"tutx.exercises.{chapter}")
    for missing in ("ch99", "nonsense"):
        with pytest.raises(AttributeError, match=missing):
            getattr(tutx.exercises, missing)
