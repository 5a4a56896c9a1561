"""``tutx.models.perplexity`` against per-token and per-chunk computations done by hand."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tutx.models import heldout_text, load_tiny, perplexity
from tutx.models.perplexity import windows


@pytest.fixture(scope="module")
def tiny():
    return load_tiny()


@pytest.fixture(scope="module")
def short_text(tiny):
    _, tok = tiny
    ids = tok(heldout_text()[5000:9000], add_special_tokens=False).input_ids[:80]
    return tok.decode(ids)


def naive_per_token(model, ids: list[int], window: int, stride: int) -> float:
    """Token t is scored in the first window reaching past it, from that window's tokens before t.

    Tokens that share a context start share one forward pass (the model is causal, so the
    logits at a position only see the tokens up to it).
    """
    by_begin: dict[int, list[int]] = {}
    for t in range(1, len(ids)):
        begin = max(0, (t - window) // stride + 1) * stride  # first window with begin + window > t
        if begin < t:  # a token that opens its window has nothing to be predicted from
            by_begin.setdefault(begin, []).append(t)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for begin, targets in by_begin.items():
            logp = F.log_softmax(model(torch.tensor([ids[begin : targets[-1]]])).logits[0].double(), -1)
            for t in targets:
                assert t - begin <= window - 1  # context never longer than the window allows
                nll -= logp[t - begin - 1, ids[t]].item()
                count += 1
    assert count == len(ids) - 1 - (len(ids) - 1) // window * (stride == window)
    return math.exp(nll / count)


@pytest.mark.parametrize("window, stride", [(32, 16), (24, 10), (12, 5), (90, 45)])
def test_matches_per_token_computation(tiny, short_text, window, stride):
    model, tok = tiny
    ids = tok(short_text, add_special_tokens=False).input_ids
    want = naive_per_token(model, ids, window, stride)
    got = perplexity(model, tok, short_text, window=window, stride=stride, batch_size=3)
    assert got == pytest.approx(want, rel=1e-4)


def test_stride_equal_window_is_mean_nll_of_chunks(tiny, short_text):
    model, tok = tiny
    ids = torch.tensor(tok(short_text, add_special_tokens=False).input_ids)
    nll, count = 0.0, 0
    with torch.inference_mode():
        for chunk in ids.split(30):
            if len(chunk) < 2:
                continue
            loss = model(chunk[None], labels=chunk[None]).loss  # mean over len(chunk) - 1 tokens
            nll += loss.item() * (len(chunk) - 1)
            count += len(chunk) - 1
    got = perplexity(model, tok, short_text, window=30, stride=30)
    assert got == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_batch_size_does_not_change_result_and_mode_is_restored(tiny, short_text):
    model, tok = tiny
    model.train()
    try:
        a = perplexity(model, tok, short_text, window=32, stride=8, batch_size=1)
        assert model.training  # restored
        b = perplexity(model, tok, short_text, window=32, stride=8, batch_size=64)
    finally:
        model.eval()
    assert a == pytest.approx(b, rel=1e-6)


def test_more_context_gives_lower_perplexity(tiny, short_text):
    model, tok = tiny
    assert perplexity(model, tok, short_text, window=64, stride=16) < perplexity(
        model, tok, short_text, window=16, stride=16)


def test_windows_score_every_token_once():
    for n, w, s in [(10, 4, 2), (100, 32, 32), (101, 32, 32), (7, 8, 4), (50, 16, 5)]:
        scored = [t for _, end, first in windows(n, w, s) for t in range(first, end)]
        covered = list(range(1, n)) if s < w else [t for t in range(1, n) if t % w]
        assert scored == covered
        assert all(end - begin <= w and first > begin for begin, end, first in windows(n, w, s))


@pytest.mark.parametrize(
    "kwargs, exc, name",
    [
        ({"text": ""}, ValueError, "text"),
        ({"text": b"bytes"}, TypeError, "text"),
        ({"text": "a"}, ValueError, "text"),  # one token: nothing to score
        ({"window": 0}, ValueError, "window"),
        ({"window": -8}, ValueError, "window"),
        ({"window": 1}, ValueError, "window"),
        ({"window": 513}, ValueError, "window"),  # longer than the model's 512 positions
        ({"window": 64.0}, TypeError, "window"),
        ({"window": True}, TypeError, "window"),
        ({"stride": 0}, ValueError, "stride"),
        ({"window": 64, "stride": 65}, ValueError, "stride"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": "8"}, TypeError, "batch_size"),
    ],
)
def test_rejects_bad_arguments(tiny, kwargs, exc, name):
    model, tok = tiny
    kwargs = {"text": "HAMLET:\nTo be, or not to be", **kwargs}
    with pytest.raises(exc, match=name):
        perplexity(model, tok, **kwargs)
