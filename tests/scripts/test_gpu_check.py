"""The GPU check driver: discovers the per-chapter checks and refuses to run without CUDA."""
import importlib.util
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_check_module_has_a_run_function():
    driver = _driver()
    for path in sorted(driver.CHECKS.glob("*.py")):
        assert callable(getattr(driver._load(path), "run", None)), f"{path.name} has no run(results)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_refuses_to_run_without_a_gpu(capsys):
    with pytest.raises(SystemExit):
        _driver().main([])
    assert "no CUDA GPU" in capsys.readouterr().err
