"""The shipped configs build the real transformers models with the parameter counts we compute."""
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM

from tutx.configs import CONFIGS, get_config, get_spec, to_hf_config

# Published sizes (model cards / papers), as a cross-check of the typed-in configs.
PUBLISHED = {"Llama-2-7B": 6.74e9, "Llama-2-70B": 68.98e9, "Llama-3.1-8B": 8.03e9,
             "Llama-3.1-70B": 70.55e9, "Llama-3.1-405B": 405.85e9, "Mistral-7B": 7.24e9,
             "GPT-2": 124.4e6, "GPT-2-XL": 1.558e9, "BERT-base": 109.5e6,
             "Mixtral-8x7B": 46.7e9, "Qwen3-30B-A3B": 30.5e9}
# Mixtures of experts: the parameters one token uses, as the model cards state them.
ACTIVE = {"Mixtral-8x7B": 12.9e9, "Qwen3-30B-A3B": 3.3e9}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_builds_the_model_with_the_computed_parameter_count(name):
    cfg = to_hf_config(name)
    with torch.device("meta"):
        model = (AutoModel if cfg.model_type == "bert" else AutoModelForCausalLM).from_config(cfg)
    real = sum(p.numel() for p in model.parameters())
    assert get_spec(name).n_params == real
    assert real == pytest.approx(PUBLISHED[name], rel=2e-3)
    if name in ACTIVE:
        assert get_spec(name).active_params == pytest.approx(ACTIVE[name], rel=2e-2)


def test_lookup_is_case_insensitive_and_copies():
    assert get_spec("llama-3.1-8b").name == "Llama-3.1-8B"
    cfg = get_config("GPT-2")
    cfg["n_layer"] = 1
    assert CONFIGS["GPT-2"]["n_layer"] == 12


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown model; known: GPT-2"):
        get_spec("GPT-5")
    with pytest.raises(TypeError, match="name"):
        get_config(7)
