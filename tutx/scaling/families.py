"""Read a Hugging Face config into the fields of a :class:`~tutx.scaling.ModelSpec`.

Each family below is a formula: its config fields say how wide every matrix is and which
biases and norms exist, written out from the family's ``modeling_*.py`` in ``transformers``
(fused and separate projections count the same). The tests build each family on the meta
device and compare the counts to the parameter. A ``model_type`` without a formula here is
counted on the meta device instead (:mod:`tutx.scaling.meta`).
"""
from __future__ import annotations

from typing import Callable, Mapping

from tutx._validate import check_int, check_positive_int, check_str

Get = Callable[..., object]


def _config_dict(config) -> dict:
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    if not isinstance(config, Mapping):
        raise TypeError(f"config: expected a transformers config or a dict, got {type(config).__name__}")
    return dict(config)


def _getter(config: Mapping) -> Get:
    def get(key, default=None, required=False):
        value = config.get(key)
        if value is None:
            if required:
                raise ValueError(f"config is missing the required field {key!r}")
            return default
        return value

    return get


def _head_dim(hidden: int, heads: int) -> int:
    check_positive_int("hidden_size", hidden)
    check_positive_int("num_attention_heads", heads)
    if hidden % heads:
        raise ValueError(f"hidden_size={hidden}: expected a multiple of num_attention_heads={heads}")
    return hidden // heads


def _decoder(get: Get, tie_default: bool, **flags) -> dict:
    """The fields every Llama-style config spells the same way."""
    h, heads = get("hidden_size", required=True), get("num_attention_heads", required=True)
    fields = dict(
        vocab_size=get("vocab_size", required=True), hidden_size=h,
        num_layers=get("num_hidden_layers", required=True), num_heads=heads,
        num_kv_heads=get("num_key_value_heads", heads),
        head_dim=get("head_dim") or _head_dim(h, heads),
        intermediate_size=get("intermediate_size", required=True),
        tie_embeddings=bool(get("tie_word_embeddings", tie_default)),
    )
    fields.update(flags)
    return fields


def _biases(on) -> dict:
    on = bool(on)
    return dict(qkv_bias=on, out_bias=on)


def _moe(get: Get, experts_key: str, size_key: str, sparse_step: bool = False) -> dict:
    """Routed experts: how many, how many per token, how wide, and in which layers."""
    n = get(experts_key) or get("num_local_experts") or get("num_experts") or 0
    layers = get("num_hidden_layers", required=True)
    check_int("num_hidden_layers", layers, minimum=1)
    moe_layers = layers
    if sparse_step:  # Qwen-MoE: layer i is sparse if (i + 1) % step == 0 and i not in mlp_only_layers
        step, dense = get("decoder_sparse_step", 1), set(get("mlp_only_layers", []))
        moe_layers = sum(1 for i in range(layers) if i not in dense and n > 0 and (i + 1) % step == 0)
    return dict(num_experts=n, experts_per_token=get("num_experts_per_tok", required=True) if n else 0,
                moe_intermediate_size=get(size_key, required=True) if n else 0,
                moe_layers=moe_layers if n else 0)


def _llama(get):
    bias = get("attention_bias", False)
    return _decoder(get, False, **_biases(bias), mlp_bias=bool(get("mlp_bias", False)))


def _qwen2_moe(get):
    fields = _decoder(get, False, qkv_bias=bool(get("qkv_bias", True)), shared_expert_gate=True,
                      shared_expert_intermediate_size=get("shared_expert_intermediate_size", 0))
    return {**fields, **_moe(get, "num_experts", "moe_intermediate_size", sparse_step=True)}


def _qwen3_moe(get):
    fields = _decoder(get, False, **_biases(get("attention_bias", False)), qk_norm="head")
    return {**fields, **_moe(get, "num_experts", "moe_intermediate_size", sparse_step=True)}


def _gpt2_like(get, qkv_kv_heads: int | None = None, tie_default: bool = True) -> dict:
    h, heads = get("n_embd", required=True), get("n_head", required=True)
    return dict(vocab_size=get("vocab_size", required=True), hidden_size=h,
                num_layers=get("n_layer", required=True), num_heads=heads,
                num_kv_heads=qkv_kv_heads or heads, head_dim=_head_dim(h, heads),
                intermediate_size=get("n_inner") or 4 * h,
                tie_embeddings=bool(get("tie_word_embeddings", tie_default)), gated_mlp=False)


def _gpt2(get):
    return dict(**_gpt2_like(get), **_biases(True), mlp_bias=True, norm_bias=True,
                position_embeddings=get("n_positions", required=True))


def _gpt_bigcode(get):  # StarCoder 1: GPT-2 with multi-query attention
    kv = 1 if get("multi_query", True) else None
    return dict(**_gpt2_like(get, kv), **_biases(True), mlp_bias=True, norm_bias=True,
                position_embeddings=get("n_positions", required=True))


def _gptj(get):  # parallel block, one LayerNorm, no attention biases, a biased lm_head
    return dict(**_gpt2_like(get, tie_default=False), mlp_bias=True, norm_bias=True, norms_per_layer=1,
                lm_head_bias=True)


def _phi(get):  # Phi-1/1.5/2: parallel block with one LayerNorm, biases everywhere
    qk = "head" if get("qk_layernorm", False) else "none"
    return _decoder(get, False, **_biases(True), mlp_bias=True, gated_mlp=False, norm_bias=True,
                    norms_per_layer=1, lm_head_bias=True, qk_norm=qk)


def _starcoder2(get):
    bias = get("use_bias", True)
    return _decoder(get, True, **_biases(bias), mlp_bias=bool(bias), gated_mlp=False, norm_bias=True)


def _gpt_neox(get):  # Pythia: fused QKV, parallel residual with two LayerNorms
    fields = _decoder(get, False, **_biases(get("attention_bias", True)), mlp_bias=True, gated_mlp=False,
                      norm_bias=True)
    fields["num_kv_heads"] = fields["num_heads"]
    return fields


def _falcon(get):
    h, heads = get("hidden_size", required=True), get("num_attention_heads", required=True)
    new = bool(get("new_decoder_architecture", False))
    kv = get("num_kv_heads", heads) if new else 1 if get("multi_query", True) else heads
    n_ln = get("num_ln_in_parallel_attn") or (2 if new else 1)
    norms = 2 if not get("parallel_attn", True) or n_ln == 2 else 1
    bias = bool(get("bias", False))
    return dict(vocab_size=get("vocab_size", required=True), hidden_size=h,
                num_layers=get("num_hidden_layers", required=True), num_heads=heads, num_kv_heads=kv,
                head_dim=_head_dim(h, heads), intermediate_size=get("ffn_hidden_size") or 4 * h,
                tie_embeddings=bool(get("tie_word_embeddings", True)), gated_mlp=False, **_biases(bias),
                mlp_bias=bias, norm_bias=True, norms_per_layer=norms)


def _opt(get):
    h = get("hidden_size", required=True)
    if get("word_embed_proj_dim", h) != h or not get("layer_norm_elementwise_affine", True):
        return None  # projected embeddings or affine-free norms: count on the meta device
    heads, bias = get("num_attention_heads", required=True), bool(get("enable_bias", True))
    final = bool(get("do_layer_norm_before", True)) and not get("_remove_final_layer_norm", False)
    return dict(vocab_size=get("vocab_size", required=True), hidden_size=h,
                num_layers=get("num_hidden_layers", required=True), num_heads=heads, num_kv_heads=heads,
                head_dim=_head_dim(h, heads), intermediate_size=get("ffn_dim", required=True),
                tie_embeddings=bool(get("tie_word_embeddings", True)), gated_mlp=False, **_biases(bias),
                mlp_bias=bias, norm_bias=True, final_norm=final,
                position_embeddings=get("max_position_embeddings", required=True) + 2)  # OPT's offset of 2


def _bert(get):
    h, heads = get("hidden_size", required=True), get("num_attention_heads", required=True)
    return dict(vocab_size=get("vocab_size", required=True), hidden_size=h,
                num_layers=get("num_hidden_layers", required=True), num_heads=heads, num_kv_heads=heads,
                head_dim=_head_dim(h, heads), intermediate_size=get("intermediate_size", required=True),
                gated_mlp=False, **_biases(True), mlp_bias=True, norm_bias=True, final_norm=False,
                position_embeddings=get("max_position_embeddings", required=True),
                token_type_embeddings=get("type_vocab_size", required=True),
                embedding_norm=True, lm_head=False, pooler=True, decoder=False)


#: model_type -> reader of its config. Families not listed are counted on the meta device.
FAMILIES: dict[str, Callable[[Get], dict | None]] = {
    "llama": _llama,
    "mistral": lambda get: _decoder(get, False),
    "qwen2": lambda get: _decoder(get, False, qkv_bias=True),  # bias on q, k, v only
    "qwen3": lambda get: _decoder(get, False, **_biases(get("attention_bias", False)), qk_norm="head"),
    "phi3": lambda get: _decoder(get, False),  # fused qkv_proj and gate_up_proj
    "gemma": lambda get: _decoder(get, True, **_biases(get("attention_bias", False))),
    "gemma2": lambda get: _decoder(get, True, **_biases(get("attention_bias", False)), norms_per_layer=4),
    "gemma3_text": lambda get: _decoder(get, True, **_biases(get("attention_bias", False)), norms_per_layer=4,
                                        qk_norm="head"),
    "olmo2": lambda get: _decoder(get, False, **_biases(get("attention_bias", False)), qk_norm="full"),
    "starcoder2": _starcoder2,
    "phi": _phi,
    "gpt_neox": _gpt_neox,
    "falcon": _falcon,
    "opt": _opt,
    "gpt2": _gpt2,
    "gpt_bigcode": _gpt_bigcode,
    "gptj": _gptj,
    "bert": _bert,
    # mixtures of experts
    "mixtral": lambda get: {**_decoder(get, False), **_moe(get, "num_local_experts", "intermediate_size")},
    "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe,
    "olmoe": lambda get: {**_decoder(get, False, **_biases(get("attention_bias", False)), qk_norm="full"),
                          **_moe(get, "num_experts", "intermediate_size")},
}


def spec_fields(config, name: str | None = None) -> dict:
    """The keyword arguments of ``ModelSpec`` for ``config`` (a transformers config or a dict)."""
    original = config
    config = _config_dict(config)
    get = _getter(config)
    family = check_str("model_type", get("model_type", required=True))
    if name is not None:
        check_str("name", name)
    reader = FAMILIES.get(family)
    fields = reader(get) if reader is not None else None
    if fields is None:
        from tutx.scaling.meta import meta_fields

        fields = meta_fields(original)
    fields.update(name=name or family, family=family)
    return fields
