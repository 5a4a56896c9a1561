"""Build the book and look at it in a real browser (headless Debian Chromium via Playwright).

Checks what a reader would notice: every page of the toc exists and loads, internal links lead
somewhere, each chapter shows its outputs (rendered figures where the notebook has them), and the
Colab launch button opens the right notebook. On every chapter page the Markdown tables the
notebooks print are real HTML tables and, with the network cut off, MathJax (served from the book,
see `make mathjax`) has typeset every formula. Screenshots of each chapter page (its top, its first
table and its first formula) go to _build/screenshots/.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from _book import ROOT, colab_url, load_notebook, notebooks, toc_files

pytestmark = pytest.mark.slow

HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        msg = "Debian chromium is not installed (make test installs it: `make chromium`)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="module")
def built_book() -> Path:
    # MathJax is copied into the book from the npm registry by the Makefile (once, then cached).
    mathjax = subprocess.run(["make", "-C", str(ROOT), "mathjax"], capture_output=True, text=True, timeout=600)
    assert mathjax.returncode == 0, f"make mathjax failed:\n{mathjax.stdout[-2000:]}\n{mathjax.stderr[-2000:]}"
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run(
        [str(jb), "build", str(ROOT), "--warningiserror", "--keep-going"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"jupyter-book build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert (HTML / "index.html").exists()
    return HTML


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    exe = _chromium()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _page_path(doc: str) -> Path:
    return HTML / f"{doc}.html"


def _image_outputs(nb: dict) -> int:
    return sum(
        1
        for c in nb["cells"] if c["cell_type"] == "code"
        for o in c.get("outputs", []) if "image/png" in o.get("data", {}) or "image/svg+xml" in o.get("data", {})
    )


def test_every_toc_page_loads_and_its_links_resolve(built_book, browser):
    page = browser.new_page()
    for doc in toc_files():
        path = _page_path(doc)
        assert path.exists(), f"page for {doc} is missing from the built book"
        page.goto(path.as_uri())
        title = page.locator("main h1").first.inner_text()
        assert title.strip(), f"{doc}: no title"
        for href in page.eval_on_selector_all("main a[href], nav a[href]", "els => els.map(e => e.getAttribute('href'))"):
            url = urlparse(href)
            if url.scheme or not url.path:
                continue  # external link or same-page anchor
            target = (path.parent / unquote(url.path)).resolve()
            assert target.exists(), f"{doc}: link {href!r} points to a missing page"
        broken = page.eval_on_selector_all("main img", "els => els.filter(e => !(e.complete && e.naturalWidth > 0)).map(e => e.src)")
        broken = [src for src in broken if src.startswith("file:")]  # external badges need a network
        assert not broken, f"{doc}: images of the book that do not load: {broken}"
    page.close()


@pytest.mark.parametrize("nb_path", notebooks(), ids=lambda p: p.name)
def test_chapter_page_shows_outputs_and_colab_button(built_book, browser, nb_path):
    nb = load_notebook(nb_path)
    doc = nb_path.relative_to(ROOT).with_suffix("").as_posix()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(_page_path(doc).as_uri())
    assert page.locator(".cell_output").count() > 0, f"{doc}: no cell outputs rendered"
    want_figures = _image_outputs(nb)
    shown = page.locator(".cell_output img").count()
    assert shown >= min(want_figures, 1) and shown == want_figures, (
        f"{doc}: notebook has {want_figures} figures, page shows {shown}"
    )
    colab = page.eval_on_selector_all(
        "a[href*='colab.research.google.com']", "els => els.map(e => e.href)"
    )
    assert colab_url(nb_path) in colab, f"{doc}: Colab links {colab} do not include {colab_url(nb_path)}"
    # exercises render with their solutions hidden behind a toggle
    assert page.locator(".exercise").count() > 0, f"{doc}: no exercise rendered"
    assert page.locator(".solution.dropdown, details.solution, .solution.toggle").count() > 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{nb_path.stem}.png"), full_page=False)
    page.close()


def _markdown_tables(nb: dict) -> int:
    """Markdown outputs of the notebook that hold a table (a header rule such as ``|---|``)."""
    return sum(
        1
        for c in nb["cells"] if c["cell_type"] == "code"
        for o in c.get("outputs", [])
        if "|---" in "".join(o.get("data", {}).get("text/markdown", "")).replace(" ", "").replace(":", "")
    )


def _offline_page(browser):
    """A page that may load only the book's own files: anything else is aborted, as offline."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:") else route.abort())
    return page


# The rendered text of the page without code (which may quote LaTeX on purpose) and without
# MathJax's own output.
_PROSE_TEXT = """() => {
  const main = document.querySelector('main').cloneNode(true);
  main.querySelectorAll('pre, code, script, style, mjx-container, mjx-assistive-mml').forEach(e => e.remove());
  return main.textContent;
}"""


@pytest.mark.parametrize("nb_path", notebooks(), ids=lambda p: p.name)
def test_chapter_tables_are_tables_and_math_is_typeset_offline(built_book, browser, nb_path):
    nb = load_notebook(nb_path)
    doc = nb_path.relative_to(ROOT).with_suffix("").as_posix()
    page = _offline_page(browser)
    page.goto(_page_path(doc).as_uri())
    # Markdown table outputs: rendered as <table>, never as a paragraph of pipes.
    want = _markdown_tables(nb)
    shown = page.locator(".cell_output table").count()
    assert shown >= want, f"{doc}: {want} Markdown table outputs in the notebook, {shown} HTML tables on the page"
    pipes = page.eval_on_selector_all(
        ".cell_output p", "els => els.map(e => e.textContent.trim()).filter(t => t.startsWith('|'))"
    )
    assert not pipes, f"{doc}: Markdown tables shown as text: {pipes[0][:120]!r}"
    # Math: MathJax is loaded from the book itself and typesets every formula.
    formulas = page.locator(".math").count()
    if formulas:
        page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=30_000)
        page.evaluate("() => MathJax.startup.promise")
        typeset = page.locator(".math mjx-container").count()
        assert typeset >= formulas, f"{doc}: {formulas - typeset} of {formulas} formulas left untypeset"
    text = page.evaluate(_PROSE_TEXT)
    for raw in ("\\(", "\\[", "$$"):
        at = text.find(raw)
        assert at < 0, f"{doc}: raw LaTeX {raw!r} left in the rendered text: {text[max(0, at - 60):at + 60]!r}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    if want:
        page.locator(".cell_output table").first.screenshot(path=str(SHOTS / f"{nb_path.stem}-table.png"))
    if formulas:
        page.locator("mjx-container").first.evaluate("e => e.scrollIntoView({block: 'center'})")
        page.screenshot(path=str(SHOTS / f"{nb_path.stem}-math.png"))
    page.close()


API_PACKAGES = ["tutx.quant", "tutx.attention", "tutx.engine", "tutx.parallel", "tutx.bench", "tutx.models",
                "tutx.serve", "tutx.kernels", "tutx.cpu", "tutx.compress"]


@pytest.mark.parametrize("package", API_PACKAGES)
def test_every_public_name_is_in_the_api_reference(built_book, package):
    import importlib
    import re

    html = (built_book / "book" / "api.html").read_text()
    documented = set(re.findall(r'id="(tutx\.[\w.]+)"', html))
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not any(d.endswith(f".{name}") for d in documented)]
    assert not missing, f"{package}: public names without an entry in book/api.md: {missing}"
