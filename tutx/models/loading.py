"""``load(name_or_path)``: one entry point for the tiny model, a local folder, or a Hub model.

Notebooks run on Colab (network, GPU) and on offline laptops alike, so loading a Hub model
must fail fast and say what to do instead, rather than hang or raise a bare HTTP error.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from tutx._validate import check_bool
from tutx.models.hf import check_device_dtype
from tutx.models.tiny import load_tiny

_TRUTHY = {"1", "true", "yes", "on"}


def hub_offline() -> bool:
    """Whether the environment forbids the Hub (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUTHY
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens within ``timeout`` seconds.

    Without it, a machine with no network waits ~25 s in ``huggingface_hub``'s retries before
    failing. Behind an HTTP(S) proxy a direct connection says nothing, so we assume reachable.
    """
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _looks_like_path(name: str) -> bool:
    """Hub names are ``name`` or ``org/name``; anything else with a slash is a path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _from_pretrained(source: str, dtype, local_files_only: bool, kw: dict):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype is not None:
        kw = {**kw, "dtype": dtype}
    model = AutoModelForCausalLM.from_pretrained(source, local_files_only=local_files_only, **kw)
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_files_only)
    return model, tokenizer


def load(name_or_path: str | os.PathLike, device: str | torch.device | None = None,
         dtype: torch.dtype | None = None, offline: bool | None = None, **kw):
    """``(model, tokenizer)`` for ``"tiny"``, a local model folder, or a Hugging Face Hub name.

    - ``"tiny"``: the model shipped with tutx (:func:`load_tiny`), fp32 unless ``dtype`` says
      (the name wins over a folder called ``tiny``; pass ``"./tiny"`` for the folder).
    - a directory: ``AutoModelForCausalLM`` / ``AutoTokenizer.from_pretrained`` on it.
    - otherwise a Hub name: the local Hugging Face cache first, then the Hub unless
      ``offline`` is true (default: the ``HF_HUB_OFFLINE`` environment variable).

    Extra keyword arguments go to ``from_pretrained``. The model is returned in eval mode,
    on ``device`` when given. Raises ``OSError`` naming ``name_or_path`` when the model is
    neither a local folder nor cached and the Hub cannot be used.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path: expected a str or path, got {type(name_or_path).__name__}")
    if offline is not None:
        check_bool("offline", offline)
    check_device_dtype(device, torch.float32 if dtype is None else dtype)
    name = os.fspath(name_or_path)
    if not name.strip():
        raise ValueError("name_or_path: expected 'tiny', a model folder or a Hub name, got ''")

    if name == "tiny":
        if kw:
            raise TypeError(f"load('tiny') takes no extra keyword arguments, got {sorted(kw)}")
        return load_tiny(device=device, dtype=dtype or torch.float32)

    path = Path(name).expanduser()
    if path.is_dir():
        model, tokenizer = _from_pretrained(str(path), dtype, True, kw)
    elif path.exists() or (isinstance(name_or_path, os.PathLike) or _looks_like_path(name)):
        raise ValueError(f"name_or_path={name!r}: not a model folder (expected a directory with "
                         "config.json and weights, or a Hub name such as 'org/model')")
    else:
        offline = hub_offline() if offline is None else offline
        model, tokenizer = _load_hub(name, dtype, offline, kw)
    if device is not None:
        model.to(device)
    model.eval()
    return model, tokenizer


def _load_hub(name: str, dtype, offline: bool, kw: dict):
    """From the local HF cache, then (unless offline) the Hub; a clear OSError otherwise."""
    try:
        return _from_pretrained(name, dtype, True, kw)
    except (OSError, ValueError):
        pass
    if offline:
        reason = "offline mode is on: HF_HUB_OFFLINE is set or offline=True"
    elif not hub_reachable():
        reason = "no network: no connection to the Hub endpoint"
    else:
        try:
            return _from_pretrained(name, dtype, False, kw)
        except Exception as err:  # network errors come in many types (OSError, HTTP, timeouts)
            reason = f"or has no such model: {type(err).__name__}: {err}"
    raise OSError(
        f"name_or_path={name!r} is neither a local path nor in the Hugging Face cache, and the "
        f"Hub could not be reached ({reason}). For the model shipped with tutx, call "
        "tutx.models.load_tiny() (or tutx.models.load('tiny'))."
    )
