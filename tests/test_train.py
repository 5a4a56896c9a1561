"""tutx.train: the shared fine-tuning loop (AdamW, warm-up + cosine, clipping, fixed seed)."""
import math

import pytest
import torch
from torch import nn

from tutx.train import causal_lm_loss, distillation_loss, lr_at, random_windows, train


class Bigram(nn.Module):
    def __init__(self, vocab=20):
        super().__init__()
        self.emb = nn.Embedding(vocab, vocab)

    def forward(self, input_ids):
        return self.emb(input_ids)  # [B, T, V] logits


def _batches(n=4, seed=0):
    stream = torch.arange(200) % 20  # a perfectly predictable sequence
    return random_windows(stream, batch_size=4, seq_len=16, num_batches=n, seed=seed)


def test_training_lowers_the_loss_and_repeats_with_the_seed():
    torch.manual_seed(0)
    a, b = Bigram(), Bigram()
    b.load_state_dict(a.state_dict())
    la = train(a, _batches(), causal_lm_loss, steps=20, lr=0.1, warmup_steps=2, progress=False)
    lb = train(b, _batches(), causal_lm_loss, steps=20, lr=0.1, warmup_steps=2, progress=False)
    assert len(la) == 20 and la[-1] < 0.5 * la[0]
    assert la == lb


def test_schedule():
    assert lr_at(0, 10, 1.0, warmup_steps=2) == 0.5 and lr_at(1, 10, 1.0, warmup_steps=2) == 1.0
    assert lr_at(2, 10, 1.0, warmup_steps=2) == 1.0  # cosine starts at the peak
    assert math.isclose(lr_at(6, 10, 1.0, warmup_steps=2), 0.5)
    assert lr_at(9, 10, 1.0, schedule="constant") == 1.0


def test_distillation_loss_is_zero_for_the_teacher_itself():
    m = Bigram()
    x = _batches(1)[0]
    assert float(distillation_loss(m, m, x).detach()) == pytest.approx(0.0, abs=1e-6)


def test_errors():
    m = Bigram()
    with pytest.raises(TypeError, match="loss_fn: expected a function"):
        train(m, _batches(), "ce", progress=False)
    with pytest.raises(ValueError, match="lr: expected a number > 0"):
        train(m, _batches(), causal_lm_loss, lr=0, progress=False)
    with pytest.raises(TypeError, match="warmup_steps: expected an int"):
        train(m, _batches(), causal_lm_loss, warmup_steps=1.5, progress=False)
    with pytest.raises(ValueError, match="schedule: expected one of"):
        train(m, _batches(), causal_lm_loss, schedule="linear", progress=False)
    with pytest.raises(ValueError, match="cosine schedule needs the number of steps"):
        train(m, iter(_batches()), causal_lm_loss, progress=False)
    with pytest.raises(ValueError, match="is empty"):
        train(m, [], causal_lm_loss, steps=2, progress=False)
    with pytest.raises(ValueError, match="loss: became nan"):
        train(m, _batches(), lambda model, b: torch.tensor(float("nan"), requires_grad=True), progress=False)
    with pytest.raises(ValueError, match="ids: 10 tokens is too short"):
        random_windows(torch.arange(10), 2, 16, 1)
