"""quantize_ on a real pretrained encoder (all-MiniLM-L6-v2, a BERT): memory shrinks, embeddings stay close."""
import pytest
import torch

from tutx.models import load_minilm, sentence_embeddings
from tutx.quant import Int4WeightOnly, Int8DynamicActivationInt8Weight, Int8WeightOnly, model_weight_bytes, quantize_

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby.",
             "A man is riding a horse.", "A woman is playing violin.", "Two men pushed carts through the woods.",
             "A monkey is playing drums.", "Someone in a gorilla costume is playing a set of drums."]


@pytest.fixture(autouse=True)
def reference_path(monkeypatch):
    """The modules' PyTorch path: the kernels themselves are tested at small sizes in tests/kernels."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")


@pytest.fixture(scope="module")
def reference():
    model, tok = load_minilm()
    return tok, model_weight_bytes(model, linear_only=True), sentence_embeddings(model, tok, SENTENCES)


@pytest.mark.parametrize("config,shrink,min_cos", [
    (Int8WeightOnly(), (3.9, 4.0), 0.999),
    (Int8DynamicActivationInt8Weight(), (3.9, 4.0), 0.99),
    (Int4WeightOnly(group_size=128), (6.8, 7.5), 0.95),
])
def test_minilm_quantized_keeps_its_embeddings(reference, config, shrink, min_cos):
    tok, fp32_bytes, ref = reference
    model = quantize_(load_minilm()[0], config)
    ratio = fp32_bytes / model_weight_bytes(model, linear_only=True)
    assert shrink[0] <= ratio <= shrink[1], ratio
    emb = sentence_embeddings(model, tok, SENTENCES)
    cos = (emb * ref).sum(-1)  # each sentence against its own fp32 embedding
    assert cos.min() >= min_cos, cos
    # and the geometry survives: every sentence's nearest neighbour is unchanged
    assert torch.equal((emb @ emb.T).fill_diagonal_(-1).argmax(1), (ref @ ref.T).fill_diagonal_(-1).argmax(1))
