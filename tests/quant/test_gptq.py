"""GPTQ: the algorithm on one layer, and gptq_quantize_ on a small random Llama against round-to-nearest."""
import pytest
import torch
from torch import nn

from tutx.quant import Int4WeightOnly, Int4WeightOnlyLinear, Int8WeightOnly, quantize_
from tutx.quant.gptq import HessianAccumulator, _call_groups, gptq_quantize_, gptq_quantize_weight
from _tiny import tiny_llama


@pytest.fixture(autouse=True)
def reference_path(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # model forwards through the PyTorch reference: fast


def _correlated_inputs(t, k, seed, mix_seed=0):
    """Samples (``seed``) of one fixed distribution (``mix_seed``): correlated inputs of uneven scale."""
    mix = torch.randn(k, k, generator=torch.Generator().manual_seed(mix_seed)) / k**0.5
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(t, k, generator=g) @ mix) * torch.linspace(0.1, 3, k)  # [T, K]


def _layer_error(codes, scale, zero, w, x, group):
    lin = nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data = w
    mod = Int4WeightOnlyLinear.from_codes(lin, Int4WeightOnly(group), codes, scale, zero)
    return (x @ mod.dequantize_weight().T - x @ w.T).pow(2).mean().item()


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_beats_round_to_nearest_on_a_layer(act_order):
    k, n, group = 128, 32, 32
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(0)) * 0.05
    acc = HessianAccumulator(k)
    acc.update(_correlated_inputs(1024, k, seed=1))
    codes, scale, zero = gptq_quantize_weight(w, acc.hessian(), group, act_order=act_order)
    assert codes.shape == (n, k) and codes.dtype == torch.uint8 and int(codes.max()) <= 15
    assert scale.shape == zero.shape == (n, k // group)
    x_test = _correlated_inputs(256, k, seed=2)  # fresh samples of the calibration distribution
    lin = nn.Linear(k, n, bias=False)
    lin.weight.data = w
    rtn = Int4WeightOnlyLinear.from_linear(lin, Int4WeightOnly(group))
    rtn_err = (x_test @ rtn.dequantize_weight().T - x_test @ w.T).pow(2).mean().item()
    assert _layer_error(codes, scale, zero, w, x_test, group) < 0.85 * rtn_err


def test_with_an_identity_hessian_gptq_is_round_to_nearest():
    """Uncorrelated inputs leave nothing to compensate: every column is rounded on its own."""
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(3))
    codes, scale, zero = gptq_quantize_weight(w, torch.eye(64) * 2, group_size=32, damp=1e-6)
    lin = nn.Linear(64, 16, bias=False)
    lin.weight.data = w
    rtn = Int4WeightOnlyLinear.from_linear(lin, Int4WeightOnly(32))
    assert torch.equal(scale, rtn.weight_scale) and torch.equal(zero.to(torch.uint8), rtn.weight_zero)
    assert torch.equal(Int4WeightOnlyLinear.from_codes(lin, Int4WeightOnly(32), codes, scale, zero).weight_packed,
                       rtn.weight_packed)


def test_dead_inputs_get_zero_weights():
    x = _correlated_inputs(256, 64, seed=4)
    x[:, 5] = 0.0
    acc = HessianAccumulator(64)
    acc.update(x)
    w = torch.randn(8, 64)
    codes, scale, zero = gptq_quantize_weight(w, acc.hessian(), group_size=32)
    deq = (codes[:, 5].float() - zero[:, 0].float()) * scale[:, 0]
    assert torch.equal(deq, torch.zeros(8))



def _tokens(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 96, (4, 32), generator=g) for _ in range(n)]


@torch.no_grad()
def test_gptq_model_output_error_below_rtn(capsys):
    calib, (held_out,) = _tokens(3, seed=1), _tokens(1, seed=2)
    ref = tiny_llama()(held_out).logits
    gptq = gptq_quantize_(tiny_llama(), calib, Int4WeightOnly(group_size=32), act_order=True)
    rtn = quantize_(tiny_llama(), Int4WeightOnly(group_size=32))
    err_gptq = (gptq(held_out).logits - ref).pow(2).mean()
    err_rtn = (rtn(held_out).logits - ref).pow(2).mean()
    assert err_gptq < 0.8 * err_rtn
    assert isinstance(gptq.model.layers[1].mlp.down_proj, Int4WeightOnlyLinear)
    assert isinstance(gptq.lm_head, nn.Linear) and not gptq.training
    assert "GPTQ" in capsys.readouterr().err  # the per-layer progress bar


def test_layers_sharing_an_input_are_calibrated_together():
    model = tiny_llama()
    targets = {f: m for f, m in model.named_modules() if isinstance(m, nn.Linear) and f != "lm_head"}
    groups = _call_groups(model, targets, _tokens(1, seed=3)[0])
    assert groups[:4] == [["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                           "model.layers.0.self_attn.v_proj"], ["model.layers.0.self_attn.o_proj"],
                          ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"],
                          ["model.layers.0.mlp.down_proj"]]
    assert len(groups) == 8


def test_gptq_errors():
    calib = _tokens(1, seed=4)
    with pytest.raises(ValueError, match="calibration_batches: empty"):
        gptq_quantize_(tiny_llama(), [], Int4WeightOnly(32))
    with pytest.raises(TypeError, match="config: GPTQ produces Int4WeightOnly layers, got Int8WeightOnly"):
        gptq_quantize_(tiny_llama(), calib, Int8WeightOnly())
    with pytest.raises(ValueError, match="in_features: 64 of 'model.layers.0.self_attn.q_proj' is not divisible "
                                         "by group_size=128"):
        gptq_quantize_(tiny_llama(), calib, Int4WeightOnly(128))
    with pytest.raises(ValueError, match="model: already quantized"):
        gptq_quantize_(quantize_(tiny_llama(), Int8WeightOnly()), calib, Int4WeightOnly(32))
    model = tiny_llama()
    with torch.no_grad():
        model.model.embed_tokens.weight[7] = float("nan")
    with pytest.raises(ValueError, match="calibration activations: contains NaN or Inf"):
        gptq_quantize_(model, [torch.full((1, 4), 7)], Int4WeightOnly(32), progress=False)
    with pytest.raises(ValueError, match=r"hessian: expected shape \(64, 64\)"):
        gptq_quantize_weight(torch.randn(4, 64), torch.eye(32))
    with pytest.raises(ValueError, match="in_features: 48 is not divisible by group_size=32"):
        gptq_quantize_weight(torch.randn(4, 48), torch.eye(48), group_size=32)
    with pytest.raises(ValueError, match="damp: expected a fraction"):
        gptq_quantize_weight(torch.randn(4, 64), torch.eye(64), group_size=32, damp=2.0)
    with pytest.raises(ValueError, match="calibration_batches: the layer saw no inputs"):
        HessianAccumulator(8).hessian()


def test_grouping_holds_on_to_inputs_so_a_reused_address_cannot_join_layers():
    """A freed input's id()/data_ptr() can be reused by the next layer's input; grouping by the
    tensor itself cannot be fooled (the clean-clone CI once grouped down_proj with q_proj)."""
    model = tiny_llama()
    targets = {f: m for f, m in model.named_modules() if isinstance(m, nn.Linear) and f != "lm_head"}
    for seed in range(5):
        groups = _call_groups(model, targets, _tokens(1, seed=seed)[0])
        assert all(len({targets[f].in_features for f in g}) == 1 for g in groups), groups
        assert len(groups) == 8
