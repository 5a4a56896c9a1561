"""Shared facts about the book for the tests: the toc, the notebooks, the repository URL."""
from __future__ import annotations

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def toc() -> dict:
    return yaml.safe_load((ROOT / "_toc.yml").read_text())


def toc_files() -> list[str]:
    """Every file the toc names, root first, in reading order (no suffix)."""
    t = toc()
    files = [t["root"]]
    for part in t.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


def notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def load_notebook(path: Path) -> dict:
    return json.loads(path.read_text())


def colab_url(notebook: Path) -> str:
    """The Colab address of a notebook, built from the one repository URL in _config.yml."""
    repo = config()["repository"]
    slug = repo["url"].removeprefix("https://github.com/").rstrip("/")
    path = notebook.relative_to(ROOT).as_posix()
    return f"https://colab.research.google.com/github/{slug}/blob/{repo['branch']}/{path}"
