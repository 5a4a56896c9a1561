"""``quantize_`` with a ``{fqn: config}`` dict, and the float64 path of the quantized modules."""
import copy

import pytest
import torch
from torch import nn

from tutx.quant import (Int4WeightOnly, Int4WeightOnlyLinear, Int8DynamicActivationInt8Weight, Int8WeightOnly,
                        Int8WeightOnlyLinear, quantize_)
from _tiny import tiny_llama


@pytest.fixture(autouse=True)
def fast_cpu(monkeypatch, one_thread):
    monkeypatch.setenv("TRITON_INTERPRET", "0")


def test_a_dict_gives_each_layer_its_own_config():
    model = tiny_llama()
    configs = {"model.layers.0.mlp.down_proj": Int8WeightOnly(), "model.layers.1.self_attn.q_proj": Int4WeightOnly(32),
               "model.layers.1.mlp.up_proj": None}
    quantize_(model, configs)
    assert type(model.model.layers[0].mlp.down_proj) is Int8WeightOnlyLinear
    assert type(model.model.layers[1].self_attn.q_proj) is Int4WeightOnlyLinear
    assert type(model.model.layers[1].mlp.up_proj) is nn.Linear  # None: left as it is
    assert type(model.model.layers[0].mlp.up_proj) is nn.Linear  # not named: left as it is


def test_a_bad_dict_leaves_the_model_untouched():
    for configs, exc, match in [({"model.nope": Int8WeightOnly()}, ValueError, "no module 'model.nope'"),
                                ({"model.norm": Int8WeightOnly()}, ValueError, "is a LlamaRMSNorm"),
                                ({"model.layers.0.mlp.up_proj": "int8"}, TypeError, "config: expected one of"),
                                ({"model.layers.0.mlp.up_proj": Int8WeightOnly(), "": Int8WeightOnly()}, ValueError,
                                 "keys must be module names")]:
        model = tiny_llama()
        with pytest.raises(exc, match=match):
            quantize_(model, configs)
        assert all(type(m) is not Int8WeightOnlyLinear for m in model.modules())
    with pytest.raises(ValueError, match="filter_fn: not used with a"):
        quantize_(tiny_llama(), {}, filter_fn=lambda m, n: True)
    model = quantize_(tiny_llama(), {"model.layers.0.mlp.up_proj": Int8WeightOnly()})
    with pytest.raises(ValueError, match="already quantized"):
        quantize_(model, {"model.layers.0.mlp.up_proj": Int8WeightOnly()})


@pytest.mark.parametrize("config", [Int8WeightOnly(), Int4WeightOnly(32), Int8DynamicActivationInt8Weight()],
                         ids=["int8", "int4", "w8a8"])
def test_float64_inputs_use_the_exact_weights(config):
    model = quantize_(tiny_llama(), config)
    x = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f32 = model(x).logits
        f64 = copy.deepcopy(model).double()(x).logits
    assert f64.dtype == torch.float64
    torch.testing.assert_close(f64.float(), f32, rtol=1e-3, atol=1e-3)
    layer = model.model.layers[0].mlp.down_proj
    xl = torch.randn(3, layer.in_features, dtype=torch.float64)
    if isinstance(config, Int8DynamicActivationInt8Weight):
        return
    w = layer.dequantize_weight(torch.float64)  # exact: codes times float32 scales fit in float64
    torch.testing.assert_close(layer(xl), xl @ w.T, rtol=0, atol=0)
    torch.testing.assert_close(w.float(), layer.dequantize_weight(), rtol=1e-6, atol=0)
