"""Pick the device a notebook runs on and describe it in words.

``get()`` returns CUDA when present (the fast paths), otherwise the CPU;
``name()`` is what measured figures are labelled with.
"""
from __future__ import annotations

import os
import platform

import torch


def get(prefer: str | None = None) -> torch.device:
    """The device to run on: ``prefer`` if given ("cpu", "cuda", "cuda:1"), else CUDA when present."""
    if prefer is not None:
        if not isinstance(prefer, (str, torch.device)):
            raise TypeError(f"prefer: expected a device string such as 'cpu' or 'cuda', got {prefer!r}")
        dev = torch.device(prefer)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"prefer={prefer!r}: CUDA was asked for but no CUDA GPU is available")
        return dev
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def name(device: torch.device | str | None = None) -> str:
    """A human-readable name: the GPU's name, or the CPU model with the number of cores torch uses."""
    dev = get() if device is None else torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU: {_cpu_model()} ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def describe() -> dict:
    """Device and library versions, for result files and notebook headers."""
    import transformers

    info = {
        "device": name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def kernel_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """The dtype to build kernel inputs in on ``device`` (default: :func:`get`).

    bfloat16 on GPUs with bf16 tensor cores (compute capability >= 8.0: L4, A100, H100),
    float16 on older GPUs (Colab's T4, sm_75: the attention kernels refuse bf16 there), and
    float32 on a CPU, where the kernels' references run in fp32.
    """
    dev = get() if device is None else get(device)
    if dev.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.get_device_capability(dev) >= (8, 0) else torch.float16
