"""Small reporting helpers: results as Markdown tables that render in notebooks and the book."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from tutx._validate import check_int


def _cell(value, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e15 else f"{value:.{digits}e}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\n", " ")  # a bare pipe would split the cell


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, digits: int = 2) -> str:
    """Format ``rows`` (a list of dicts with the same keys) as a GitHub-style Markdown table.

    Numbers are right-aligned; floats are rounded to ``digits`` so tables are stable across runs.
    A ``|`` inside a cell (or a column name) is escaped, so it cannot split the cell.
    """
    if isinstance(rows, str) or not isinstance(rows, Sequence) or not all(isinstance(r, Mapping) for r in rows):
        raise TypeError(f"rows: expected a list of dicts, got {type(rows).__name__}")
    if not rows:
        raise ValueError("rows: expected at least one row, got an empty list")
    check_int("digits", digits, minimum=0)
    columns = list(columns) if columns is not None else list(rows[0])
    for i, row in enumerate(rows):
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"rows[{i}]: missing column(s) {missing}")
    numeric = [all(isinstance(r[c], (int, float)) and not isinstance(r[c], bool) for r in rows) for c in columns]
    lines = ["| " + " | ".join(_cell(c, digits) for c in columns) + " |",
             "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(r[c], digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def show_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None, digits: int = 2):
    """Display ``rows`` as a rendered table in a notebook (plain Markdown text elsewhere)."""
    text = markdown_table(rows, columns, digits)
    try:
        from IPython.display import Markdown, display
    except ImportError:  # pragma: no cover - IPython is always there in notebooks
        print(text)
        return
    display(Markdown(text))
