"""tutx.compress.layerdrop: random layer skipping in training, pruning to a sub-network, the wrong rescaling."""
import copy

import pytest
import torch

from tutx.compress import decoder_layers, layerdrop_, layers_to_keep, prune_layers_, remove_layerdrop_, seed_rescaled_layers


def _llama(layers=4):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _bert(layers=4):
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                     num_attention_heads=4, max_position_embeddings=64)
    return BertModel(cfg).eval()


def _count_calls(model):
    calls = []
    for i, layer in enumerate(decoder_layers(model)[2]):
        layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
    return calls


@pytest.mark.parametrize("make", [_llama, _bert])
def test_layerdrop_skips_layers_only_in_training(make):
    model = layerdrop_(make(6), 0.5)
    calls = _count_calls(model)
    x = torch.randint(0, 50, (2, 7))
    model.eval()
    model(input_ids=x)
    assert calls == list(range(6))  # eval: every layer, in order
    model.train()
    torch.manual_seed(0)
    seen = []
    for _ in range(20):
        calls.clear()
        model(input_ids=x)
        seen.append(len(calls))
    assert min(seen) < 6 and 1 <= sum(seen) / len(seen) <= 5  # about half of the layers run
    assert set(model.state_dict()) == set(make(6).state_dict())  # checkpoints unchanged
    remove_layerdrop_(model)
    calls.clear()
    model(input_ids=x)
    assert len(calls) == 6


def test_layers_to_keep():
    assert layers_to_keep(6) == [0, 2, 4] and layers_to_keep(5) == [0, 2, 4]
    assert layers_to_keep(6, "first", 2) == [0, 1]
    assert layers_to_keep(7, "spread", 4) == [0, 2, 4, 6] and layers_to_keep(5, "spread", 1) == [0]
    with pytest.raises(ValueError, match="depth: strategy='spread' needs"):
        layers_to_keep(6, "spread")
    with pytest.raises(ValueError, match="depth: expected an int <= 6"):
        layers_to_keep(6, "first", 7)
    with pytest.raises(ValueError, match="strategy: expected one of"):
        layers_to_keep(6, "random", 2)


def test_pruned_llama_equals_its_sub_stack_generates_and_round_trips(tmp_path):
    from transformers import LlamaForCausalLM
    model = _llama(4)
    x = torch.randint(0, 50, (2, 9))
    ref = copy.deepcopy(model)
    ref.model.layers = torch.nn.ModuleList([ref.model.layers[i] for i in (0, 3)])  # run only layers 0 and 3
    ref.config.num_hidden_layers = 2
    pruned = prune_layers_(model, layers=[3, 0])
    assert pruned.config.num_hidden_layers == 2 and [l.self_attn.layer_idx for l in pruned.model.layers] == [0, 1]
    want = ref(input_ids=x, use_cache=False).logits
    assert torch.allclose(pruned(input_ids=x).logits, want, atol=1e-6)
    out = pruned.generate(x[:1], max_new_tokens=4, do_sample=False)  # the KV cache sees 2 layers
    assert out.shape == (1, 13)
    pruned.save_pretrained(tmp_path)
    back = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert back.config.num_hidden_layers == 2
    assert torch.allclose(back(input_ids=x).logits, want, atol=1e-6)


def test_pruned_bert_and_every_other():
    model = _bert(6)
    pruned = prune_layers_(copy.deepcopy(model))
    assert pruned.config.num_hidden_layers == 3 and len(pruned.encoder.layer) == 3
    x = torch.randint(0, 50, (1, 5))
    assert pruned(input_ids=x).last_hidden_state.shape == (1, 5, 32)
    ld = layerdrop_(_llama(4), 0.3)
    prune_layers_(ld, "first", 2)
    assert type(decoder_layers(ld)[2]).__name__ == "LayerDropList" and decoder_layers(ld)[2].p == 0.3


def test_seed_rescaling_changes_the_output_and_is_undone():
    model = _llama(4)
    x = torch.randint(0, 50, (1, 6))
    base = model(input_ids=x).logits
    layer0 = model.model.layers[0]
    with seed_rescaled_layers(model, 0.5):
        assert not torch.allclose(model(input_ids=x).logits, base, atol=1e-4)
        h = torch.randn(1, 6, 32)
        pos = model.model.rotary_emb(h, torch.arange(6)[None])
        out = layer0(h, position_embeddings=pos)
        layer0._forward_hooks.clear()  # compare with the same layer unscaled
        assert torch.allclose(out, 0.5 * layer0(h, position_embeddings=pos), atol=1e-6)
    assert torch.allclose(model(input_ids=x).logits, base, atol=1e-6)  # hooks removed


def test_errors():
    model = _llama(4)
    with pytest.raises(ValueError, match=r"p: the LayerDrop rate must be in \[0, 1\), got 1"):
        layerdrop_(model, 1)
    with pytest.raises(ValueError, match="LayerDrop rate"):
        layerdrop_(model, -0.1)
    with pytest.raises(TypeError, match="p: expected a number"):
        layerdrop_(model, "0.2")
    with pytest.raises(ValueError, match="layers: expected an int <= 3"):
        prune_layers_(model, layers=[0, 4])
    with pytest.raises(ValueError, match="layers: indices repeat"):
        prune_layers_(model, layers=[1, 1])
    with pytest.raises(ValueError, match="depth: pass either layers= or strategy/depth"):
        prune_layers_(model, depth=2, layers=[0])
    with pytest.raises(ValueError, match="model: found no layer stack"):
        layerdrop_(torch.nn.Linear(2, 2), 0.1)
    with pytest.raises(ValueError, match="LayerDrop rate"):
        with seed_rescaled_layers(model, 1.0):
            pass
