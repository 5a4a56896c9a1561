"""Head pruning: the pruned model equals the unpruned one with those heads masked, for Llama-with-GQA and BERT."""
import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from tutx.compress.grouped import GROUPED_ATTENTION
from tutx.compress.heads import head_mask, prune_heads_
from tutx.compress.importance import (
    head_importance,
    heads_to_prune,
    mean_attention_score,
)
from tutx.compress.saving import load_pruned
from tutx.compress.structure import head_counts, layout

pytestmark = pytest.mark.usefixtures("one_thread")


def small_llama(seed=0, attn="sdpa"):
    """Random Llama with GQA: 6 query heads on 2 key/value heads (groups of 3)."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=48, intermediate_size=40, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=8, attn_implementation=attn)
    return LlamaForCausalLM(config).eval()


def small_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=64, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=40, max_position_embeddings=32, attn_implementation="sdpa")
    return BertModel(config).eval()


def masked(heads, counts):
    mask = [torch.ones(n) for n in counts]
    for layer, hs in heads.items():
        mask[layer][hs] = 0
    return mask


# within a group; a whole group plus one more (uneven); one head per group (uniform again)
LLAMA_CASES = [{0: [1]}, {0: [0, 1, 2, 4], 2: [5]}, {1: [0, 3], 2: [2]}]


@pytest.mark.parametrize("heads", LLAMA_CASES)
def test_llama_gqa_pruning_equals_masking(heads):
    model = small_llama()
    x = torch.randint(0, 64, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), head_mask(model, masked(heads, head_counts(model))):
        ref = model(x).logits
    n_params = sum(p.numel() for p in model.parameters())
    prune_heads_(model, heads)
    with torch.no_grad():
        out = model(x).logits
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    removed = sum(len(h) for h in heads.values())
    assert head_counts(model) == [6 - len(heads.get(i, [])) for i in range(3)]
    assert sum(p.numel() for p in model.parameters()) < n_params - removed * 8 * 48
    assert model.config.pruned_layout == layout(model)


def test_llama_gqa_whole_group_goes_and_cache_decoding_matches():
    model = small_llama()
    heads = {0: [0, 1, 2, 4], 2: [5]}  # layer 0 loses KV group 0 and one head of group 1: groups [2]
    x = torch.randint(0, 64, (1, 7), generator=torch.Generator().manual_seed(2))
    with head_mask(model, masked(heads, head_counts(model))):
        ref = model.generate(x, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(x))
    prune_heads_(model, heads)
    attn0 = model.model.layers[0].self_attn
    assert attn0.k_proj.out_features == 8 and attn0.v_proj.out_features == 8  # one KV head left
    assert attn0.q_proj.out_features == 16 and attn0.o_proj.in_features == 16
    assert layout(model)["attention"] == [[2], [3, 3], [3, 2]]
    assert model.config._attn_implementation == GROUPED_ATTENTION  # layer 2 is uneven
    out = model.generate(x, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(x))
    assert torch.equal(out, ref)
    with torch.inference_mode():  # an inference-mode call first (perplexity), then training
        model(x)
    model(x).logits.sum().backward()
    assert model.model.layers[2].self_attn.q_proj.weight.grad is not None


def test_tiny_lm_pruning_equals_masking():
    from tutx.models import load_tiny

    model, _ = load_tiny()
    heads = {0: [3], 2: [0, 1, 2, 3], 4: [7, 6]}
    x = torch.randint(0, 4096, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), head_mask(model, masked(heads, head_counts(model))):
        ref = model(x).logits
    prune_heads_(model, heads)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref, atol=1e-4, rtol=1e-4)
    assert layout(model)["attention"] == [[3, 4], [4, 4], [4], [4, 4], [4, 2]]


def test_bert_pruning_equals_masking():
    model = small_bert()
    heads = {0: [1, 3], 1: [0]}
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(4))
    attn = torch.ones_like(x)
    attn[1, 6:] = 0  # padding
    with torch.no_grad(), head_mask(model, masked(heads, head_counts(model))):
        ref = model(input_ids=x, attention_mask=attn).last_hidden_state
    prune_heads_(model, heads)
    with torch.no_grad():
        out = model(input_ids=x, attention_mask=attn).last_hidden_state
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert model.encoder.layer[0].attention.self.query.out_features == 2 * 12
    assert layout(model)["attention"] == [2, 3]


def test_pruned_models_round_trip_save_pretrained(tmp_path):
    llama = small_llama()
    prune_heads_(llama, {0: [0, 1, 2, 4], 1: [1]})
    llama.save_pretrained(tmp_path / "llama")
    bert = small_bert()
    prune_heads_(bert, {1: [0, 2]})
    bert.save_pretrained(tmp_path / "bert")
    x = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(5))
    for model, name in ((llama, "llama"), (bert, "bert")):
        loaded = load_pruned(tmp_path / name)
        assert type(loaded).__name__ in ("PrunedLlamaForCausalLM", "PrunedBertModel")
        assert layout(loaded) == layout(model)
        with torch.no_grad():
            a, b = model(input_ids=x)[0], loaded(input_ids=x)[0]
        assert torch.equal(a, b)


@pytest.mark.parametrize("heads, error, match", [
    ({3: [0]}, ValueError, "layer 3 does not exist"),
    ({0: [6]}, ValueError, "head 6 does not exist"),
    ({0: [0, 1, 2, 3, 4, 5]}, ValueError, "all 6 heads"),
    ({0: [1, 1]}, ValueError, "repeat"),
    ({-1: [0]}, ValueError, "layer"),
    ({0: 2}, TypeError, "list of head indices"),
    ([0, 1], TypeError, "dict"),
    ({0: [1.0]}, TypeError, "head"),
])
def test_bad_heads_are_refused(heads, error, match):
    model = small_llama()
    with pytest.raises(error, match=match):
        prune_heads_(model, heads)
    assert head_counts(model) == [6, 6, 6]  # nothing changed


def test_unsupported_model_is_refused():
    with pytest.raises(TypeError, match="Llama-style decoder or a BERT encoder"):
        prune_heads_(torch.nn.Linear(2, 2), {0: [0]})


def test_head_importance_is_the_mean_abs_mask_gradient():
    model = small_llama()
    batches = [torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(s)) for s in (6, 7)]
    scores = head_importance(model, batches, normalize=False)
    expected = torch.zeros(3, 6)
    for x in batches:
        mask = torch.ones(3, 6, requires_grad=True)
        with head_mask(model, mask):
            out = model(input_ids=x).logits
            loss = torch.nn.functional.cross_entropy(out[:, :-1].flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        expected += mask.grad.abs() / len(batches)
    torch.testing.assert_close(scores, expected, rtol=1e-4, atol=1e-7)
    normed = head_importance(model, batches)
    torch.testing.assert_close(normed.norm(dim=1), torch.ones(3))
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


def test_mean_attention_is_constant():
    model = small_llama()
    x = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(8))
    scores = mean_attention_score(model, [x])
    torch.testing.assert_close(scores, torch.full((3, 6), 1 / 10))
    assert model.config._attn_implementation == "sdpa"  # restored


def test_heads_to_prune_ranks_globally_and_keeps_a_head_per_layer():
    scores = torch.tensor([[0.1, 0.2, 0.9], [0.05, 0.06, 0.07], [0.5, 0.6, 0.3]])
    assert heads_to_prune(scores, 0.34) == {0: [0], 1: [0, 1]}  # 3 of 9
    assert heads_to_prune(scores, 5 / 9) == {0: [0, 1], 1: [0, 1], 2: [2]}  # layer 1 keeps one
    assert heads_to_prune(scores, 0.0) == {}
    with pytest.raises(ValueError, match="fraction"):
        heads_to_prune(scores, 1.0)
