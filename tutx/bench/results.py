"""Read the measured-results files in ``tutx/results/`` (written by ``scripts/gpu_check.py``).

Each run writes one JSON file with an ``environment`` (device, versions, date, command) and one
key per area (``attention``, ``sparse_decode``, ``quant_matmul``, …). Areas can come from
different runs: :func:`latest` returns, for one area, the rows of the newest file that has it,
with that file's environment, so a notebook can name the GPU and date next to every table.

The files live inside the package (``RESULTS_DIR``) and ship with it as package data, so a
non-editable install (Colab's ``pip install git+...``) reads the same tables as a clone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tutx._validate import check_str

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"  # tutx/results/, shipped as package data


@dataclass
class Measured:
    """The rows of one area from one results file, and where they came from."""

    area: str
    rows: list
    environment: dict
    path: Path
    errors: dict = field(default_factory=dict)

    @property
    def device(self) -> str:
        return self.environment.get("device", "unknown device")

    @property
    def source(self) -> str:
        """One line naming the device, the date, the versions and the file, for under a table."""
        env = self.environment
        versions = ", ".join(f"{k} {env[k]}" for k in ("torch", "triton") if k in env)
        return f"Measured on {self.device}, {env.get('date', '?')[:16].replace('T', ' ')} UTC ({versions}); {self.path.name}"

    def __repr__(self) -> str:
        return f"Measured(area={self.area!r}, rows={len(self.rows)}, device={self.device!r}, file={self.path.name!r})"


def result_files(directory: Path | str = RESULTS_DIR) -> list[Path]:
    """Every results file in ``directory`` (a ``*.json`` with an ``environment``), oldest first (by the date inside).

    ``scripts/gpu_check.py`` writes ``gpu_check-*.json``, ``scripts/bench_engines.py`` ``engines-*.json``;
    the chapter scripts write their own prefixes with the same layout.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    dated = []
    for p in directory.glob("*.json"):
        data = json.loads(p.read_text())
        if isinstance(data, dict) and isinstance(data.get("environment"), dict):
            dated.append((data["environment"].get("date", ""), p.name, p))
    return [p for _, _, p in sorted(dated)]


def latest(area: str, directory: Path | str = RESULTS_DIR) -> Measured | None:
    """The newest measurement of ``area`` (a list of rows), or None when no GPU run has recorded it yet."""
    check_str("area", area)
    for path in reversed(result_files(directory)):
        data = json.loads(path.read_text())
        rows = data.get(area)
        if isinstance(rows, list) and rows:
            return Measured(area, rows, data.get("environment", {}), path, data.get("errors", {}))
    return None
