"""The set-up promises of the README: pinned CI environment, conda env in step with pyproject."""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _norm(req: str) -> tuple[str, str]:
    r = Requirement(req)
    return (r.name.lower().replace("_", "-"), str(r.specifier))


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = _pyproject()["project"]
    expected = set(map(_norm, project["dependencies"]))
    for extra in ("book", "test"):
        expected |= set(map(_norm, project["optional-dependencies"][extra]))
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    listed = {_norm(r) for r in pip_section if not r.startswith("-")}
    assert listed == expected, (
        f"only in environment.yml: {sorted(listed - expected)}; only in pyproject: {sorted(expected - listed)}"
    )


def test_package_metadata():
    project = _pyproject()["project"]
    assert project["name"] == "tutx"
    assert project["requires-python"] == ">=3.10"
    extras = project["optional-dependencies"]
    assert {"book", "serve", "test", "flash"} <= set(extras)
    assert any(Requirement(r).name == "flash-attn" for r in extras["flash"])
    torch_req = next(Requirement(r) for r in project["dependencies"] if r.startswith("torch"))
    # the package keeps a range (Colab ships its own torch); CI pins the exact CPU build
    assert "2.4.0" in torch_req.specifier and "2.13.0" in torch_req.specifier


def test_ci_environment_is_pinned_to_the_cpu_torch():
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    assert pins["torch"] == "2.13.0"
    for name in ("transformers", "jupyter-book", "nbval", "pytest", "playwright"):
        assert name in pins, f"{name} is not pinned in requirements/constraints.txt"
    assert pins["jupyter-book"].startswith("1."), "the book uses Jupyter Book 1.x"


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert re.search(r"^\s*(time\s+)?make test\s*$", ci, re.M)
    assert "make book" in readme and "make test" in readme
    makefile = (ROOT / "Makefile").read_text()
    for target in ("book:", "test:", "lab:"):
        assert re.search(rf"^{target}", makefile, re.M), f"Makefile has no {target} target"
    assert "--nbval " in makefile and "--nbval-lax" not in makefile


# --- An installed (non-editable) tutx carries its data ------------------------------------------

_INSTALLED_CHECK = r"""
import json, sys
from pathlib import Path
import tutx
from tutx.bench import RESULTS_DIR, latest
from tutx.models import TINY_DIR

site = Path(sys.argv[1]).resolve()
assert Path(tutx.__file__).resolve().is_relative_to(site), f"imported {tutx.__file__}, not the wheel"
found = {}
for area in json.loads(sys.argv[2]):
    measured = latest(area)
    assert measured is not None, f"latest({area!r}) is None in the installed package"
    assert measured.path.resolve().is_relative_to(site), measured.path
    found[area] = len(measured.rows)
for name in ("PERF_NOTES.md", "README.md"):
    assert (RESULTS_DIR / name).is_file(), f"{name} is not shipped"
assert (TINY_DIR / "model.safetensors").is_file()
print(json.dumps(found))
"""


def _areas_in_repo() -> list[str]:
    from tutx.bench import RESULTS_DIR, result_files

    areas = set()
    for path in result_files(RESULTS_DIR):
        data = json.loads(path.read_text())
        areas |= {k for k, v in data.items() if k != "environment" and isinstance(v, list) and v}
    return sorted(areas)


def test_a_wheel_installed_into_a_fresh_venv_finds_every_results_area(tmp_path):
    """Colab installs tutx with ``pip install git+...`` (not editable): the results must ship inside it."""
    areas = _areas_in_repo()
    assert {"attention", "sparse_decode", "quant_matmul"} <= set(areas), areas
    src = tmp_path / "src"  # build from a copy, so the shared working tree gets no build/ folder
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "tutx", src / "tutx", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    run = functools.partial(subprocess.run, check=True, capture_output=True, text=True, timeout=120)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(src)])
    wheel = next((tmp_path / "dist").glob("tutx-*.whl"))

    # A fresh venv; its site sees the test environment's packages (torch, transformers) through a
    # .pth line, which adds the folder but not that folder's own .pth files (the editable tutx).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    site = next(venv.glob("lib/python*/site-packages"))
    deps = next(p for p in map(Path, sys.path) if p.name == "site-packages" and (p / "torch").is_dir())
    (site / "test_deps.pth").write_text(f"{deps}\n")
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(site), str(wheel)])

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = run([str(venv / "bin" / "python"), "-c", _INSTALLED_CHECK, str(site), json.dumps(areas)],
               cwd=outside, env=env)
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(found) == areas and all(found.values())
