"""Count a model's parameters on the ``meta`` device, for architectures without a formula.

``transformers`` builds the model with shapes but no storage (a 671B model takes seconds and no
memory); the parameters are then sorted into the same parts as the formulas use. Head counts
and widths for the KV-cache and FLOP estimates come from the config's standard fields.
"""
from __future__ import annotations

import re

_EXPERT = re.compile(r"^(.*?)\.experts\.")


def _hf_config(config):
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(config, PretrainedConfig):
        return config
    config = dict(config)
    model_type = config.pop("model_type")
    try:
        return AutoConfig.for_model(model_type, **config)
    except ValueError as exc:
        raise ValueError(f"model_type={model_type!r}: unknown to transformers, so it cannot be counted "
                         f"on the meta device ({exc})") from None


def _build_on_meta(config):
    """The model on the meta device: a causal LM for a decoder; the base model (no head) for an
    encoder — a masked-LM family (BERT, RoBERTa, ...) not configured as a decoder — or where no
    causal LM exists."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    encoder = config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False)
    with torch.device("meta"):
        if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not encoder:
            return AutoModelForCausalLM.from_config(config), True
        return AutoModel.from_config(config), False


def _part(name: str, owner: str) -> str:
    if "Norm" in owner:
        return "norms"
    if _EXPERT.match(name):
        return "mlp"
    if re.search(r"attn|attention|\.q_|\.k_|\.v_|\.o_proj|query|key|value", name):
        return "attention"
    if re.search(r"mlp|feed_forward|ffn|moe|expert|intermediate|\.output\.|\.fc\d|fc_in|fc_out|dense_h_to_4h|"
                 r"dense_4h_to_h|c_fc|c_proj", name):
        return "mlp"
    return "other"


def count_on_meta(config) -> tuple[dict[str, int], int, int, bool]:
    """``(parts, expert_params, moe_layers, is_decoder)`` of the model ``config`` describes."""
    model, is_decoder = _build_on_meta(config)
    owner = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = type(module).__name__
    embedding_ids = {id(p) for m in model.modules() if type(m).__name__.endswith("Embedding")
                     or "Embedding" in type(m).__name__ for p in m.parameters(recurse=False)}
    out = model.get_output_embeddings() if is_decoder else None
    head_ids = {id(p) for p in out.parameters()} if out is not None else set()
    parts = dict.fromkeys(("embeddings", "attention", "mlp", "norms", "lm_head", "other"), 0)
    experts, moe_layers = 0, set()
    for name, p in model.named_parameters():  # shared (tied) tensors once
        if id(p) in head_ids and id(p) not in embedding_ids:
            part = "lm_head"
        elif id(p) in embedding_ids:
            part = "embeddings"
        else:
            part = _part(name, owner.get(name, ""))
        parts[part] += p.numel()
        hit = _EXPERT.match(name)
        if hit:
            experts += p.numel()
            moe_layers.add(hit.group(1))
    if not parts["other"]:
        del parts["other"]
    return parts, experts, len(moe_layers), is_decoder


def meta_fields(config) -> dict:
    """The ``ModelSpec`` fields of a config with no formula: counted parameters, config shapes."""
    hf = _hf_config(config)
    if getattr(hf, "is_encoder_decoder", False):
        raise ValueError(f"model_type={hf.model_type!r}: an encoder-decoder model; the calculators "
                         "describe one stack of layers (a decoder, or an encoder such as BERT)")
    parts, experts, moe_layers, is_decoder = count_on_meta(hf)
    text = hf.get_text_config() if hasattr(hf, "get_text_config") else hf
    h, heads = text.hidden_size, text.num_attention_heads
    n_experts = (getattr(text, "num_experts", None) or getattr(text, "num_local_experts", None)
                 or getattr(text, "n_routed_experts", None) or 0) if experts else 0
    intermediate = (getattr(text, "intermediate_size", None) or getattr(text, "ffn_dim", None)
                    or getattr(text, "moe_intermediate_size", None) or 4 * h)
    return dict(
        vocab_size=text.vocab_size, hidden_size=h, num_layers=text.num_hidden_layers, num_heads=heads,
        num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or h // heads, intermediate_size=intermediate,
        tie_embeddings=bool(getattr(text, "tie_word_embeddings", False)), lm_head=is_decoder,
        decoder=is_decoder, num_experts=n_experts,
        experts_per_token=getattr(text, "num_experts_per_tok", 0) if n_experts else 0,
        moe_layers=moe_layers if n_experts else 0,
        counted_on_meta=True, meta_counts=tuple(parts.items()), meta_expert_params=experts if n_experts else 0,
    )
