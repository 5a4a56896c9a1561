"""Run a benchmark's independent steps so that one failure does not lose the others' results."""
from __future__ import annotations

import traceback
from typing import Callable, Iterable


def run_steps(rows: list, steps: Iterable[Callable[[], None]], name: str) -> None:
    """Call every step (each appends its own rows); a failing step adds an ``{"op": "error"}`` row.

    Raises ``RuntimeError`` naming the failures at the end, after every step has had its turn —
    so a results file still records what did work.
    """
    failures = []
    for step in steps:
        try:
            step()
        except Exception as err:  # noqa: BLE001 - recorded, and re-raised below
            traceback.print_exc()
            failures.append(f"{type(err).__name__}: {err}"[:500])
            rows.append({"op": "error", "error": failures[-1]})
    if failures:
        raise RuntimeError(f"{len(failures)} {name} step(s) failed: {failures}")
