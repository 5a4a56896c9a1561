"""peak_memory sees a call's temporary allocations on the CPU."""
import time

import pytest
import torch

from tutx.bench import peak_memory


def test_peak_memory_sees_a_large_temporary():
    def make_and_drop():
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched so the pages are resident
        return float(x.sum())

    result, peak = peak_memory(make_and_drop, device="cpu")
    assert result == 64 * 2**20 // 4
    assert 48 * 2**20 < peak < 256 * 2**20


def test_peak_memory_checks_its_arguments():
    with pytest.raises(TypeError, match="fn: expected a callable"):
        peak_memory(3)
    with pytest.raises(ValueError, match="interval: expected a number > 0, got 0"):
        peak_memory(lambda: 0, interval=0)


def test_the_sampling_fallback_agrees(monkeypatch):
    """Where Linux's high-water mark cannot be reset, a sampling thread measures the peak."""
    from tutx.bench import memory

    monkeypatch.setattr(memory, "_reset_high_water_mark", lambda: False)

    def make_and_drop():
        x = torch.ones(64 * 2**20 // 4)
        time.sleep(0.05)  # long enough for the sampler even on a busy machine
        return float(x.sum())

    result, peak = memory.peak_memory(make_and_drop, device="cpu")
    assert result == 64 * 2**20 // 4
    assert 48 * 2**20 < peak < 256 * 2**20
