import torch

from tutx.kernels import _dispatch


def test_cpu_tensors_use_the_kernel_only_under_the_interpreter(monkeypatch):
    x = torch.zeros(3)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.use_triton(x, x) is True
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert _dispatch.use_triton(x) is False
    monkeypatch.delenv("TRITON_INTERPRET")
    assert _dispatch.use_triton(x) is False


def test_mixed_devices_never_take_the_kernel(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _dispatch.use_triton(torch.zeros(1), torch.zeros(1, device="meta")) is False
