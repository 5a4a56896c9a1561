import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tutx.models.kv import kv_cache_nbytes
from tutx.scaling import ModelSpec


@pytest.fixture(scope="module")
def small_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=48, num_hidden_layers=3, num_attention_heads=6,
                      num_key_value_heads=2, intermediate_size=64)
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("batch, seq", [(1, 1), (3, 17), (2, 64)])
def test_measured_cache_matches_the_formula(small_llama, batch, seq):
    with torch.inference_mode():
        out = small_llama(torch.randint(0, 97, (batch, seq)), use_cache=True)
    spec = ModelSpec.from_config(small_llama.config)
    assert kv_cache_nbytes(out) == spec.kv_cache_bytes(batch, seq, "fp32")


def test_legacy_tuples_and_errors():
    layer = (torch.zeros(2, 4, 5, dtype=torch.float16), torch.zeros(2, 4, 5, dtype=torch.float16))
    assert kv_cache_nbytes((layer, layer)) == 4 * 40 * 2
    with pytest.raises(TypeError, match="cache"):
        kv_cache_nbytes("not a cache")
    with pytest.raises(ValueError, match="use_cache=True"):
        kv_cache_nbytes({"logits": torch.zeros(1), "cache": None})
