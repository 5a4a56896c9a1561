"""The calculators agree with the papers' formulas (and with transformers to the parameter);
every family is checked in test_model_families.py."""
import pytest
import torch
from transformers import (
    AutoModelForCausalLM, BertConfig, BertModel, GPT2Config, LlamaConfig, MistralConfig,
    Qwen2Config, Qwen3Config,
)

from tutx.hardware import HARDWARE
from tutx.scaling import (
    ModelSpec, cost_per_million_tokens, decode_ceiling, dtype_bytes, memory_bound_batch,
    memory_bound_tokens_per_s,
)

# Real configurations, values from each model's config.json.
GPT2 = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12)
BERT = BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2)
LLAMA2_7B = LlamaConfig(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=32, intermediate_size=11008, tie_word_embeddings=False)
LLAMA3_8B = LlamaConfig(vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, intermediate_size=14336, rope_theta=500000.0,
                        max_position_embeddings=8192, tie_word_embeddings=False)
MISTRAL_7B = MistralConfig(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, intermediate_size=14336, sliding_window=4096)
TINY_TIED = LlamaConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=176, tie_word_embeddings=True)
# Variants that exercise each flag.
TINY_VARIANTS = {
    "llama-bias-headdim": LlamaConfig(vocab_size=500, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=1, head_dim=24, intermediate_size=100,
                                      attention_bias=True, mlp_bias=True),
    "qwen2": Qwen2Config(vocab_size=512, hidden_size=96, num_hidden_layers=2, num_attention_heads=6,
                         num_key_value_heads=2, intermediate_size=160, tie_word_embeddings=True),
    "qwen3": Qwen3Config(vocab_size=512, hidden_size=96, num_hidden_layers=2, num_attention_heads=6,
                         num_key_value_heads=3, head_dim=32, intermediate_size=160, attention_bias=True),
    "gpt2-untied-ninner": GPT2Config(vocab_size=300, n_positions=50, n_embd=48, n_layer=2, n_head=3,
                                     n_inner=100, tie_word_embeddings=False),
}


def meta_count(cfg) -> int:
    """Parameters of the real transformers model, built without allocating memory."""
    with torch.device("meta"):
        model = BertModel(cfg) if cfg.model_type == "bert" else AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())  # shared (tied) tensors once


@pytest.mark.parametrize(
    "cfg, expected",
    [(GPT2, 124_439_808), (BERT, 109_482_240), (LLAMA2_7B, 6_738_415_616),
     (LLAMA3_8B, 8_030_261_248), (MISTRAL_7B, 7_241_732_096), (TINY_TIED, 156_480)],
    ids=["gpt2", "bert-base", "llama-2-7b", "llama-3-8b", "mistral-7b", "tiny-tied"],
)
def test_param_count_matches_transformers_exactly(cfg, expected):
    spec = ModelSpec.from_config(cfg)
    assert spec.n_params == meta_count(cfg) == expected
    assert sum(spec.param_breakdown().values()) == spec.n_params


@pytest.mark.parametrize("key", list(TINY_VARIANTS))
def test_param_count_matches_for_every_flag(key):
    cfg = TINY_VARIANTS[key]
    assert ModelSpec.from_config(cfg).n_params == meta_count(cfg)


def test_dict_and_config_object_give_the_same_spec():
    assert ModelSpec.from_config(LLAMA3_8B.to_dict()) == ModelSpec.from_config(LLAMA3_8B)
    raw = dict(model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024)
    assert ModelSpec.from_config(raw).n_params == 124_439_808  # tied by default, like GPT2Config


def test_breakdown_and_derived_fields():
    spec = ModelSpec.from_config(LLAMA3_8B, name="Llama-3-8B")
    parts = spec.param_breakdown()
    assert parts["embeddings"] == parts["lm_head"] == 128256 * 4096
    assert (spec.num_kv_heads, spec.head_dim, spec.tie_embeddings) == (8, 128, False)
    tied = ModelSpec.from_config(TINY_TIED).param_breakdown()
    assert tied["lm_head"] == 0 and tied["embeddings"] == 1000 * 64
    bert = ModelSpec.from_config(BERT).param_breakdown()
    assert bert["pooler"] == 768 * 768 + 768 and bert["lm_head"] == 0
    assert spec.summary() == (
        "Llama-3-8B: 8.03B params, 32 layers, hidden 4096, GQA 32/8 heads (head_dim 128), "
        "SwiGLU MLP 14336, vocab 128256, untied lm_head"
    )
    assert repr(spec) == "ModelSpec('Llama-3-8B', 8.03B params, 32 layers)"
    assert "MHA 12 heads" in ModelSpec.from_config(GPT2).summary()


def test_weight_bytes_by_dtype():
    spec = ModelSpec.from_config(LLAMA3_8B)
    assert spec.weight_bytes("bf16") == 2 * 8_030_261_248
    assert spec.weight_bytes("fp32") == spec.weight_bytes("tf32") == 4 * 8_030_261_248
    assert spec.weight_bytes("int4") == spec.weight_bytes("int8") / 2 == spec.weight_bytes("fp8") / 2
    with pytest.raises(ValueError, match=r"dtype: expected one of .*fp32.*int4.*got 'fp12'"):
        spec.weight_bytes("fp12")
    with pytest.raises(TypeError, match="dtype"):
        dtype_bytes(torch.bfloat16)


def test_kv_cache_of_llama3_8b_is_128_kib_per_token():
    spec = ModelSpec.from_config(LLAMA3_8B)
    assert spec.kv_cache_bytes_per_token("bf16") == 128 * 1024
    assert spec.kv_cache_bytes(batch=1, seq_len=8192) == 2**30  # 1 GiB at 8k
    assert spec.kv_cache_bytes(4, 1000, "fp8") == 4 * 1000 * 64 * 1024
    # Without GQA (Llama-2-7B: 32 KV heads) it is 4x larger.
    assert ModelSpec.from_config(LLAMA2_7B).kv_cache_bytes_per_token() == 512 * 1024
    with pytest.raises(ValueError, match="encoder"):
        ModelSpec.from_config(BERT).kv_cache_bytes_per_token()
    with pytest.raises(ValueError, match="batch: expected an int >= 1, got 0"):
        spec.kv_cache_bytes(0, 10)


def test_training_activations_follow_korthikanti():
    spec = ModelSpec.from_config(GPT2)
    s, b, h, a, L = 1024, 8, 768, 12, 12
    assert spec.activation_bytes(b, s, "bf16") == L * s * b * h * (34 + 5 * a * s / h)
    fp32 = spec.activation_bytes(b, s, "fp32")
    assert spec.activation_bytes(b, s, "bf16") < fp32 < 2 * spec.activation_bytes(b, s, "bf16")
    assert spec.activation_bytes(2 * b, s) == 2 * spec.activation_bytes(b, s)  # linear in batch


def test_inference_activations_are_one_layer_working_set():
    spec = ModelSpec.from_config(LLAMA3_8B)
    s, b = 1, 1  # one token: the three 14336-wide MLP tensors dominate attention
    assert spec.activation_bytes(b, s, "bf16", training=False) == 2 * (2 * 4096 + 3 * 14336)
    long = spec.activation_bytes(1, 4096, training=False)
    assert long > 2 * 32 * 4096**2  # the eager s x s scores of 32 heads dominate at 4k
    assert long < spec.activation_bytes(1, 4096, training=True) / 10


def test_flops_per_token_follows_kaplan():
    spec = ModelSpec.from_config(GPT2)
    n = spec.non_embedding_params
    assert n == 124_439_808 - (50257 + 1024) * 768
    assert spec.flops_per_token(1024) == 2 * n + 2 * 12 * 1024 * 768
    assert spec.flops_per_token(1024, training=True) == 3 * spec.flops_per_token(1024)
    assert spec.training_flops(1e9, 1024) == pytest.approx(6 * n * 1e9, rel=0.15)
    bert = ModelSpec.from_config(BERT)  # bidirectional: attends to all positions
    assert bert.flops_per_token(512) - bert.flops_per_token(0) == 4 * 12 * 512 * 768


def test_decode_reads_every_weight_but_the_input_tables():
    llama = ModelSpec.from_config(LLAMA3_8B)
    assert llama.decode_weight_params == 8_030_261_248 - 128256 * 4096
    tied = ModelSpec.from_config(TINY_TIED)  # the tied matrix is read whole, as the lm_head
    assert tied.decode_weight_params == tied.n_params
    gpt2 = ModelSpec.from_config(GPT2)  # only the position table is skipped
    assert gpt2.decode_weight_params == 124_439_808 - 1024 * 768
    step = llama.decode_bytes_per_step("bf16", context_len=1000, batch=4)
    assert step == 2 * llama.decode_weight_params + 4 * 1000 * 128 * 1024
    assert llama.decode_bytes_per_token("bf16", 1000, 4) == step / 4
    assert llama.decode_bytes_per_step("int4", 1000, 4, kv_dtype="bf16") == (
        0.5 * llama.decode_weight_params + 4 * 1000 * 128 * 1024
    )
    assert llama.decode_intensity("bf16", batch=1) == pytest.approx(1.0)  # 2 FLOP per 2-byte weight


def test_decode_ceiling_of_llama31_8b_on_h100_is_about_223_tokens_per_s():
    spec = ModelSpec.from_config(LLAMA3_8B)  # Llama-3.1-8B has the same shapes
    tps = decode_ceiling(spec, "H100-SXM", "bf16", batch=1)
    assert tps == pytest.approx(223, rel=0.03)
    assert decode_ceiling(spec, HARDWARE["H100-SXM"], batch=8) == pytest.approx(8 * tps)
    assert decode_ceiling(spec, "h100-sxm", context_len=8192) < tps  # KV reads add bytes
    huge = decode_ceiling(spec, "H100-SXM", batch=100_000)  # compute-bound: peak / FLOPs
    assert huge == pytest.approx(989.4e12 / spec.decode_flops_per_token(0))
    assert decode_ceiling(spec, "H100-SXM", "int4", compute_dtype="bf16") == pytest.approx(4 * tps, rel=1e-3)
    with pytest.raises(ValueError, match=r"dtype='int4'.*H100-SXM"):
        decode_ceiling(spec, "H100-SXM", "int4")
    with pytest.raises(ValueError, match="B200"):
        decode_ceiling(spec, "B200")
    with pytest.raises(ValueError, match="batch: expected an int >= 1, got 0"):
        decode_ceiling(spec, "H100-SXM", batch=0)
    with pytest.raises(TypeError, match="spec"):
        decode_ceiling(LLAMA3_8B, "H100-SXM")


def test_memory_bound_batch_is_the_first_batch_past_the_ridge():
    spec = ModelSpec.from_config(LLAMA3_8B)
    h100 = HARDWARE["H100-SXM"]
    for ctx in (0, 128):
        b = memory_bound_batch(spec, h100, "bf16", ctx)
        assert spec.decode_intensity("bf16", b, ctx) >= h100.ridge_point("bf16")
        assert spec.decode_intensity("bf16", b - 1, ctx) < h100.ridge_point("bf16")
    assert memory_bound_batch(spec, h100) == 296
    with pytest.raises(ValueError, match="memory-bound at every batch"):
        memory_bound_batch(spec, h100, "bf16", context_len=4096)


def test_cost_per_million_tokens():
    assert cost_per_million_tokens(1000, 3.6) == pytest.approx(1.0)
    assert cost_per_million_tokens(223, 0) == 0
    assert memory_bound_tokens_per_s(1e9, 3e12) == 3000
    with pytest.raises(ValueError, match="tokens_per_s: expected a number > 0, got 0"):
        cost_per_million_tokens(0, 2.0)
    with pytest.raises(ValueError, match="dollars_per_hour: expected a number >= 0, got -1"):
        cost_per_million_tokens(100, -1)
    with pytest.raises(ValueError, match="bandwidth_bytes_per_s"):
        memory_bound_tokens_per_s(1e9, 0)


def _llama(**changes):
    cfg = dict(model_type="llama", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
               num_attention_heads=32, intermediate_size=11008)
    cfg.update(changes)
    return {k: v for k, v in cfg.items() if v is not ...}


@pytest.mark.parametrize(
    "cfg, match",
    [
        (_llama(num_hidden_layers=...), "missing the required field 'num_hidden_layers'"),
        (_llama(model_type=...), "'model_type'"),
        (_llama(model_type="t5"), r"model_type='t5'.*encoder-decoder"),
        (_llama(hidden_size=0), "hidden_size: expected an int >= 1, got 0"),
        (_llama(intermediate_size=-5), "intermediate_size: expected an int >= 1, got -5"),
        (_llama(num_key_value_heads=5), r"num_kv_heads=5.*num_heads=32"),
        (_llama(hidden_size=4000, num_attention_heads=48), r"hidden_size=4000.*multiple"),
        ({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257},
         "'n_positions'"),
    ],
)
def test_bad_configs_name_the_field(cfg, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec.from_config(cfg)


def test_config_must_be_a_config_or_dict():
    with pytest.raises(TypeError, match="config"):
        ModelSpec.from_config(["llama"])
    with pytest.raises(TypeError, match=r"vocab_size: expected an int, got 3.5"):
        ModelSpec.from_config(_llama(vocab_size=3.5))
    with pytest.raises(TypeError, match="training: expected a bool"):
        ModelSpec.from_config(GPT2).flops_per_token(10, training="yes")


MIXTRAL = dict(model_type="mixtral", vocab_size=32000, hidden_size=4096, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, intermediate_size=14336,
               num_local_experts=8, num_experts_per_tok=2)


def test_moe_memory_holds_every_expert_but_decode_reads_the_routed_ones():
    spec = ModelSpec.from_config(MIXTRAL, name="Mixtral-8x7B")
    per_expert = 3 * 4096 * 14336
    assert spec.n_params - spec.active_params == 32 * 6 * per_expert
    assert spec.weight_bytes("bf16") == 2 * spec.n_params  # 93 GB: every expert is resident
    # batch 1: a step reads the two routed experts of each layer, so the ceiling follows ~12.9B
    dense_like = ModelSpec.from_config(LLAMA3_8B)
    one = decode_ceiling(spec, "H100-SXM", "bf16", batch=1)
    assert one == pytest.approx(3.35e12 / (2 * spec.decode_weight_params))
    assert one < decode_ceiling(dense_like, "H100-SXM", "bf16", batch=1)
    # batch 64 touches nearly all 8 experts: bytes per step approach the total weights
    step = spec.decode_bytes_per_step("bf16", batch=64)
    assert 2 * (spec.decode_weight_params + 32 * 5.99 * per_expert) < step <= 2 * (
        spec.decode_weight_params + 32 * 6 * per_expert)
    b = memory_bound_batch(spec, "H100-SXM")
    assert spec.decode_intensity("bf16", b) >= HARDWARE["H100-SXM"].ridge_point("bf16")
    assert spec.decode_intensity("bf16", b - 1) < HARDWARE["H100-SXM"].ridge_point("bf16")
    assert spec.flops_per_token(0) == 2 * spec.active_non_embedding_params
    assert "MoE 8 experts, 2 active (12.88B active params)" in spec.summary()
