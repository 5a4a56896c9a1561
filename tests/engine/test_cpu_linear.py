"""PackedLinears: linear layers through weights prepacked once for oneDNN equal the layers themselves."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tutx.engine.cpu_linear import PackedLinears, prepack_supported

onednn = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
ROWS = [1, 3, 64, 1000]


def tiny_llama(dtype=torch.float32):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval().to(dtype)


def mlp(bias: bool, dtype=torch.float32):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Linear(24, 40, bias=bias), torch.nn.GELU(),
                               torch.nn.Linear(40, 16, bias=bias)).to(dtype)


def inputs(rows: int, features: int, dtype=torch.float32):
    return torch.randn(rows, features, generator=torch.Generator().manual_seed(rows)).to(dtype)


@onednn
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("rows", ROWS)
def test_call_equals_the_module(rows, bias):
    model = mlp(bias)
    packed = PackedLinears(model)
    assert len(packed) == 2 and set(packed.packed) == {model[0], model[2]}
    x = inputs(rows, 24)
    with torch.inference_mode():
        h = packed(model[0], x)
        torch.testing.assert_close(h, model[0](x), atol=1e-5, rtol=1e-5)
        out = packed(model[2], model[1](h))
        torch.testing.assert_close(out, model(x), atol=1e-5, rtol=1e-5)
    assert h.shape == (rows, 40) and out.shape == (rows, 16)


@onednn
def test_leading_dims_and_a_strided_input():
    model = mlp(True)
    packed = PackedLinears(model, batch_hint=8)
    x = inputs(30, 24).view(5, 6, 24)
    with torch.no_grad():
        torch.testing.assert_close(packed(model[0], x), model[0](x), atol=1e-5, rtol=1e-5)
        xt = x.transpose(0, 1)  # not contiguous
        torch.testing.assert_close(packed(model[0], xt), model[0](xt), atol=1e-5, rtol=1e-5)


@onednn
@pytest.mark.parametrize("rows", ROWS)
def test_every_linear_of_a_llama(rows):
    model = tiny_llama()
    packed = PackedLinears(model)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 7 + 1 and len(packed) == len(linears)  # q k v o gate up down per layer, lm_head
    with torch.inference_mode():
        for m in linears:
            x = inputs(rows, m.in_features)
            torch.testing.assert_close(packed(m, x), m(x), atol=1e-5, rtol=1e-5)


@onednn
@pytest.mark.parametrize("rows", ROWS)
def test_fuse_and_many_equal_the_separate_outputs(rows):
    model = tiny_llama()
    packed = PackedLinears(model)
    layers = model.model.layers
    groups = [(a.q_proj, a.k_proj, a.v_proj) for a in (layer.self_attn for layer in layers)]
    groups += [(layer.mlp.gate_proj, layer.mlp.up_proj) for layer in layers]
    for group in groups:
        assert packed.fuse(group)
        assert packed.fuse(group)  # a second time: already fused
    assert len(packed.fused) == len(groups)
    with torch.inference_mode():
        for group in groups:
            x = inputs(rows, group[0].in_features)
            outs = packed.many(group, x)
            assert [o.shape for o in outs] == [(rows, m.out_features) for m in group]
            for out, m in zip(outs, group):
                torch.testing.assert_close(out, m(x), atol=1e-5, rtol=1e-5)
    assert f"{len(packed)} weights" in repr(packed) and f"{len(groups)} fused groups" in repr(packed)


@onednn
@pytest.mark.parametrize("few_rows", [True, False], ids=["linear_silu_cpu", "onednn-and-silu_mul"])
@pytest.mark.parametrize("rows", ROWS)
def test_silu_output_equals_the_mlp_before_down_proj(rows, few_rows):
    model = tiny_llama()
    packed = PackedLinears(model, few_rows=few_rows)
    mlp = model.model.layers[1].mlp
    group = (mlp.gate_proj, mlp.up_proj)
    assert packed.fuse(group)
    x = inputs(rows, mlp.gate_proj.in_features)
    with torch.inference_mode():
        torch.testing.assert_close(packed.silu_output(group, x), mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x),
                                   atol=1e-5, rtol=1e-5)
    assert (("silu", group) in packed._few) == few_rows


@onednn
def test_fuse_with_bias():
    torch.manual_seed(2)
    group = (torch.nn.Linear(24, 8), torch.nn.Linear(24, 3), torch.nn.Linear(24, 5))
    packed = PackedLinears(torch.nn.ModuleList(group))
    assert packed.fuse(group)
    x = inputs(7, 24)
    with torch.no_grad():
        for out, m in zip(packed.many(group, x), group):
            torch.testing.assert_close(out, m(x), atol=1e-5, rtol=1e-5)


@onednn
@pytest.mark.parametrize("few_rows", [True, False], ids=["linear_cpu", "onednn-only"])
def test_few_rows_go_through_linear_cpu(few_rows):
    """Up to few_rows_limit rows (every count with AVX-512) run the C kernel (its packed copy made on
    first use); more run oneDNN."""
    from tutx.kernels.cpu_build import compiler
    from tutx.kernels.linear_cpu import few_rows_limit

    if few_rows and compiler() is None:
        pytest.skip("no C compiler")
    model = tiny_llama()
    packed = PackedLinears(model, few_rows=few_rows)
    layer = model.model.layers[0]
    group = (layer.mlp.gate_proj, layer.mlp.up_proj)
    assert packed.fuse(group)
    limit = few_rows_limit(32)
    with torch.inference_mode():
        for rows in (1, 48, 300) if limit is None else (1, limit, limit + 1):
            x = inputs(rows, 32)
            torch.testing.assert_close(packed(model.lm_head, x), model.lm_head(x), atol=1e-5, rtol=1e-5)
            for out, m in zip(packed.many(group, x), group):
                torch.testing.assert_close(out, m(x), atol=1e-5, rtol=1e-5)
    assert (set(packed._few) == {model.lm_head, group}) == few_rows
    assert f"few_rows={few_rows} ({2 if few_rows else 0} packed for linear_cpu)" in repr(packed)


def test_fuse_refuses_mismatched_layers_and_many_runs_them_separately():
    torch.manual_seed(3)
    a, b, c = torch.nn.Linear(24, 8), torch.nn.Linear(16, 8), torch.nn.Linear(24, 4, bias=False)
    packed = PackedLinears(torch.nn.ModuleList([a, b, c]))
    assert packed.fuse((a, b)) is False  # input sizes differ
    assert packed.fuse((a, c)) is False  # one has a bias, the other not
    assert not packed.fused
    x = inputs(5, 24)
    with torch.no_grad():
        out_a, out_c = packed.many((a, c), x)
        torch.testing.assert_close(out_a, a(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out_c, c(x), atol=1e-5, rtol=1e-5)
    assert "0 fused groups" in repr(packed)


def test_disabled_packs_nothing_and_runs_the_modules():
    model = tiny_llama()
    packed = PackedLinears(model, enabled=False)
    assert len(packed) == 0 and not packed.packed
    attn = model.model.layers[0].self_attn
    group = (attn.q_proj, attn.k_proj, attn.v_proj)
    assert packed.fuse(group) is False and not packed.fused
    x = inputs(6, 32)
    with torch.no_grad():
        assert torch.equal(packed(attn.q_proj, x), attn.q_proj(x))
        for out, m in zip(packed.many(group, x), group):
            assert torch.equal(out, m(x))
    assert repr(packed) == "PackedLinears(0 weights prepacked for oneDNN, 0 fused groups, few_rows=True (0 packed for linear_cpu))"


@onednn
@pytest.mark.parametrize("rows", [1, 64])
def test_bf16_weights(rows):
    model = tiny_llama(torch.bfloat16)
    packed = PackedLinears(model)
    assert len(packed) == 15
    layer = model.model.layers[0]
    group = (layer.mlp.gate_proj, layer.mlp.up_proj)
    assert packed.fuse(group)
    x = inputs(rows, 32, torch.bfloat16)
    with torch.inference_mode():
        out = packed(layer.self_attn.q_proj, x)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), layer.self_attn.q_proj(x).float(), atol=2e-2, rtol=2e-2)
        for out, m in zip(packed.many(group, x), group):
            assert out.dtype == torch.bfloat16
            torch.testing.assert_close(out.float(), m(x).float(), atol=2e-2, rtol=2e-2)


def test_unsupported_weights_run_as_themselves():
    half = torch.nn.Linear(8, 4).half()
    mixed = torch.nn.Linear(8, 4)
    mixed.bias.data = mixed.bias.data.double()  # bias dtype differs from the weight's
    assert not prepack_supported(half.weight)
    assert not prepack_supported(torch.zeros(4, 8, 2))
    packed = PackedLinears(torch.nn.ModuleList([half, mixed]))
    assert len(packed) == 0
    x = inputs(3, 8, torch.float16)
    assert torch.equal(packed(half, x), half(x))
    assert prepack_supported(torch.zeros(4, 8)) == torch.backends.mkldnn.is_available()
    assert prepack_supported(torch.zeros(4, 8, dtype=torch.bfloat16)) == torch.backends.mkldnn.is_available()
