"""The Markdown tables the notebooks print are well-formed: every row has the header's cells.

A stray ``|`` inside a cell (``|w|``) silently splits it, and the HTML table then drops the
extra cells: the reader sees a truncated row. Escape it (``\\|w\\|``) or write ``abs(w)``.
"""
import re

import pytest

from _book import load_notebook, notebooks


def _cells(row: str) -> int:
    return len(re.split(r"(?<!\\)\|", row.strip().strip("|")))


def _tables(nb: dict):
    for c in nb["cells"]:
        for o in c.get("outputs", []) if c["cell_type"] == "code" else []:
            md = "".join(o.get("data", {}).get("text/markdown", ""))
            lines = [ln for ln in md.splitlines() if ln.strip().startswith("|")]
            if len(lines) >= 2 and set(lines[1].replace(" ", "")) <= set("|-:"):
                yield lines


@pytest.mark.parametrize("nb_path", notebooks(), ids=lambda p: p.name)
def test_every_row_of_a_markdown_table_has_the_header_cells(nb_path):
    for lines in _tables(load_notebook(nb_path)):
        width = _cells(lines[0])
        bad = [ln for ln in lines[2:] if _cells(ln) != width]
        assert not bad, f"{nb_path.name}: table {lines[0]!r} has {width} columns, these rows do not: {bad}"
