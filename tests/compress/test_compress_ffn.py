"""FFN width pruning: zero-importance neurons go without changing the outputs; bad amounts are refused."""
import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from tutx.compress.ffn import ffn_importance, prune_ffn_
from tutx.compress.heads import prune_heads_
from tutx.compress.saving import load_pruned
from tutx.compress.structure import ffn_projections, layers, layout

pytestmark = pytest.mark.usefixtures("one_thread")


def small_llama():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    return LlamaForCausalLM(config).eval()


def small_bert():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=24, max_position_embeddings=32)
    return BertModel(config).eval()


def silence(model, dead: dict[int, list[int]]):
    """Zero the output columns of some neurons: they then contribute nothing."""
    with torch.no_grad():
        for layer, idx in dead.items():
            ffn_projections(layers(model)[layer])[1].weight[:, idx] = 0


@pytest.mark.parametrize("make", [small_llama, small_bert])
@pytest.mark.parametrize("method", ["activation", "weight"])
def test_zero_importance_neurons_go_without_changing_outputs(make, method):
    model = make()
    dead = {0: [3, 7, 20], 1: [0, 23]}
    silence(model, dead)
    x = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=x)[0]
    scores = ffn_importance(model, [x] if method == "activation" else None, method=method)
    for layer, idx in dead.items():
        assert (scores[layer][idx] == 0).all() and (scores[layer].sort().values[len(idx):] > 0).all()
    prune_ffn_(model, {layer: len(idx) for layer, idx in dead.items()}, importance=scores)
    with torch.no_grad():
        out = model(input_ids=x)[0]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert layout(model)["intermediate"] == [21, 22]
    ins, down = ffn_projections(layers(model)[0])
    assert down.weight.shape[1] == 21 and all(lin.weight.shape[0] == 21 for lin in ins)


def test_ratio_prunes_every_layer_and_updates_config():
    model = small_llama()
    n = sum(p.numel() for p in model.parameters())
    prune_ffn_(model, 0.25, method="weight")
    assert layout(model)["intermediate"] == [18, 18]
    assert model.config.intermediate_size == 18
    assert sum(p.numel() for p in model.parameters()) == n - 2 * 6 * 3 * 32


def test_heads_and_ffn_pruned_round_trip(tmp_path):
    model = small_llama()
    prune_heads_(model, {1: [0, 1, 3]})
    prune_ffn_(model, {0: 5}, method="weight")
    model.save_pretrained(tmp_path)
    loaded = load_pruned(tmp_path)
    x = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(2))
    assert layout(loaded) == {"attention": [[2, 2], [1]], "intermediate": [19, 24]}
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, model(x).logits)


@pytest.mark.parametrize("amount, error, match", [
    (1.0, ValueError, r"amount: expected a probability in \[0, 1\)"),
    (-0.1, ValueError, "amount"),
    ({0: 24}, ValueError, "all 24 neurons"),
    ({2: 1}, ValueError, "layer 2 does not exist"),
    ({0: -1}, ValueError, "amount"),
    ("half", TypeError, "ratio"),
    (True, TypeError, "ratio"),
])
def test_bad_amounts_are_refused(amount, error, match):
    model = small_llama()
    with pytest.raises(error, match=match):
        prune_ffn_(model, amount, method="weight")
    assert layout(model)["intermediate"] == [24, 24]


def test_activation_importance_needs_batches_and_a_known_method():
    model = small_llama()
    with pytest.raises(ValueError, match="batches"):
        ffn_importance(model)
    with pytest.raises(ValueError, match="method"):
        ffn_importance(model, method="random")
