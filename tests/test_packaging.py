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
    for extra in ("book", "serve", "test", "cpu"):
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
    assert {"book", "serve", "test", "cpu", "flash"} <= set(extras)
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
from tutx.kernels.cpu_build import CSRC
for name in ("linear_cpu.c", "paged_decode_cpu.c", "llama_cpu_ops.c", "vec_math.h"):  # compiled on first use
    assert (CSRC / name).is_file(), f"kernels/csrc/{name} is not shipped"
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


# --- import tutx is cheap -----------------------------------------------------------------------

_IMPORT_TIME = r"""
import json, sys, time
t0 = time.perf_counter(); import torch
t1 = time.perf_counter(); import tutx
t2 = time.perf_counter(); import tutx.models, tutx.bench, tutx.device, tutx.hardware
t3 = time.perf_counter()
print(json.dumps({"tutx": t2 - t1, "tutx_common": t3 - t2, "transformers": "transformers" in sys.modules}))
"""


def test_import_tutx_adds_little_to_import_torch():
    """``import tutx`` (and the modules every chapter uses) must not import transformers (seconds)."""
    runs = []
    for _ in range(5):  # fresh processes: a warm import would measure nothing
        out = subprocess.run([sys.executable, "-c", _IMPORT_TIME], check=True, capture_output=True, text=True,
                             timeout=120, cwd=ROOT).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    assert not any(r["transformers"] for r in runs), "import tutx / tutx.models / tutx.bench imported transformers"
    added = sorted(r["tutx"] for r in runs)[2]
    common = sorted(r["tutx_common"] for r in runs)[2]
    assert added < 1.5, f"import tutx added {added:.2f} s to import torch (median of 5)"
    assert common < 1.5, f"import tutx.models, tutx.bench, ... added {common:.2f} s (median of 5)"


def test_submodules_load_on_first_use():
    import tutx

    assert {"models", "bench", "quant", "kernels", "exercises", "engine"} <= set(tutx.__all__)
    assert {"models", "quant"} <= set(dir(tutx))
    import tutx.models
    import tutx.show  # noqa: F401  (must not replace the function by its module)

    assert tutx.models.heldout_perplexity.__module__ == "tutx.models.perplexity"
    assert callable(tutx.show) and tutx.show.__name__ == "show"
    import tutx.models.perplexity  # noqa: F401

    assert callable(tutx.models.perplexity) and tutx.models.perplexity.__name__ == "perplexity"
    assert set(tutx.models.__all__) <= set(dir(tutx.models))
    for name in tutx.models.__all__:
        getattr(tutx.models, name)
    for bad in ("nonsense", "_private", "results"):
        try:
            getattr(tutx, bad)
        except AttributeError as err:
            assert bad in str(err)
        else:
            raise AssertionError(f"tutx.{bad} should not exist")
