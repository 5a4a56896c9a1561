"""``tutx.show(obj)``: print the source of a function or class, so the book shows the code it runs."""
from __future__ import annotations

import inspect


def show(obj, *, print_it: bool = True) -> str | None:
    """Print the source code of ``obj`` — a function, method, class or module.

    Notebooks call this instead of copying code into the page, so the book and the
    package can never drift apart. With ``print_it=False`` the source is returned instead
    (returning it while printing would make a notebook show it twice).
    """
    while not inspect.isroutine(obj) and callable(getattr(obj, "fn", None)):  # Triton's @jit / @autotune wrappers
        obj = obj.fn
    if isinstance(obj, str) or not (
        inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismethod(obj) or inspect.ismodule(obj)
    ):
        raise TypeError(
            f"show(obj): expected a function, method, class or module, got {type(obj).__name__}"
        )
    source = inspect.getsource(obj)
    if not print_it:
        return source
    print(source.rstrip("\n"))
    return None
