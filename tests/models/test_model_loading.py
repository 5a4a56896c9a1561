"""``tutx.models.load``: the tiny model, a local folder, and a clear, fast error for an unreachable Hub model."""
from __future__ import annotations

import time

import pytest
import torch

from tutx.models import load, load_tiny


def test_load_tiny_by_name():
    model, tok = load("tiny")
    assert model.config.model_type == "llama" and not model.training
    assert next(model.parameters()).dtype == torch.float32
    bf16, _ = load("tiny", dtype=torch.bfloat16)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_load_local_directory(tmp_path):
    model, tok = load_tiny()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load(tmp_path)  # a Path
    again, _ = load(str(tmp_path), dtype=torch.float32)  # a str
    assert not loaded.training
    text = "OLIVIA:\nWhat is your parentage?"
    assert loaded_tok(text).input_ids == tok(text).input_ids
    ids = tok(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        want = model(ids).logits
        torch.testing.assert_close(loaded(ids).logits, want)
        torch.testing.assert_close(again(ids).logits, want)


@pytest.mark.parametrize("how", ["env", "kwarg"])
def test_unreachable_hub_model_fails_fast_and_clearly(monkeypatch, tmp_path, how):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    kw = {}
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        kw["offline"] = True
    t0 = time.perf_counter()
    with pytest.raises(OSError) as err:
        load("some-org/not-a-model", **kw)
    assert time.perf_counter() - t0 < 10
    msg = str(err.value)
    assert "name_or_path='some-org/not-a-model'" in msg
    assert "neither a local path nor in the Hugging Face cache" in msg
    assert "Hub could not be reached" in msg
    assert "tutx.models.load_tiny()" in msg


@pytest.mark.parametrize(
    "args, kwargs, exc, names",
    [
        ((123,), {}, TypeError, "name_or_path"),
        ((None,), {}, TypeError, "name_or_path"),
        (("",), {}, ValueError, "name_or_path"),
        (("./no/such/model",), {}, ValueError, "name_or_path"),
        (("tiny",), {"dtype": "float32"}, TypeError, "dtype"),
        (("tiny",), {"dtype": torch.int8}, ValueError, "dtype"),
        (("tiny",), {"device": 0.5}, TypeError, "device"),
        (("tiny",), {"offline": "yes"}, TypeError, "offline"),
        (("tiny",), {"revision": "main"}, TypeError, "revision"),
    ],
)
def test_load_rejects_bad_arguments(args, kwargs, exc, names):
    with pytest.raises(exc, match=names):
        load(*args, **kwargs)


def test_load_tiny_rejects_bad_arguments():
    with pytest.raises(TypeError, match="dtype"):
        load_tiny(dtype="fp32")
    with pytest.raises(TypeError, match="device"):
        load_tiny(device=["cpu"])


def test_no_network_fails_fast_without_offline_flag(monkeypatch):
    """Not offline, but the Hub endpoint is unreachable: no 25 s of retries, the same clear error."""
    import tutx.models.loading as loading

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(OSError, match="no network") as err:
        load("some-org/not-a-model")
    assert time.perf_counter() - t0 < 10
    assert "tutx.models.load_tiny()" in str(err.value)


def test_hub_reachable_probe(monkeypatch):
    from tutx.models.loading import hub_reachable

    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    t0 = time.perf_counter()
    assert hub_reachable(timeout=1.0) is False
    assert time.perf_counter() - t0 < 5
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")  # behind a proxy: cannot tell, try
    assert hub_reachable(timeout=1.0) is True
