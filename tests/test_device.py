import pytest
import torch

import tutx


def test_get_picks_cuda_only_when_present():
    dev = tutx.device.get()
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert tutx.device.get("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without a GPU")
def test_asking_for_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="prefer='cuda'.*no CUDA GPU"):
        tutx.device.get("cuda")


def test_bad_prefer_type():
    with pytest.raises(TypeError, match="prefer"):
        tutx.device.get(3)


def test_name_and_describe():
    name = tutx.device.name("cpu")
    assert name.startswith("CPU: ") and "threads" in name
    info = tutx.device.describe()
    assert info["torch"] == torch.__version__
    assert set(info) >= {"device", "torch", "transformers", "python", "cuda", "triton"}


def test_kernel_dtype_follows_the_gpu_generation(monkeypatch):
    assert tutx.device.kernel_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, dtype in (((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None, c=capability: c)
        assert tutx.device.kernel_dtype("cuda") == dtype, capability
    with pytest.raises(TypeError, match="prefer"):
        tutx.device.kernel_dtype(3)
