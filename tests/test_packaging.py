"""The set-up promises of the README: pinned CI environment, conda env in step with pyproject."""
from __future__ import annotations

import re
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
