"""quantize_ on small random Hugging Face models (Llama with GQA and tied embeddings, BERT), save/load."""
import json

import pytest
import torch
import transformers
from torch import nn

from tutx.quant import (
    Int4WeightOnly,
    Int4WeightOnlyLinear,
    Int8DynamicActivationInt8Weight,
    Int8WeightOnly,
    Int8WeightOnlyLinear,
    load_quantized,
    model_weight_bytes,
    quantize_,
    save_quantized,
)
from tutx.quant.api import apply_plan_, quantization_plan
from tutx.quant.modules import QUANTIZED_LINEARS
from _tiny import tiny_llama

CONFIGS = {"int8": Int8WeightOnly(), "int4": Int4WeightOnly(group_size=32), "w8a8": Int8DynamicActivationInt8Weight()}
LOGIT_TOL = {"int8": 0.01, "int4": 0.1, "w8a8": 0.03}  # relative L2 error of the logits


@pytest.fixture
def reference_path(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")



def _ids(seed=1):
    return torch.randint(0, 96, (2, 11), generator=torch.Generator().manual_seed(seed))


def _rel(y, ref):
    return ((y - ref).norm() / ref.norm()).item()


def _linear_names(model):
    return sorted(f for f, m in model.named_modules() if isinstance(m, nn.Linear))


@torch.no_grad()
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_quantize_llama_default_filter_and_accuracy(kind, reference_path):
    model = tiny_llama()
    ids = _ids()
    ref = model(ids).logits
    assert quantize_(model, CONFIGS[kind]) is model
    quantized = sorted(quantization_plan(model))
    assert len(quantized) == 14 and "lm_head" not in quantized  # 7 linears x 2 layers; tied head kept
    assert _linear_names(model) == ["lm_head"]
    assert _rel(model(ids).logits, ref) < LOGIT_TOL[kind]


@torch.no_grad()
def test_untied_lm_head_is_also_left_alone_and_linear_memory_shrinks(reference_path):
    model = tiny_llama(tie=False, hidden=128)
    lin_before = model_weight_bytes(model, linear_only=True) - model.lm_head.weight.numel() * 4
    quantize_(model, Int4WeightOnly(group_size=128))
    assert isinstance(model.lm_head, nn.Linear)
    lin_after = model_weight_bytes(model, linear_only=True) - model.lm_head.weight.numel() * 4
    assert lin_before / lin_after > 7.0


@torch.no_grad()
def test_quantized_llama_through_the_triton_interpreter():
    """One small model end to end with the kernels (interpreted on CPU; real kernels on CUDA)."""
    model = tiny_llama(seed=3)
    ids = _ids(2)[:1, :5]
    ref = model(ids).logits
    quantize_(model, Int4WeightOnly(group_size=64), filter_fn=lambda m, fqn: fqn.startswith("model.layers.0."))
    assert len(quantization_plan(model)) == 7
    assert _rel(model(ids).logits, ref) < LOGIT_TOL["int4"]


@torch.no_grad()
def test_bert_encoder_every_linear(reference_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=32)
    model = transformers.BertModel(cfg).eval()
    ids = _ids()[:, :8] % 64
    ref = model(ids).last_hidden_state
    quantize_(model, Int8WeightOnly())
    assert _linear_names(model) == []  # 6 per layer + pooler, all quantized (biases kept)
    assert len(quantization_plan(model)) == 13
    assert _rel(model(ids).last_hidden_state, ref) < LOGIT_TOL["int8"]


def test_custom_filter_and_mixed_precision_in_two_calls(reference_path):
    model = tiny_llama()
    quantize_(model, Int8WeightOnly(), filter_fn=lambda m, fqn: fqn.endswith("down_proj"))
    quantize_(model, Int4WeightOnly(32), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and "layers" in fqn)
    plan = quantization_plan(model)
    assert plan["model.layers.0.mlp.down_proj"] == {"kind": "int8_weight_only"}
    assert plan["model.layers.1.self_attn.q_proj"] == {"kind": "int4_weight_only", "group_size": 32}
    assert len(plan) == 14
    model(_ids())


def test_already_quantized_model_is_refused():
    model = tiny_llama()
    quantize_(model, Int8WeightOnly())
    with pytest.raises(ValueError, match="model: already quantized .*pass filter_fn"):
        quantize_(model, Int8WeightOnly())
    with pytest.raises(ValueError, match="model: 'model.layers.0.self_attn.q_proj' is already quantized"):
        quantize_(model, Int4WeightOnly(32), filter_fn=lambda m, fqn: True)


def test_unsupported_shape_names_in_features_and_leaves_the_model_untouched():
    model = tiny_llama(hidden=96)
    with pytest.raises(ValueError, match="in_features: 96 of 'model.layers.0.self_attn.q_proj' is not divisible "
                                         "by group_size=64"):
        quantize_(model, Int4WeightOnly(group_size=64))
    assert quantization_plan(model) == {}


def test_non_finite_weights_are_refused_before_any_swap():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'model.layers.1.mlp.up_proj'.*NaN or Inf"):
        quantize_(model, Int8WeightOnly())
    assert quantization_plan(model) == {}


def test_argument_errors():
    model = tiny_llama()
    with pytest.raises(TypeError, match="config: expected one of"):
        quantize_(model, "int8")
    with pytest.raises(TypeError, match="model: expected an nn.Module"):
        quantize_(torch.zeros(2), Int8WeightOnly())
    with pytest.raises(TypeError, match="filter_fn: expected a callable"):
        quantize_(model, Int8WeightOnly(), filter_fn=True)
    with pytest.raises(ValueError, match="model: is itself an nn.Linear"):
        quantize_(nn.Linear(32, 4), Int8WeightOnly(), filter_fn=lambda m, f: True)
    with pytest.raises(ValueError, match="group_size: expected one of"):
        Int4WeightOnly(group_size=100)


@torch.no_grad()
def test_safetensors_round_trip_rebuilds_the_quantized_model(tmp_path, reference_path):
    model = tiny_llama(seed=0)
    quantize_(model, Int8WeightOnly(), filter_fn=lambda m, fqn: "mlp" in fqn)
    quantize_(model, Int4WeightOnly(32), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and "self_attn" in fqn)
    path = tmp_path / "q.safetensors"
    save_quantized(model, path)
    fresh = tiny_llama(seed=123)  # different weights: everything must come from the file
    assert load_quantized(fresh, path) is fresh
    assert quantization_plan(fresh) == quantization_plan(model)
    assert isinstance(fresh.model.layers[0].self_attn.k_proj, Int4WeightOnlyLinear)
    assert isinstance(fresh.model.layers[1].mlp.up_proj, Int8WeightOnlyLinear)
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight  # tie survives
    ids = _ids()
    assert torch.equal(fresh(ids).logits, model(ids).logits)
    assert model_weight_bytes(fresh) == model_weight_bytes(model)


@torch.no_grad()
def test_state_dict_round_trip_with_plan(reference_path):
    model = tiny_llama(seed=0)
    quantize_(model, Int8DynamicActivationInt8Weight())
    plan = json.loads(json.dumps(quantization_plan(model)))  # plain JSON survives
    fresh = apply_plan_(tiny_llama(seed=5), plan)
    fresh.load_state_dict(model.state_dict())
    ids = _ids()
    assert torch.equal(fresh(ids).logits, model(ids).logits)
    assert all(isinstance(fresh.get_submodule(f), QUANTIZED_LINEARS) for f in plan)


def test_save_load_errors(tmp_path):
    from safetensors.torch import save_model

    with pytest.raises(ValueError, match="model: has no quantized layers"):
        save_quantized(tiny_llama(), tmp_path / "x.safetensors")
    save_model(nn.Linear(4, 4), str(tmp_path / "plain.safetensors"))
    with pytest.raises(ValueError, match="path: .* has no 'tutx.quant.plan' metadata"):
        load_quantized(tiny_llama(), tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="plan: model has no module 'nope'"):
        apply_plan_(tiny_llama(), {"nope": {"kind": "int8_weight_only"}})
    with pytest.raises(ValueError, match="config: expected a dict with 'kind'"):
        apply_plan_(tiny_llama(), {"lm_head": {"kind": "fp3"}})
    with pytest.raises(ValueError, match="plan: 'model.norm' is a LlamaRMSNorm"):
        apply_plan_(tiny_llama(), {"model.norm": {"kind": "int8_weight_only"}})
