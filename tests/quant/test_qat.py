"""QAT: the STE fake quantizer, FakeQuantLinear == its converted module, training, errors, the tiny-LM experiment."""
import copy

import pytest
import torch
from torch import nn

from tutx.quant import (
    FakeQuantLinear,
    Int4WeightOnly,
    Int4WeightOnlyLinear,
    Int4WeightOnlyQAT,
    Int8WeightOnly,
    Int8WeightOnlyLinear,
    Int8WeightOnlyQAT,
    convert_qat_,
    fake_quantize,
    fake_quantize_ste,
    finetune_qat,
    prepare_qat_,
    quantize_,
    unprepare_qat_,
)
from tutx.quant.qat_configs import qat_config
from tutx.train import causal_lm_loss, random_windows
from _tiny import tiny_llama

CONFIGS = {"int8": Int8WeightOnlyQAT(), "int4-g32": Int4WeightOnlyQAT(32), "int4-channel": Int4WeightOnlyQAT(None)}


@pytest.fixture(autouse=True)
def fast_cpu(monkeypatch, one_thread):
    monkeypatch.setenv("TRITON_INTERPRET", "0")  # converted modules run the PyTorch reference: fast



def _ids(seed=1, shape=(4, 16)):
    return torch.randint(0, 96, shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------- the fake quantizer
@pytest.mark.parametrize("kwargs", [dict(bits=8, symmetric=True, axis=0), dict(bits=4, symmetric=False, group_size=32),
                                    dict(bits=4, symmetric=False, axis=0), dict(bits=8, symmetric=False)])
def test_ste_forward_is_fake_quantize_bit_for_bit(kwargs):
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(fake_quantize_ste(w, **kwargs), fake_quantize(w, **kwargs), rtol=0, atol=0)


def test_ste_passes_gradient_inside_the_range_and_blocks_it_outside():
    x = torch.tensor([[-2.0, -0.5, 0.0, 0.3, 0.99, 1.5]], requires_grad=True)
    scale = torch.tensor([1.0 / 127])  # symmetric int8 over [-1, 1]: -2 and 1.5 are clipped
    y = fake_quantize_ste(x, 8, axis=0, scale=scale)
    (y * torch.arange(1.0, 7.0)).sum().backward()
    assert y[0, 0].item() == pytest.approx(-1.0) and y[0, 5].item() == pytest.approx(1.0)
    torch.testing.assert_close(x.grad, torch.tensor([[0.0, 2.0, 3.0, 4.0, 5.0, 0.0]]))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fake_quant_weight_is_exactly_the_converted_weight(name):
    lin = nn.Linear(256, 48)
    with torch.no_grad():
        lin.weight[5, 17] = 0.9  # an outlier, to make the rows' ranges differ
    fq = FakeQuantLinear.from_linear(lin, CONFIGS[name])
    q = fq.convert()
    assert isinstance(q, Int8WeightOnlyLinear if name == "int8" else Int4WeightOnlyLinear)
    torch.testing.assert_close(fq.fake_quantized_weight().detach(), q.dequantize_weight(), rtol=0, atol=0)
    x = torch.randn(3, 5, 256)
    torch.testing.assert_close(q(x), fq(x).detach(), rtol=1e-5, atol=1e-5)


def test_converted_modules_match_post_training_quantize():
    """QAT without training is round-to-nearest: same codes as quantize_ with the matching config."""
    lin = nn.Linear(128, 40)
    ptq = {"int8": Int8WeightOnlyLinear.from_linear(lin, Int8WeightOnly()),
           "int4-g32": Int4WeightOnlyLinear.from_linear(lin, Int4WeightOnly(32))}
    for name, ref in ptq.items():
        q = FakeQuantLinear.from_linear(lin, CONFIGS[name]).convert()
        for key, value in ref.state_dict().items():
            assert torch.equal(q.state_dict()[key], value), (name, key)


def test_per_channel_int4_repeats_one_scale_per_row_over_the_groups():
    lin = nn.Linear(640, 16, bias=False)  # 640 = 5 groups of 128
    q = FakeQuantLinear.from_linear(lin, Int4WeightOnlyQAT(None)).convert()
    assert q.group_size == 128 and q.weight_scale.shape == (16, 5)
    assert torch.equal(q.weight_scale, q.weight_scale[:, :1].expand(-1, 5))
    assert torch.equal(q.weight_zero, q.weight_zero[:, :1].expand(-1, 5))
    codes_span = q.dequantize_weight() / q.weight_scale[:, :1]  # every row uses (nearly) the full 0..15 range
    assert (codes_span.amax(1) - codes_span.amin(1)).min() > 14.5


def test_per_channel_int4_runs_through_the_int4_kernel(monkeypatch):
    """The repeated per-row qparams are ordinary groups to the kernel (interpreted on CPU, native on CUDA)."""
    q = FakeQuantLinear.from_linear(nn.Linear(256, 40), Int4WeightOnlyQAT(None)).convert()
    x = torch.randn(3, 256)
    y_reference = q(x)  # TRITON_INTERPRET=0 from the fixture: the PyTorch reference
    monkeypatch.setenv("TRITON_INTERPRET", "1" if not torch.cuda.is_available() else "0")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.testing.assert_close(q.to(dev)(x.to(dev)).cpu(), y_reference, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------- model level
@pytest.mark.parametrize("name", list(CONFIGS))
def test_prepare_then_convert_on_a_llama(name):
    model = tiny_llama()
    n_params = sum(p.numel() for p in model.parameters())
    prepare_qat_(model, CONFIGS[name])
    fq = [f for f, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    assert len(fq) == 14 and not any("lm_head" in f for f in fq)  # 2 layers x 7, never the tied head
    assert sum(p.numel() for p in model.parameters()) == n_params  # parameters shared, not copied
    ids = _ids()
    with torch.no_grad():
        fake_logits = model(input_ids=ids).logits
    convert_qat_(model)
    assert not any(isinstance(m, (FakeQuantLinear, nn.Linear)) for f, m in model.named_modules() if f in fq)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, fake_logits, rtol=1e-4, atol=1e-4)


def test_unprepare_gives_back_plain_linears_with_the_same_weights():
    model = tiny_llama()
    ref = copy.deepcopy(model)
    unprepare_qat_(prepare_qat_(model, Int8WeightOnlyQAT()))
    assert sorted(f for f, m in model.named_modules() if isinstance(m, nn.Linear)) == \
        sorted(f for f, m in ref.named_modules() if isinstance(m, nn.Linear))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=_ids()).logits, ref(input_ids=_ids()).logits)


def test_one_training_step_moves_the_weights_and_lowers_the_loss():
    model = prepare_qat_(tiny_llama(), Int4WeightOnlyQAT(32))
    ids = _ids(shape=(4, 32))
    layer = model.model.layers[0].mlp.down_proj
    before_w = layer.weight.detach().clone()
    with torch.no_grad():
        before = causal_lm_loss(model, ids).item()
    losses = finetune_qat(model, [ids], steps=1, lr=1e-2, schedule="constant", progress=False)
    assert losses == [pytest.approx(before)]
    assert not torch.equal(layer.weight.detach(), before_w)  # the STE let the gradient through the rounding
    with torch.no_grad():
        assert causal_lm_loss(model, ids).item() < before


def test_finetune_goes_round_a_list_and_uses_an_iterator_once():
    model = prepare_qat_(tiny_llama(), Int8WeightOnlyQAT())
    batches = random_windows(_ids(shape=(200,)), batch_size=2, seq_len=8, num_batches=2, seed=0)
    assert len(finetune_qat(model, batches, steps=5, lr=1e-4, progress=False)) == 5
    assert len(finetune_qat(model, batches, lr=1e-4, progress=False)) == 2  # steps=None: one pass
    assert len(finetune_qat(model, iter(batches), steps=5, lr=1e-4, schedule="constant", progress=False)) == 2
    assert model.training is False  # mode restored


def test_random_windows_are_seeded_windows_of_the_stream():
    ids = torch.arange(1000)
    a = random_windows(ids, 4, 16, 3, seed=7)
    assert len(a) == 3 and all(b.shape == (4, 16) for b in a)
    assert all(torch.equal(x, y) for x, y in zip(a, random_windows(ids, 4, 16, 3, seed=7)))
    assert all(bool((b[:, 1:] - b[:, :-1] == 1).all()) for b in a)  # contiguous windows


# ----------------------------------------------------------------------------------------------- errors
def test_bad_configs():
    with pytest.raises(ValueError, match=r"bits: expected one of \(4, 8\), got 3"):
        qat_config(3)
    with pytest.raises(ValueError, match="group_size"):
        qat_config(8, group_size=32)
    with pytest.raises(ValueError, match="group_size: expected None"):
        Int4WeightOnlyQAT(48)
    assert qat_config(4) == Int4WeightOnlyQAT(None) and qat_config(8) == Int8WeightOnlyQAT()
    with pytest.raises(TypeError, match="post-training config.*Int4WeightOnlyQAT"):
        prepare_qat_(tiny_llama(), Int4WeightOnly(32))
    with pytest.raises(TypeError, match="config: expected Int8WeightOnlyQAT or Int4WeightOnlyQAT"):
        prepare_qat_(tiny_llama(), "int4")


def test_refuses_prepared_or_quantized_models():
    model = prepare_qat_(tiny_llama(), Int8WeightOnlyQAT())
    with pytest.raises(ValueError, match="already prepared for QAT"):
        prepare_qat_(model, Int8WeightOnlyQAT())
    quantized = quantize_(tiny_llama(), Int8WeightOnly())
    with pytest.raises(ValueError, match="already quantized"):
        prepare_qat_(quantized, Int8WeightOnlyQAT())
    with pytest.raises(ValueError, match="no FakeQuantLinear layers; call prepare_qat_ first"):
        convert_qat_(tiny_llama())
    with pytest.raises(ValueError, match="is already a FakeQuantLinear"):
        FakeQuantLinear.from_linear(model.model.layers[0].mlp.up_proj, Int8WeightOnlyQAT())


def test_shapes_the_int4_layout_cannot_hold():
    with pytest.raises(ValueError, match="in_features: 48 .* not divisible by group_size=32"):
        prepare_qat_(tiny_llama(hidden=48), Int4WeightOnlyQAT(32))
    with pytest.raises(ValueError, match="per-channel INT4 is stored as groups"):
        FakeQuantLinear.from_linear(nn.Linear(48, 8), Int4WeightOnlyQAT(None))


def test_nan_weights_are_refused_and_a_nan_loss_stops_training():
    model = tiny_llama()
    with torch.no_grad():
        model.model.layers[1].self_attn.o_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="o_proj.*NaN or Inf"):
        prepare_qat_(model, Int8WeightOnlyQAT())
    assert not any(isinstance(m, FakeQuantLinear) for m in model.modules())  # nothing swapped
    model = prepare_qat_(tiny_llama(), Int8WeightOnlyQAT())
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="loss: became nan at step 0"):
        finetune_qat(model, [_ids()], progress=False)


def test_bad_token_batches():
    model = prepare_qat_(tiny_llama(), Int8WeightOnlyQAT())
    with pytest.raises(ValueError, match="token_batches: is empty"):
        finetune_qat(model, [], steps=3, progress=False)
    with pytest.raises(ValueError, match="token_batches: is empty"):
        finetune_qat(model, iter([]), schedule="constant", progress=False)
    with pytest.raises(TypeError, match="batch 0 is not an integer tensor"):
        finetune_qat(model, [torch.randn(2, 8)], progress=False)
    with pytest.raises(ValueError, match=r"batch 0 has shape \(2, 1\)"):
        finetune_qat(model, [torch.zeros(2, 1, dtype=torch.long)], progress=False)
    with pytest.raises(TypeError, match="wrap it in a list"):
        finetune_qat(model, _ids(), progress=False)
    with pytest.raises(ValueError, match="cosine schedule needs the number of steps"):
        finetune_qat(model, iter([_ids()]), progress=False)
    with pytest.raises(ValueError, match="lr: expected a number > 0, got 0"):
        finetune_qat(model, [_ids()], lr=0, progress=False)
    with pytest.raises(TypeError, match="teacher: expected a separate nn.Module"):
        finetune_qat(model, [_ids()], teacher=model, progress=False)


# ---------------------------------------------------------------------------------------- experiment
def test_qat_beats_round_to_nearest_on_the_tiny_lm():
    """INT4 per channel on the shipped tiny LM: a 30-step distillation fine-tune recovers perplexity.

    Settings (seeded, about 20 s on one CPU thread): training windows from the first 20,000
    characters of each training play (233k tokens), 30 steps of 8 x 128 tokens, AdamW lr 2e-4 with cosine decay,
    distilling from the float model. Perplexity on the first 20,000 characters of the held-out
    plays (about 5k tokens), non-overlapping 256-token windows. Measured: fp32 67.55, RTN 68.25,
    QAT 67.94 (seeds 1-3 gave 67.74-67.87; plain cross-entropy instead of distillation gave 68.79,
    worse than RTN). On the whole held-out text (512-token windows): fp32 55.04, RTN 55.52, QAT 55.27.
    """
    from tutx.models import heldout_text, load_tiny, perplexity
    from tutx.models.corpus import split_plays

    model, tok = load_tiny()
    train, _ = split_plays()
    ids = tok("\n".join(train[n][:20000] for n in sorted(train)), add_special_tokens=False,
              return_tensors="pt")["input_ids"][0]
    text = heldout_text()[:20000]

    def ppl(m):
        return perplexity(m, tok, text, window=256, stride=256)

    rtn = convert_qat_(prepare_qat_(copy.deepcopy(model), Int4WeightOnlyQAT(group_size=None)))
    qat = prepare_qat_(copy.deepcopy(model), Int4WeightOnlyQAT(group_size=None))
    torch.manual_seed(0)
    finetune_qat(qat, random_windows(ids, batch_size=8, seq_len=128, num_batches=30, seed=0), lr=2e-4,
                 teacher=model, progress=False)
    convert_qat_(qat)
    fp32, ppl_rtn, ppl_qat = ppl(model), ppl(rtn), ppl(qat)
    assert fp32 < ppl_rtn  # rounding to 4 bits per channel costs perplexity ...
    assert ppl_qat < ppl_rtn - 0.1  # ... and QAT wins part of it back
