"""tutx.models.perplexity's noise estimate (used by Chapter 3): window_nlls adds up to the perplexity; perplexity_noise is a seeded bootstrap (paired when given a baseline)."""
import math

import pytest
import torch
import transformers

from tutx.models.perplexity import perplexity, perplexity_noise, window_nlls


class CharTok:
    def __call__(self, text, add_special_tokens=False, return_tensors=None):
        return {"input_ids": torch.tensor([[ord(c) % 64 for c in text]])}


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


TEXT = "the quick brown fox jumps over the lazy dog. " * 8


@pytest.mark.parametrize("window, stride", [(16, 16), (16, 8), (32, 32)])
def test_window_nlls_add_up_to_the_perplexity(window, stride):
    m = _model()
    nll, count = window_nlls(m, CharTok(), TEXT, window=window, stride=stride, batch_size=3)
    assert nll.dtype == torch.float64
    assert int(count.sum()) == len(TEXT) - 1 - (len(TEXT) - 1) // window * (stride == window)  # chunk starts unscored
    assert math.exp(nll.sum() / count.sum()) == pytest.approx(perplexity(m, CharTok(), TEXT, window, stride), rel=1e-6)


def test_bootstrap_is_seeded_and_paired_noise_is_smaller():
    a, b = _model(0), _model(1)
    na, ca = window_nlls(a, CharTok(), TEXT, window=16)
    nb, cb = window_nlls(b, CharTok(), TEXT, window=16)
    assert perplexity_noise(na, ca) == perplexity_noise(na, ca) > 0
    assert perplexity_noise(na, ca, baseline=(na, ca)) == 0.0  # a model against itself
    with pytest.raises(ValueError, match="same windows"):
        perplexity_noise(na, ca, baseline=(nb[:-1], cb[:-1]))
    with pytest.raises(ValueError, match="n_boot"):
        perplexity_noise(na, ca, n_boot=1)
