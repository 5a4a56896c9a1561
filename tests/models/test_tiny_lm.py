"""The shipped tiny LM: fast offline loading, GQA architecture, the model card's numbers, Shakespeare."""
from __future__ import annotations

import re
import time

import pytest
import torch
from transformers import LlamaForCausalLM

from tutx.models import TINY_DIR, heldout_text, load_tiny, perplexity

# The shipped model scores about 55 (window 512, stride 512); an untrained one scores ~4096,
# a unigram model of the training plays about 400.
PERPLEXITY_BOUND = 60.0


@pytest.fixture(scope="module")
def tiny():
    return load_tiny()


def card_value(key: str) -> float:
    card = (TINY_DIR / "README.md").read_text(encoding="utf-8")
    front = card.split("---")[1]  # the YAML front matter
    return float(re.search(rf"^{key}: ([0-9.]+)$", front, re.M).group(1))


def test_load_tiny_is_fast_and_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    load_tiny()  # first call may warm caches; both must be fast
    t0 = time.perf_counter()
    model, tok = load_tiny()
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0, f"load_tiny took {elapsed:.2f} s"
    assert not model.training


def test_tiny_architecture(tiny):
    model, tok = tiny
    cfg = model.config
    assert isinstance(model, LlamaForCausalLM)
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # grouped-query attention
    assert cfg.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert cfg.vocab_size == len(tok) == 4096
    assert next(model.parameters()).dtype == torch.float32
    n_params = sum(p.numel() for p in model.parameters())
    assert 2e6 < n_params < 4.5e6
    assert (TINY_DIR / "model.safetensors").stat().st_size <= 18e6


def test_tokenizer_special_tokens_and_round_trip(tiny):
    _, tok = tiny
    assert tok.bos_token == tok.eos_token == tok.pad_token == "<|endoftext|>"
    text = "MACBETH:\nSo foul and fair a day I have not seen.\n\n[Exeunt] -- naïve 'tis 123"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) < len(text) / 2  # BPE actually merges
    assert tok.decode(ids) == text
    assert tok.decode(tok("<|endoftext|>").input_ids) == "<|endoftext|>"


def test_heldout_perplexity_matches_model_card(tiny):
    model, tok = tiny
    window = int(card_value("heldout_perplexity_window"))
    stride = int(card_value("heldout_perplexity_stride"))
    expected = card_value("heldout_perplexity")
    got = perplexity(model, tok, heldout_text(), window=window, stride=stride)
    assert got == pytest.approx(expected, rel=5e-3)
    assert got < PERPLEXITY_BOUND


def greedy(model, tok, prompt: str, n: int = 60) -> str:
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.inference_mode():
        out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, ids.shape[1]:])


def test_greedy_generation_is_deterministic_and_shakespearean(tiny):
    model, tok = tiny
    first = greedy(model, tok, "ROMEO:\n")
    assert greedy(model, tok, "ROMEO:\n") == first
    known = {w.lower() for w in re.findall(r"[A-Za-z']+", heldout_text())}
    words = [w.lower() for w in re.findall(r"[A-Za-z']+", first)]
    assert len(words) >= 20
    share = sum(w in known for w in words) / len(words)
    assert share >= 0.8, f"only {share:.0%} known words in {first!r}"
    lines = [line for line in first.split("\n") if line.strip()]
    assert len(lines) >= 2, f"expected newline-separated speech, got {first!r}"
