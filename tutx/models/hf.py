"""Small helpers shared by the model loaders; ``transformers`` is imported on first use.

``import tutx`` stays cheap (transformers takes seconds to import), so nothing in
``tutx.models`` imports it at module level: the loaders import it when they are called.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def check_device_dtype(device, dtype) -> None:
    """``device`` is None, a str or a ``torch.device``; ``dtype`` a floating-point ``torch.dtype``."""
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"device: expected None, a str such as 'cpu' or a torch.device, got {device!r}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype such as torch.float32, got {dtype!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype: expected a floating-point dtype, got {dtype}")


@contextmanager
def no_progress_bar():
    """Hide transformers' "Loading weights" bar: a small checkpoint loads in milliseconds."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    if enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
