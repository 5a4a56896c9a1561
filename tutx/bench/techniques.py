"""The course outline's optimisation table, measured row by row on the tiny LM.

Each :class:`Technique` builds a variant of the model (quantized, pruned, with another attention
or another number of KV heads) and names what it is compared against (its ``reference``: the fp32
baseline unless said otherwise), the outline's claim, and a published number with its source.
:func:`tutx.bench.technique_table.measure_techniques` measures all of them in one process, interleaved,
and :func:`tutx.bench.technique_table.explain` writes the sentence on why our number differs.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass(frozen=True)
class Technique:
    """One row: how to build the variant, what it is compared against, and what others claimed."""

    name: str
    build: Callable  # build(baseline_model, context) -> a new model (never the baseline itself)
    kind: str  # "quant", "prune", "attention", "kv_heads", "combo": picks the explanation
    claimed: str = "—"  # the course outline's claim (quoted), or "—" where its table has none
    published: str = "—"  # a published measurement, with where it was measured
    cite: str = ""  # bibliography key of ``published``
    reference: str = "baseline"  # the variant this row's speed-up and memory are measured against
    options: dict = field(default_factory=dict)


def _int8(model, ctx):
    from tutx.quant import Int8WeightOnly, quantize_

    return quantize_(copy.deepcopy(model), Int8WeightOnly())


def _int4_rtn(model, ctx):
    from tutx.quant import Int4WeightOnly, quantize_

    return quantize_(copy.deepcopy(model), Int4WeightOnly(group_size=128))


def _int4_gptq(model, ctx):
    from tutx.quant import Int4WeightOnly, gptq_quantize_

    # float64 calibration: every CPU computes the same activations, so GPTQ makes the same choices
    return gptq_quantize_(copy.deepcopy(model).double(), ctx["calibration"], Int4WeightOnly(group_size=128),
                          progress=False).float()


def _heads(model, ctx, fraction: float = 0.3):
    from tutx.compress import head_importance, heads_to_prune, prune_heads_

    if "head_scores" not in ctx:  # computed once, shared by the combination row
        ctx["head_scores"] = head_importance(model, ctx["calibration"])
    return prune_heads_(copy.deepcopy(model), heads_to_prune(ctx["head_scores"], fraction))


def _ffn(model, ctx, fraction: float = 0.3):
    from tutx.compress import prune_ffn_

    return prune_ffn_(copy.deepcopy(model), fraction, batches=ctx["calibration"])


def _combo(model, ctx):
    from tutx.quant import Int8WeightOnly, quantize_

    return quantize_(_ffn(_heads(model, ctx), ctx), Int8WeightOnly())


def _eager(model, ctx):
    m = copy.deepcopy(model)
    m.set_attn_implementation("eager")  # scores materialised: softmax(QK^T) V in three kernels
    return m


def _same(model, ctx):
    return copy.deepcopy(model)


def set_kv_heads_(model, new_kv_heads: int):
    """Give every attention layer of a HF Llama ``new_kv_heads`` KV heads in place (``pool_kv_heads``:
    mean-pooled groups for fewer heads — MQA, not uptrained; repeated heads for more — MHA, exact)."""
    from tutx.attention import pool_kv_heads

    cfg = model.config
    old = cfg.num_key_value_heads
    for layer in model.model.layers:
        attn = layer.self_attn
        for name in ("k_proj", "v_proj"):
            lin = getattr(attn, name)
            w = pool_kv_heads(lin.weight.data, old, new_kv_heads)  # [new * D, hidden]
            new = torch.nn.Linear(lin.in_features, w.shape[0], bias=False, dtype=w.dtype, device=w.device)
            new.weight.data.copy_(w)
            setattr(attn, name, new)
        attn.num_key_value_groups = cfg.num_attention_heads // new_kv_heads
    cfg.num_key_value_heads = new_kv_heads
    return model


def _kv(n: int):
    return lambda model, ctx: set_kv_heads_(copy.deepcopy(model), n)


def default_techniques(kv_heads: int = 2, heads: int = 8) -> list[Technique]:
    """The rows of the outline's table that run on the tiny LM (8 query heads, 2 KV heads)."""
    return [
        Technique("INT8 weight-only", _int8, "quant", claimed="INT8: 2–3× faster, <1% quality",
                  published="gpt-fast: 1.48× decode tok/s (Llama-2-7B, A100, batch 1)", cite="gptfast2023"),
        Technique("INT4 weight-only, RTN g128", _int4_rtn, "quant",
                  published="gpt-fast: 1.88× decode tok/s (G=32, Llama-2-7B, A100, batch 1)", cite="gptfast2023"),
        Technique("INT4 weight-only, GPTQ g128", _int4_gptq, "quant",
                  published="GPTQ paper: 3.25× (A100) / 4.5× (A6000) vs FP16, OPT-175B, 3–4 bit", cite="frantar2022gptq"),
        Technique("30% of heads pruned", _heads, "prune",
                  published="Michel et al.: 20–40% of heads removable with little loss (BERT, NMT)", cite="michel2019sixteen"),
        Technique("30% of FFN neurons pruned", _ffn, "prune"),
        Technique("heads 30% + FFN 30% + INT8", _combo, "combo"),
        Technique("fused attention (SDPA) vs naive", _same, "attention", claimed="Flash Attention: 2–10×",
                  published="FlashAttention paper: 3× end-to-end GPT-2 training (seq 1K, A100)", cite="dao2022flashattention",
                  reference="naive attention (eager)"),
        Technique(f"GQA ({kv_heads} KV heads) vs MHA ({heads})", _same, "kv_heads",
                  published="GQA paper: near-MQA speed, close to MHA quality (T5-XXL, uptrained)", cite="ainslie2023gqa",
                  reference=f"MHA ({heads} KV heads)"),
        Technique(f"MQA (1 KV head) vs GQA ({kv_heads})", _kv(1), "kv_heads",
                  published="GQA paper: much faster decoding than MHA, some quality loss (T5-XXL)", cite="ainslie2023gqa"),
    ]


def reference_builders(heads: int = 8) -> dict:
    """The variants some rows are measured against (besides the baseline)."""
    return {"naive attention (eager)": _eager, f"MHA ({heads} KV heads)": _kv(heads)}
