"""The test tree itself: pytest imports test modules by basename (no packages), so two files with
the same name in different folders break collection of the whole suite."""
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_test_module_names_are_unique():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    clashes = sorted(n for n, k in names.items() if k > 1)
    assert not clashes, f"test modules with the same basename in different folders: {clashes}"
