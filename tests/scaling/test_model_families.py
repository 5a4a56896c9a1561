"""ModelSpec counts every family's parameters and KV-cache bytes exactly as transformers builds them.

Parameters: the model built on the meta device (no memory). KV bytes: the cache a real forward
pass of the tiny model fills (CPU, float32). Each config is written here, small, with the flags
that make its family differ: fused or separate QKV, biases, explicit head_dim, parallel blocks,
learned positions, untied heads, qk-norms, and mixtures of experts.
"""
import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from tutx.models.kv import kv_cache_nbytes
from tutx.scaling import FAMILIES, ModelSpec

SMALL = dict(vocab_size=256, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96)
GPT_SMALL = dict(vocab_size=256, n_embd=64, n_layer=3, n_head=4, n_positions=40)
# model_type, fields that differ from SMALL (None: use GPT_SMALL-style names given in full)
CASES = {
    "llama-gqa-bias-headdim": ("llama", dict(num_key_value_heads=2, head_dim=24, attention_bias=True, mlp_bias=True)),
    "llama-tied-mqa": ("llama", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "mistral": ("mistral", dict(num_key_value_heads=2, sliding_window=64)),
    "qwen2": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen3": ("qwen3", dict(num_key_value_heads=2, head_dim=32, attention_bias=True)),
    "phi3": ("phi3", dict(num_key_value_heads=2, pad_token_id=0)),
    "gemma": ("gemma", dict(num_key_value_heads=1, head_dim=32)),
    "gemma2": ("gemma2", dict(num_key_value_heads=2, head_dim=16, sliding_window=64)),
    "gemma3_text": ("gemma3_text", dict(num_key_value_heads=2, head_dim=16, sliding_window=64)),
    "olmo2": ("olmo2", dict(num_key_value_heads=2, pad_token_id=0)),
    "starcoder2": ("starcoder2", dict(num_key_value_heads=2, bos_token_id=0, eos_token_id=0)),
    "phi-qk-layernorm": ("phi", dict(num_key_value_heads=2, qk_layernorm=True, bos_token_id=0, eos_token_id=0)),
    "gpt_neox": ("gpt_neox", dict(bos_token_id=0, eos_token_id=0)),
    "falcon-7b-style": ("falcon", dict(bos_token_id=0, eos_token_id=0)),  # multi-query, parallel, 1 norm
    "falcon-40b-style": ("falcon", dict(new_decoder_architecture=True, num_kv_heads=2, bias=True,
                                        ffn_hidden_size=80, bos_token_id=0, eos_token_id=0)),
    "falcon-sequential": ("falcon", dict(multi_query=False, parallel_attn=False, bias=True,
                                         bos_token_id=0, eos_token_id=0)),
    "opt": ("opt", dict(ffn_dim=96, max_position_embeddings=40, word_embed_proj_dim=64, pad_token_id=1,
                        bos_token_id=0, eos_token_id=0)),
    "gpt2-untied": ("gpt2", dict(GPT_SMALL, n_inner=100, tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)),
    "gpt_bigcode": ("gpt_bigcode", dict(GPT_SMALL, bos_token_id=0, eos_token_id=0)),
    "gptj": ("gptj", dict(GPT_SMALL, rotary_dim=8, bos_token_id=0, eos_token_id=0)),
    "bert": ("bert", dict(max_position_embeddings=40, type_vocab_size=2)),
    # mixtures of experts
    "mixtral": ("mixtral", dict(num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": ("qwen2_moe", dict(num_key_value_heads=2, num_experts=6, num_experts_per_tok=2,
                                    moe_intermediate_size=40, shared_expert_intermediate_size=72,
                                    decoder_sparse_step=1, mlp_only_layers=[1])),
    "qwen3_moe": ("qwen3_moe", dict(num_key_value_heads=2, head_dim=24, num_experts=8, num_experts_per_tok=3,
                                    moe_intermediate_size=32, decoder_sparse_step=2)),
    "olmoe": ("olmoe", dict(num_key_value_heads=2, num_experts=5, num_experts_per_tok=2, pad_token_id=0)),
}
MOE = {"mixtral", "qwen2_moe", "qwen3_moe", "olmoe"}


def make_config(key):
    model_type, fields = CASES[key]
    base = {} if "n_embd" in fields else dict(SMALL)
    return AutoConfig.for_model(model_type, **{**base, **fields})


def build(cfg, device="meta"):
    with torch.device(device):
        if cfg.model_type == "bert":
            return AutoModel.from_config(cfg)
        return AutoModelForCausalLM.from_config(cfg)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied tensors once


def test_at_least_ten_families_two_of_them_moe_have_formulas():
    families = {model_type for model_type, _ in CASES.values()}
    assert families <= set(FAMILIES)
    assert len(families) >= 10 and len(families & MOE) >= 2


@pytest.mark.parametrize("key", list(CASES))
def test_parameters_match_transformers_exactly(key):
    cfg = make_config(key)
    spec = ModelSpec.from_config(cfg)
    assert not spec.counted_on_meta, f"{key} should use its formula"
    assert spec.n_params == count(build(cfg)), spec.param_breakdown()
    assert sum(spec.param_breakdown().values()) == spec.n_params


@pytest.mark.parametrize("key", [k for k in CASES if k != "bert"])
def test_kv_cache_bytes_match_a_real_forward(key):
    cfg = make_config(key)
    spec = ModelSpec.from_config(cfg)
    torch.manual_seed(0)
    model = build(cfg, "cpu").eval()
    batch, seq = 2, 7
    with torch.inference_mode():
        out = model(torch.randint(3, 200, (batch, seq)), use_cache=True)
    expected = spec.kv_cache_bytes(batch, seq, "fp32")
    if cfg.model_type == "falcon" and cfg.new_decoder_architecture:
        # transformers' Falcon-40B path broadcasts each KV head to its query heads *before* caching;
        # the architecture (and vLLM's cache) needs only num_kv_heads, which is what the spec counts.
        expected *= spec.num_heads // spec.num_kv_heads
    assert kv_cache_nbytes(out) == expected


@pytest.mark.parametrize("key", sorted(MOE))
def test_moe_active_parameters_are_the_total_less_the_unpicked_experts(key):
    cfg = make_config(key)
    spec = ModelSpec.from_config(cfg)
    model = build(cfg)
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert spec.expert_params == experts > 0
    e, k = spec.num_experts, spec.experts_per_token
    assert spec.active_params == spec.n_params - experts // e * (e - k)
    # Weight memory is the total; FLOPs and a batch-1 decode step use the active experts only.
    assert spec.weight_bytes("bf16") == 2 * spec.n_params
    assert spec.flops_per_token(0) == 2 * spec.active_non_embedding_params
    assert spec.decode_weight_params == spec.active_non_embedding_params + spec.vocab_size * spec.hidden_size
    # A large batch touches (nearly) every expert.
    assert spec.decode_weight_params_at(1) == pytest.approx(spec.decode_weight_params)
    every = spec.decode_weight_params + experts // e * (e - k)
    assert spec.decode_weight_params_at(4096) == pytest.approx(every)
    assert spec.decode_weight_params < spec.decode_weight_params_at(4) < every


def test_qwen2_moe_layer_pattern_follows_sparse_step_and_mlp_only_layers():
    assert ModelSpec.from_config(make_config("qwen2_moe")).moe_layers == 2  # layer 1 dense
    assert ModelSpec.from_config(make_config("qwen3_moe")).moe_layers == 1  # step 2: layer index 1 only


@pytest.mark.parametrize("key", ["llama-tied-mqa", "qwen2", "gemma", "falcon-7b-style", "opt", "gpt2-untied",
                                 "gpt_bigcode", "starcoder2", "mixtral", "qwen2_moe"])
def test_a_raw_config_dict_reads_like_the_config_object(key):
    """config.json as pasted: only the fields written, the family's defaults for the rest."""
    model_type, fields = CASES[key]
    raw = {"model_type": model_type, **({} if "n_embd" in fields else SMALL), **fields}
    assert ModelSpec.from_config(raw) == ModelSpec.from_config(make_config(key))


# Full-size configurations (values from each model's config.json), parameters on the meta device.
REAL = {
    "Mixtral-8x7B": (dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
                          num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
                          num_local_experts=8, num_experts_per_tok=2), 46_702_792_704,
                     46_702_792_704 - 32 * 6 * 3 * 4096 * 14336),  # "12.9B active"
    "Qwen1.5-MoE-A2.7B": (dict(model_type="qwen2_moe", vocab_size=151936, hidden_size=2048, num_hidden_layers=24,
                               num_attention_heads=16, num_key_value_heads=16, intermediate_size=5632,
                               moe_intermediate_size=1408, shared_expert_intermediate_size=5632, num_experts=60,
                               num_experts_per_tok=4), 14_315_784_192,
                          14_315_784_192 - 24 * 56 * 3 * 2048 * 1408),  # "A2.7B": 2.69B active
    "Falcon-7B": (dict(model_type="falcon", vocab_size=65024, hidden_size=4544, num_hidden_layers=32,
                       num_attention_heads=71, multi_query=True, parallel_attn=True, bias=False),
                  6_921_720_704, None),
    "Pythia-1B": (dict(model_type="gpt_neox", vocab_size=50304, hidden_size=2048, num_hidden_layers=16,
                       num_attention_heads=8, intermediate_size=8192), 1_011_781_632, None),
}


@pytest.mark.parametrize("name", list(REAL))
def test_full_size_models_match_their_model_cards(name):
    raw, total, active = REAL[name]
    spec = ModelSpec.from_config(raw, name=name)
    cfg = dict(raw)
    hf = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    assert spec.n_params == count(build(hf)) == total
    if active is not None:
        assert spec.active_params == active
        assert "active params" in spec.summary()


def test_a_family_without_formula_is_counted_on_the_meta_device():
    """DeepSeek-V3 (latent attention, shared + routed experts): no formula, so count on meta."""
    cfg = AutoConfig.for_model(
        "deepseek_v3", vocab_size=256, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=96, moe_intermediate_size=24, n_routed_experts=8,
        num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32, kv_lora_rank=16,
        qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_group=2, topk_group=1,
    )
    assert "deepseek_v3" not in FAMILIES
    spec = ModelSpec.from_config(cfg, name="tiny-deepseek")
    model = build(cfg)
    assert spec.counted_on_meta and "counted on the meta device" in spec.summary()
    assert spec.n_params == count(model)
    experts = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    assert spec.expert_params == experts > 0 and spec.moe_layers == 2
    assert (spec.num_experts, spec.experts_per_token) == (8, 2)
    assert spec.active_params == spec.n_params - experts // 8 * 6
    assert spec.param_breakdown()["embeddings"] == 256 * 64


def test_a_model_type_transformers_does_not_know_is_refused():
    with pytest.raises(ValueError, match="model_type='no-such-model'.*unknown to transformers"):
        ModelSpec.from_config(dict(SMALL, model_type="no-such-model"))
    with pytest.raises(ValueError, match="model_type='t5'.*encoder-decoder"):
        ModelSpec.from_config(dict(model_type="t5", vocab_size=100, d_model=32, num_layers=2, num_heads=4))


def test_an_encoder_without_formula_is_counted_as_an_encoder():
    """RoBERTa has no formula here; like BERT it is an encoder: base model, no head, no KV cache."""
    cfg = AutoConfig.for_model("roberta", **SMALL)
    spec = ModelSpec.from_config(cfg)
    assert spec.counted_on_meta and not spec.decoder and not spec.lm_head
    with torch.device("meta"):
        assert spec.n_params == count(AutoModel.from_config(cfg))
    with pytest.raises(ValueError, match="encoder"):
        spec.kv_cache_bytes_per_token()
