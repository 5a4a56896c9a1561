"""The results-file reader picks, per area, the newest run that measured it."""
import json

import pytest

from tutx.bench import latest, result_files


def _write(tmp_path, name, date, **areas):
    (tmp_path / name).write_text(json.dumps({"environment": {"device": "GPU X", "date": date, "torch": "2.x"},
                                             "errors": {}, **areas}))


def test_latest_takes_each_area_from_the_newest_run_that_has_it(tmp_path):
    _write(tmp_path, "gpu_check-b.json", "2026-01-01T10:00:00", attention=[{"ms": 1}], quant=[{"us": 9}])
    _write(tmp_path, "gpu_check-a.json", "2026-01-02T10:00:00", quant=[{"us": 5}])  # newer, though named first
    assert [p.name for p in result_files(tmp_path)] == ["gpu_check-b.json", "gpu_check-a.json"]
    assert latest("quant", tmp_path).rows == [{"us": 5}]
    attention = latest("attention", tmp_path)
    assert attention.rows == [{"ms": 1}] and attention.path.name == "gpu_check-b.json"
    assert "GPU X" in attention.source and "2026-01-01 10:00" in attention.source
    assert latest("decode", tmp_path) is None
    assert latest("quant", tmp_path / "missing") is None


def test_latest_refuses_a_non_string_area(tmp_path):
    with pytest.raises(TypeError, match="area: expected a str, got 3"):
        latest(3, tmp_path)
    with pytest.raises(ValueError, match="area: expected a non-empty str"):
        latest("", tmp_path)


def test_the_repository_results_name_a_device():
    for path in result_files():
        env = json.loads(path.read_text())["environment"]
        assert env["device"] and env["date"] and "torch" in env


def test_run_steps_keeps_going_and_reports_every_failure():
    from tutx.bench import run_steps

    rows, done = [], []

    def bad():
        raise ValueError("boom")

    with pytest.raises(RuntimeError, match=r"2 demo step\(s\) failed: \['ValueError: boom', 'ValueError: boom'\]"):
        run_steps(rows, [bad, lambda: done.append(1), bad], "demo")
    assert done == [1] and [r["op"] for r in rows] == ["error", "error"]
    run_steps(rows, [lambda: done.append(2)], "demo")  # no failure: no exception
    assert done == [1, 2]
