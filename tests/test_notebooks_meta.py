"""Rules every chapter notebook follows (the nbval run itself checks the outputs)."""
from __future__ import annotations

import re
import sys

import pytest

from _book import ROOT, colab_url, config, load_notebook, notebooks, toc_files

NOTEBOOKS = notebooks()


def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _src(cell) -> str:
    return "".join(cell["source"])


def test_there_are_chapter_notebooks_and_the_toc_lists_exactly_them():
    assert NOTEBOOKS, "no chapter notebooks found under notebooks/"
    in_toc = [f for f in toc_files() if f.startswith("notebooks/")]
    assert in_toc == [p.relative_to(ROOT).with_suffix("").as_posix() for p in NOTEBOOKS]
    for f in toc_files():
        assert any((ROOT / f"{f}{ext}").exists() for ext in (".md", ".ipynb")), f"toc names a missing page {f}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_with_outputs_and_no_skips(path):
    nb = load_notebook(path)
    cells = _code_cells(nb)
    assert cells, f"{path.name} has no code cells"
    unexecuted = [i for i, c in enumerate(cells) if c.get("execution_count") is None]
    assert not unexecuted, f"{path.name}: code cells {unexecuted} were committed without running"
    counts = [c["execution_count"] for c in cells]
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: not run top to bottom once: {counts}"
    skipped = [i for i, c in enumerate(cells) if "NBVAL_SKIP" in _src(c)]
    assert not skipped, f"{path.name}: cells {skipped} carry NBVAL_SKIP; nbval must run every cell"
    ignored = [c for c in cells if "NBVAL_IGNORE_OUTPUT" in _src(c)]
    assert len(ignored) <= len(cells) // 2, f"{path.name}: too many cells ignore their output"
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name}: committed with an error output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_follows_the_chapter_pattern(path):
    nb = load_notebook(path)
    first = "".join(nb["cells"][0]["source"])
    number = int(path.name[:2])
    assert re.match(rf"# Chapter {number}\b", first), f"{path.name}: the first cell must be the title"
    assert f"({colab_url(path)})" in first, f"{path.name}: the Colab badge must point at {colab_url(path)}"
    setup = _src(_code_cells(nb)[0])
    assert '"google.colab" in sys.modules' in setup, "the first code cell installs tutx only on Colab"
    assert config()["repository"]["url"] in setup, "the Colab install cell must use the repository URL"
    text = "\n".join(_src(c) for c in nb["cells"])
    assert "```{exercise}" in text and ":class: dropdown" in text
    assert "```{solution}" in text or ("```{solution-start}" in text and "```{solution-end}" in text)
    assert f"tutx.exercises.ch{number:02d}" in text or f"from tutx.exercises import ch{number:02d}" in text
    assert nb["metadata"]["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_matches_its_source(path):
    """The committed notebook was built from notebooks/src (make notebooks) and not edited apart."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from build_notebooks import parse_percent

    src = ROOT / "notebooks" / "src" / f"{path.stem}.py"
    assert src.exists(), f"{path.name} has no source {src.relative_to(ROOT)}"
    want = [("code" if kind == "solution" else kind, text) for kind, text in parse_percent(src.read_text())]
    got = [(c["cell_type"], _src(c)) for c in load_notebook(path)["cells"]]
    assert got == want, f"{path.name} differs from its source: run `make notebooks`"
