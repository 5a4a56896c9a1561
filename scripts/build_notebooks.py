"""Build the chapter notebooks from their sources and run them, so they are committed with outputs.

The source of each chapter is a plain Python file in "percent" format under ``notebooks/src/``
(readable diffs, easy review): ``# %%`` starts a code cell, ``# %% [markdown]`` a markdown cell
whose lines start with ``# ``, and ``# %% [solution]`` a code cell of a worked solution (collapsed
in Jupyter; in the book it sits between ``{solution-start}`` and ``{solution-end}`` directives). This script turns each source into ``notebooks/NN_name.ipynb``,
executes it top to bottom on this machine (the CPU run the book shows), and reports the time.
``tests/test_notebooks_meta.py`` checks that sources and notebooks agree.

    python scripts/build_notebooks.py            # every chapter
    python scripts/build_notebooks.py 01 03      # only these chapters
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "notebooks" / "src"
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def parse_percent(text: str) -> list[tuple[str, str]]:
    """Split a percent-format source into ``(kind, source)`` cells: "code", "solution" or "markdown"."""
    cells: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("# %%"):
            kind = "markdown" if "[markdown]" in line else "solution" if "[solution]" in line else "code"
            cells.append((kind, []))
            continue
        if not cells:
            if line.strip():
                raise ValueError(f"text before the first '# %%' marker: {line!r}")
            continue
        kind, lines = cells[-1]
        if kind == "markdown":
            if line.strip() and not line.startswith("#"):
                raise ValueError(f"markdown cell line does not start with '#': {line!r}")
            line = line[2:] if line.startswith("# ") else line.lstrip("#")
        lines.append(line)
    return [(kind, "\n".join(lines).strip("\n")) for kind, lines in cells]


def to_notebook(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    for kind, source in cells:
        new = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        cell = new(source)
        cell.pop("id", None)
        if kind == "solution":
            cell.metadata["tags"] = ["solution"]
            cell.metadata["jupyter"] = {"source_hidden": True}
        nb.cells.append(cell)
    nbformat.validator.normalize(nb)
    return nb


def build(src: Path, timeout: int = 600) -> float:
    nb = to_notebook(parse_percent(src.read_text()))
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    elapsed = time.perf_counter() - start
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, ROOT / "notebooks" / f"{src.stem}.ipynb")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="chapter numbers such as 01 (default: all)")
    args = parser.parse_args(argv)
    sources = sorted(SRC.glob("[0-9][0-9]_*.py"))
    if args.chapters:
        sources = [s for s in sources if s.name[:2] in args.chapters]
        if not sources:
            parser.error(f"chapters: no source in {SRC} matches {args.chapters}")
    for src in sources:
        print(f"{src.name}: running ...", flush=True)
        print(f"{src.name}: done in {build(src):.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
