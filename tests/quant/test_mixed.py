"""Mixed precision: sensitivity probes leave the model as it was, bit assignment under a budget, apply, frontier."""
import copy

import pytest
import torch
from torch import nn

from tutx.quant import (
    Int4WeightOnlyLinear,
    Int8WeightOnlyLinear,
    Sensitivity,
    apply_mixed_precision_,
    assign_bits,
    frontier,
    layer_bytes,
    layer_sensitivity,
    model_weight_bytes,
    quantize_,
)
from tutx.quant.mixed_precision import plan_bytes, upgrade_path
from tutx.quant.sensitivity import config_for_bits, output_kl_fn
from _tiny import tiny_llama


def _quantized(lin, bits, group_size):
    """``lin`` at ``bits`` through the one dispatch, quantize_ with a {fqn: config} dict."""
    holder = nn.Sequential(lin)
    quantize_(holder, {"0": config_for_bits(bits, group_size)})
    return holder[0]


@pytest.fixture(autouse=True)
def fast_cpu(monkeypatch, one_thread):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # quantized modules run the PyTorch reference



def _ids(seed=1):
    return torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(seed))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _synthetic(n=6, seed=0):
    """Sensitivities and sizes for n layers of one shape: damage at 4 bits > at 8 bits > 0 at 16."""
    g = torch.Generator().manual_seed(seed)
    d4 = torch.rand(n, generator=g).tolist()
    delta = {f"layer{i}": {4: d4[i], 8: d4[i] / 10} for i in range(n)}
    sizes = {f"layer{i}": {4: 100 + 10 * i, 8: 200 + 20 * i, 16: 400 + 40 * i} for i in range(n)}
    return delta, sizes


# ------------------------------------------------------------------------------------------ sizes
def test_layer_bytes_are_what_the_quantized_modules_take():
    model = tiny_llama()
    sizes = layer_bytes(model, group_size=32)
    assert len(sizes) == 14 and all(set(s) == {4, 8, 16} for s in sizes.values())
    for fqn, by_bits in sizes.items():
        lin = model.get_submodule(fqn)
        for bits in (4, 8, 16):
            assert by_bits[bits] == model_weight_bytes(_quantized(lin, bits, group_size=32)), (fqn, bits)
        assert by_bits[4] < by_bits[8] < by_bits[16]


# ------------------------------------------------------------------------------------ sensitivity
def test_sensitivity_probes_each_layer_and_restores_the_model():
    model = tiny_llama()
    ids = _ids()
    before, logits = _state(model), model(input_ids=ids).logits.detach()
    sens = layer_sensitivity(model, output_kl_fn(model, ids), candidates=(4, 8), group_size=32, progress=False)
    assert isinstance(sens, Sensitivity) and sens.baseline == pytest.approx(0.0, abs=1e-6)
    assert len(sens.scores) == 14 and all(set(s) == {4, 8} for s in sens.scores.values())
    assert all(d[4] >= 0 and d[8] >= 0 and d[16] == 0 for d in sens.delta.values())  # KL: never negative
    assert all(d[4] > d[8] for d in sens.delta.values() if d[4] > 1e-7)  # (random q/k barely matter)
    assert sens.ranking(4)[0][1] == max(d[4] for d in sens.delta.values())
    assert all(type(model.get_submodule(f)) is nn.Linear for f in sens.scores)
    after = _state(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(model(input_ids=ids).logits.detach(), logits, rtol=0, atol=0)


def test_a_failing_probe_still_restores_the_model():
    model = tiny_llama()
    calls = []

    def flaky(m):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return 1.0

    with pytest.raises(RuntimeError, match="boom"):
        layer_sensitivity(model, flaky, group_size=32, progress=False)
    assert all(type(m) is nn.Linear for f, m in model.named_modules() if f.endswith("_proj"))


def test_sensitivity_by_perplexity_on_the_tiny_lm():
    from tutx.models import heldout_text, load_tiny

    model, tok = load_tiny()
    sens = layer_sensitivity(model, tok, candidates=(4,), metric="ppl", text=heldout_text()[:1500],
                             filter_fn=lambda m, fqn: fqn.startswith("model.layers.0.mlp"), progress=False)
    assert sorted(sens.scores) == [f"model.layers.0.mlp.{p}" for p in ("down_proj", "gate_proj", "up_proj")]
    assert 10 < sens.baseline < 200 and all(10 < s[4] < 200 for s in sens.scores.values())


class _Tok:
    def encode(self, text):
        return [1, 2, 3]


def test_bad_sensitivity_inputs():
    model = tiny_llama()
    kl = output_kl_fn(model, _ids())
    with pytest.raises(ValueError, match="candidates: expected distinct bit widths from \\(4, 8\\)"):
        layer_sensitivity(model, kl, candidates=(16,), progress=False)
    with pytest.raises(ValueError, match="metric: expected one of"):
        layer_sensitivity(model, kl, metric="mse", progress=False)
    with pytest.raises(TypeError, match="tokenizer_or_eval_fn: expected a tokenizer"):
        layer_sensitivity(model, 42, progress=False)
    with pytest.raises(ValueError, match="text: only used with a tokenizer"):
        layer_sensitivity(model, kl, text="hello", progress=False)
    with pytest.raises(ValueError, match="text: a tokenizer needs the text"):
        layer_sensitivity(tiny_llama(), _Tok(), progress=False)
    with pytest.raises(ValueError, match="eval_fn: returned nan"):
        layer_sensitivity(model, lambda m: float("nan"), progress=False)
    with pytest.raises(ValueError, match="input_ids: expected an integer tensor"):
        output_kl_fn(model, torch.randn(2, 5))


# ---------------------------------------------------------------------------------------- budgets
def test_budget_is_respected_and_more_budget_never_gives_fewer_bits():
    delta, sizes = _synthetic()
    floor = sum(s[4] for s in sizes.values())
    top = sum(s[16] for s in sizes.values())
    previous = None
    for budget in range(floor, top + 1, 37):
        plan = assign_bits(delta, sizes, budget)
        assert plan_bytes(plan, sizes) <= budget
        if previous is not None:
            assert all(plan[f] >= previous[f] for f in plan), budget
        previous = plan
    assert set(assign_bits(delta, sizes, top).values()) == {16}
    assert set(assign_bits(delta, sizes, floor).values()) == {4}
    assert set(assign_bits(delta, sizes, top, choices=(4, 8)).values()) == {8}


def test_the_most_sensitive_layer_is_upgraded_first():
    delta = {"a": {4: 0.01, 8: 0.0}, "b": {4: 5.0, 8: 0.1}, "c": {4: 0.02, 8: 0.0}}
    sizes = {f: {4: 100, 8: 200, 16: 400} for f in delta}
    assert assign_bits(delta, sizes, 400) == {"a": 4, "b": 8, "c": 4}
    assert upgrade_path(delta, sizes)[0][:3] == ("b", 4, 8)
    assert upgrade_path(delta, sizes)[-1][3] == 1200  # ends with every layer at 16 bits


def test_sensitivity_object_and_plain_mapping_give_the_same_plan():
    delta, sizes = _synthetic()
    sens = Sensitivity(baseline=3.0, scores={f: {b: 3.0 + v for b, v in d.items()} for f, d in delta.items()})
    budget = sum(s[8] for s in sizes.values())
    assert assign_bits(sens, sizes, budget) == assign_bits(delta, sizes, budget)


def test_bad_budgets_and_inputs():
    delta, sizes = _synthetic()
    floor = sum(s[4] for s in sizes.values())
    with pytest.raises(ValueError, match=f"budget_bytes: {floor - 1:,} is below {floor:,}"):
        assign_bits(delta, sizes, floor - 1)
    with pytest.raises(ValueError, match="budget_bytes: expected a number"):
        assign_bits(delta, sizes, -5)
    with pytest.raises(ValueError, match="layer_bytes: expected .* same layers"):
        assign_bits(delta, {k: v for k, v in sizes.items() if k != "layer0"}, 10**6)
    with pytest.raises(ValueError, match="no value for 'layer0' at 8 bits"):
        assign_bits({f: {4: d[4]} for f, d in delta.items()}, sizes, 10**6)
    with pytest.raises(ValueError, match="choices: expected distinct bit widths"):
        assign_bits(delta, sizes, 10**6, choices=(4, 6))
    with pytest.raises(TypeError, match="sensitivity: expected a Sensitivity"):
        assign_bits({}, sizes, 10**6)


# ------------------------------------------------------------------------------------------- apply
def test_apply_uses_the_existing_modules_and_sixteen_leaves_the_layer():
    model = tiny_llama()
    names = sorted(layer_bytes(model, group_size=32))
    plan = {f: (4, 8, 16)[i % 3] for i, f in enumerate(names)}
    apply_mixed_precision_(model, plan, group_size=32)
    for f, bits in plan.items():
        assert type(model.get_submodule(f)) is {4: Int4WeightOnlyLinear, 8: Int8WeightOnlyLinear, 16: nn.Linear}[bits]
    assert model.get_submodule(names[0]).group_size == 32


def test_a_bad_plan_leaves_the_model_untouched():
    model = tiny_llama()
    names = sorted(layer_bytes(model, group_size=32))
    for plan, match in [({names[0]: 4, names[1]: 5}, "has bits=5"), ({names[0]: 8, "model.nope": 4}, "no module"),
                        ({"model.norm": 8}, "is a LlamaRMSNorm, expected an nn.Linear")]:
        with pytest.raises(ValueError, match=match):
            apply_mixed_precision_(model, plan, group_size=32)
        assert all(type(model.get_submodule(f)) is nn.Linear for f in names)
    with pytest.raises(ValueError, match="group_size"):
        apply_mixed_precision_(model, {names[0]: 4}, group_size=48)


# ---------------------------------------------------------------------------------------- frontier
def test_frontier_on_the_tiny_lm():
    from tutx.models import heldout_text, load_tiny

    model, tok = load_tiny()
    before = _state(model)
    sizes = layer_bytes(model)
    floor, int8 = sum(s[4] for s in sizes.values()), sum(s[8] for s in sizes.values())
    budgets = [floor + (int8 - floor) // 4, (floor + int8) // 2]
    rows = frontier(model, tok, budgets, probe_text=heldout_text()[:1000], text=heldout_text()[1000:3000],
                    progress=False)
    assert [r["label"] for r in rows] == ["int4", "mixed", "mixed", "int8", "fp"]
    assert rows[0]["mb"] == floor / 1e6 and rows[3]["mb"] == int8 / 1e6
    assert rows[0]["bits"] == {4: 35, 8: 0, 16: 0} and rows[-1]["bits"] == {4: 0, 8: 0, 16: 35}
    for row in rows[1:3]:
        assert row["mb"] * 1e6 <= row["budget_bytes"] and row["bits"][8] > 0
    assert all(10 < r["ppl"] < 200 for r in rows)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the model is unchanged
    with pytest.raises(ValueError, match="budgets: .* below"):
        frontier(model, tok, [floor - 1], text="x", progress=False)
