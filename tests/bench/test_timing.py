import time

import pytest

from tutx.bench import Timing, timeit


def test_timeit_measures_a_known_sleep():
    calls = []

    def work():
        calls.append(1)
        time.sleep(0.002)

    t = timeit(work, warmup=2, repeat=5)
    assert len(calls) == 7, "warm-up calls run but are not timed"
    assert len(t.samples) == 5
    assert 0.002 <= t.median < 0.05
    assert t.min <= t.median and t.iqr >= 0
    assert t.median_ms == pytest.approx(t.median * 1e3)
    assert "median=" in repr(t) and "device='cpu'" in repr(t)


def test_min_time_keeps_sampling():
    t = timeit(lambda: time.sleep(0.001), warmup=0, repeat=1, min_time=0.02)
    assert sum(t.samples) >= 0.02 and len(t.samples) > 1


def test_statistics_on_fixed_samples():
    t = Timing(samples=(1.0, 2.0, 3.0, 4.0, 100.0), device="cpu")
    assert t.median == 3.0 and t.min == 1.0
    assert t.iqr == pytest.approx(2.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"warmup": -1}, "warmup"), ({"repeat": 0}, "repeat"), ({"min_time": -1.0}, "min_time")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timeit(lambda: None, **kwargs)
    with pytest.raises(TypeError, match="fn"):
        timeit(42)


@pytest.mark.parametrize("kwargs, match", [({"warmup": 1.5}, "warmup"), ({"repeat": True}, "repeat"),
                                           ({"min_time": "1"}, "min_time")])
def test_wrong_argument_types(kwargs, match):
    with pytest.raises(TypeError, match=match):
        timeit(lambda: None, **kwargs)


def test_percentile_interpolates_and_checks_its_arguments():
    import numpy as np

    from tutx.bench import percentile
    values = [5.0, 1.0, 4.0, 2.0, 3.0, 10.0]
    for q in (0, 10, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(ValueError, match="q: expected a number <= 100"):
        percentile(values, 101)
    with pytest.raises(ValueError, match="values: expected at least one value"):
        percentile([], 50)
