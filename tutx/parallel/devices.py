"""Device labels, byte sizes and dtypes as device maps write them (``"cuda:0"``, ``"10GiB"``, ``"bf16"``)."""
from __future__ import annotations

import re

import torch

__all__ = ["parse_size", "format_bytes", "short_bytes", "device_label", "torch_device", "accelerate_value",
           "to_dtype", "is_accelerator"]

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)
_LABEL = re.compile(r"^(cuda:\d+|cpu:\d+|cpu|mps|disk)$")
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
           "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def parse_size(value, name: str = "size") -> int:
    """Bytes from an int or a string such as ``"10GiB"``, ``"500MB"``, ``"1.5 GB"`` (GB = 10⁹, GiB = 2³⁰)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name}={value!r}: expected bytes as an int or a string such as '10GiB' or '500MB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name}={value!r}: expected a number of bytes >= 0")
        return value
    match = _SIZE.match(value)
    if match is None or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{name}={value!r}: expected a size such as '10GiB', '500MB' or '1.5GB' "
                         "(units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def format_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def short_bytes(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{format_bytes(n)} ({n:,} B)"


def device_label(key) -> str:
    """Normalise a budget key: 0 → "cuda:0", "cuda" → "cuda:0", torch.device("cpu") → "cpu"."""
    if isinstance(key, int) and not isinstance(key, bool) and key >= 0:
        return f"cuda:{key}"
    if isinstance(key, torch.device):
        key = str(key)
    if isinstance(key, str):
        label = "cuda:0" if key.strip().lower() == "cuda" else key.strip().lower()
        if _LABEL.match(label):
            return label
    raise ValueError(f"budgets: device key {key!r} not understood; expected 'cuda:N' (or an int N), "
                     "'cpu', 'cpu:N' (a simulated device), 'mps' or 'disk'")


def torch_device(label: str) -> torch.device:
    """The torch device a plan label runs on: ``"cpu:N"`` → ``cpu``; ``"disk"`` has none."""
    label = device_label(label)
    if label == "disk":
        raise ValueError("device 'disk': disk holds weights but computes nothing; it has no torch device")
    if label.startswith("cpu"):
        return torch.device("cpu")
    if label.startswith("cuda") and int(label[5:]) >= torch.cuda.device_count():
        raise ValueError(f"device {label!r}: only {torch.cuda.device_count()} CUDA device(s) are available")
    return torch.device(label)


def accelerate_value(label: str):
    """accelerate's device-map values: GPU index as an int, else the name ("cpu:N" stays as is)."""
    return int(label[5:]) if label.startswith("cuda:") else label


def to_dtype(dtype, name: str = "dtype") -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"{name}={dtype!r}: expected None, a torch.dtype or one of {', '.join(_DTYPES)}")


def is_accelerator(label: str) -> bool:
    """A GPU-like device (``cuda:N``, ``mps``), whose budget a plan may keep some headroom of."""
    return label.startswith("cuda") or label == "mps"
