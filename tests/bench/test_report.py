import pytest

from tutx.bench import markdown_table


def test_markdown_table_formats_and_aligns():
    text = markdown_table([{"model": "a", "params": 1234567, "ppl": 12.3456}, {"model": "b", "params": 7, "ppl": 1.0}])
    lines = text.splitlines()
    assert lines[0] == "| model | params | ppl |"
    assert lines[1] == "|:---|---:|---:|"
    assert lines[2] == "| a | 1,234,567 | 12.35 |"
    assert lines[3] == "| b | 7 | 1.00 |"


def test_markdown_table_column_selection_and_errors():
    assert markdown_table([{"a": 1, "b": 2}], columns=["b"]).splitlines()[2] == "| 2 |"
    with pytest.raises(ValueError, match="rows: expected at least one row"):
        markdown_table([])
    with pytest.raises(TypeError, match="rows: expected a list of dicts, got int"):
        markdown_table(3)
    with pytest.raises(TypeError, match="rows: expected a list of dicts"):
        markdown_table([{"a": 1}, 2])
    with pytest.raises(TypeError, match="digits"):
        markdown_table([{"a": 1}], digits=1.5)
    with pytest.raises(ValueError, match=r"rows\[1\]: missing column"):
        markdown_table([{"a": 1}, {"b": 2}])


def test_a_pipe_inside_a_cell_is_escaped():
    from tutx.bench.report import markdown_table
    text = markdown_table([{"a|b": "s / |w|", "n": 1}])
    header, _, row = text.splitlines()
    assert header == "| a\\|b | n |"
    assert row == "| s / \\|w\\| | 1 |"
