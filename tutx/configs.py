"""Configurations of well-known models, written out so nothing has to be downloaded.

The values are copied from each model's ``config.json`` on the Hugging Face Hub (only the
fields that decide the shape). Use :func:`get_spec` for the Chapter 1 calculators and
:func:`get_config` to build the real ``transformers`` model on the ``meta`` device.
"""
from __future__ import annotations

import copy

from tutx.scaling import ModelSpec

_LLAMA31 = dict(model_type="llama", vocab_size=128256, max_position_embeddings=131072,
                rope_theta=500000.0, tie_word_embeddings=False)

CONFIGS: dict[str, dict] = {
    "GPT-2": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
    "GPT-2-XL": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=1600, n_layer=48, n_head=25),
    "BERT-base": dict(model_type="bert", vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                      num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512,
                      type_vocab_size=2),
    "Llama-2-7B": dict(model_type="llama", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, intermediate_size=11008,
                       max_position_embeddings=4096, tie_word_embeddings=False),
    "Llama-2-70B": dict(model_type="llama", vocab_size=32000, hidden_size=8192, num_hidden_layers=80,
                        num_attention_heads=64, num_key_value_heads=8, intermediate_size=28672,
                        max_position_embeddings=4096, tie_word_embeddings=False),
    "Mistral-7B": dict(model_type="mistral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                       max_position_embeddings=32768, sliding_window=4096, tie_word_embeddings=False),
    "Llama-3.1-8B": dict(**_LLAMA31, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=14336),
    "Llama-3.1-70B": dict(**_LLAMA31, hidden_size=8192, num_hidden_layers=80, num_attention_heads=64,
                          num_key_value_heads=8, intermediate_size=28672),
    "Llama-3.1-405B": dict(**_LLAMA31, hidden_size=16384, num_hidden_layers=126, num_attention_heads=128,
                           num_key_value_heads=8, intermediate_size=53248),
    # Mixtures of experts: all experts in memory, a few per token.
    "Mixtral-8x7B": dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                         num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=32768,
                         tie_word_embeddings=False),
    "Qwen3-30B-A3B": dict(model_type="qwen3_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=48,
                          num_attention_heads=32, num_key_value_heads=4, head_dim=128, intermediate_size=6144,
                          moe_intermediate_size=768, num_experts=128, num_experts_per_tok=8,
                          decoder_sparse_step=1, mlp_only_layers=[], max_position_embeddings=40960,
                          tie_word_embeddings=False),
}


def _lookup(name: str) -> tuple[str, dict]:
    if not isinstance(name, str):
        raise TypeError(f"name: expected a model name such as 'Llama-3.1-8B', got {type(name).__name__}")
    for key, cfg in CONFIGS.items():
        if key.lower() == name.lower():
            return key, cfg
    raise ValueError(f"name={name!r}: unknown model; known: {', '.join(CONFIGS)}")


def get_config(name: str) -> dict:
    """A copy of the config dict of ``name`` (case-insensitive), e.g. ``get_config("Llama-3.1-8B")``."""
    return copy.deepcopy(_lookup(name)[1])


def get_spec(name: str) -> ModelSpec:
    """The :class:`~tutx.scaling.ModelSpec` of a known model."""
    key, cfg = _lookup(name)
    return ModelSpec.from_config(cfg, name=key)


def to_hf_config(name: str):
    """The ``transformers`` config object of ``name`` (build the model on ``meta`` to inspect it)."""
    from transformers import AutoConfig

    cfg = get_config(name)
    return AutoConfig.for_model(cfg.pop("model_type"), **cfg)
