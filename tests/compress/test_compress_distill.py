"""tutx.compress.distill and trainer: kd_loss by hand and by finite differences, the trainer, errors."""
import math

import pytest
import torch

from tutx.compress import DistillationTrainer, HiddenStateDistillLoss, check_same_tokenizer, kd_loss, make_student
from tutx.train import distillation_loss, random_windows


def _hand_kd(s, t, y, T, alpha, ignore=-100):
    """The loss written out with Python floats, one position at a time."""
    soft, hard, n = 0.0, 0.0, 0
    for zs, zt, label in zip(s.reshape(-1, s.shape[-1]).tolist(), t.reshape(-1, t.shape[-1]).tolist(),
                             [None] * s[..., 0].numel() if y is None else y.reshape(-1).tolist()):
        if label == ignore:
            continue
        es = [math.exp(v / T) for v in zs]
        et = [math.exp(v / T) for v in zt]
        ps = [v / sum(es) for v in es]
        pt = [v / sum(et) for v in et]
        soft += sum(a * math.log(a / b) for a, b in zip(pt, ps))
        if label is not None:
            e1 = [math.exp(v) for v in zs]
            hard += -math.log(e1[label] / sum(e1))
        n += 1
    soft = T * T * soft / n
    return soft if y is None else alpha * soft + (1 - alpha) * hard / n


def test_kd_loss_equals_the_hand_computed_value():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 3, 5, generator=g), torch.randn(2, 3, 5, generator=g)
    y = torch.tensor([[1, 4, -100], [0, -100, 2]])
    for T, alpha in ((1.0, 0.5), (2.0, 0.3), (4.0, 1.0), (0.5, 0.0)):
        assert float(kd_loss(s, t, y, temperature=T, alpha=alpha)) == pytest.approx(_hand_kd(s, t, y, T, alpha), rel=1e-5)
    assert float(kd_loss(s, t, temperature=3.0)) == pytest.approx(_hand_kd(s, t, None, 3.0, 0.5), rel=1e-5)
    # a tiny worked example: two tokens, T = 2, student uniform, teacher sure of token 0
    s1, t1 = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0) * 2, 0.0]])  # teacher_T = (3/4, 1/4)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(kd_loss(s1, t1, temperature=2.0)) == pytest.approx(4 * kl, rel=1e-6)


def test_kd_loss_gradient_matches_finite_differences_and_masked_positions_get_none():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([[1, 3, -100], [0, 2, 1]])
    assert torch.autograd.gradcheck(lambda x: kd_loss(x, t, y, temperature=2.5, alpha=0.4), (s,))
    kd_loss(s, t, y).backward()
    assert s.grad[0, 2].abs().max() == 0 and s.grad[0, 1].abs().max() > 0


def test_kd_loss_is_zero_for_identical_logits_without_labels_and_keeps_the_gradient_scale():
    z = torch.randn(3, 7)
    assert float(kd_loss(z, z.clone())) == pytest.approx(0.0, abs=1e-6)
    # the T² factor: the soft term's gradient has about the same size at T = 1 and T = 8 for small logits
    s = (0.01 * torch.randn(4, 6)).requires_grad_()
    t = 0.01 * torch.randn(4, 6)
    norms = []
    for T in (1.0, 8.0):
        (grad,) = torch.autograd.grad(kd_loss(s, t, temperature=T), s)
        norms.append(float(grad.norm()))
    # d(T² KL)/dz_s = T (p_s - p_t), and p_s - p_t ~ Δz / (V T) for small logits: the T's cancel
    assert norms[1] == pytest.approx(norms[0], rel=0.05)
    (plain,) = torch.autograd.grad(kd_loss(s, t, temperature=8.0) / 64, s)  # without T² it would shrink 64x
    assert float(plain.norm()) == pytest.approx(norms[0] / 64, rel=0.05)


def test_kd_loss_errors():
    s, t = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="temperature: expected a number > 0"):
        kd_loss(s, t, temperature=0)
    with pytest.raises(ValueError, match="alpha: expected a probability"):
        kd_loss(s, t, alpha=1.5)
    with pytest.raises(ValueError, match="vocabulary of 6 does not match the student's 5"):
        kd_loss(s, torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="shape"):
        kd_loss(s, torch.randn(2, 4, 5))
    with pytest.raises(ValueError, match="labels: shape"):
        kd_loss(s, t, torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="every position is ignore_index"):
        kd_loss(s, t, torch.full((2, 3), -100))
    with pytest.raises(ValueError, match="labels: ids must lie in"):
        kd_loss(s, t, torch.full((2, 3), 5))
    with pytest.raises(TypeError, match="student_logits: expected a floating-point tensor"):
        kd_loss(torch.zeros(2, 3, 5, dtype=torch.long), t)
    with pytest.raises(TypeError, match="labels: expected an integer tensor"):
        kd_loss(s, t, torch.zeros(2, 3))


@torch.no_grad()
def test_hidden_state_loss():
    loss = HiddenStateDistillLoss(4, 6)
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 6)
    value = loss(s, t)
    assert value.shape == () and float(value.detach()) > 0
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    manual = ((loss.proj(s) - t).pow(2).mean(-1) * mask).sum() / 3
    assert float(loss(s, t, mask)) == pytest.approx(float(manual), rel=1e-6)
    same = HiddenStateDistillLoss(4, 4)
    assert float(same(s, s)) == 0.0  # identity projection at the start
    assert float(loss([s, s], [t, t])) == pytest.approx(float(value), rel=1e-6)
    with pytest.raises(ValueError, match="student_hidden: last dim 6, expected student_dim=4"):
        loss(t, t)
    with pytest.raises(ValueError, match="positions"):
        loss(s, torch.randn(2, 4, 6))


# --- the trainer, on tiny random Llamas -----------------------------------------------------------

def _teacher(vocab=64):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_make_student_shapes_and_init_from_teacher():
    teacher = _teacher()
    st = make_student(teacher, num_layers=2, hidden_size=16, intermediate_size=32, num_attention_heads=2,
                      num_key_value_heads=1)
    assert (st.config.num_hidden_layers, st.config.hidden_size, st.config.head_dim) == (2, 16, 8)
    assert st.config.vocab_size == teacher.config.vocab_size and teacher.config.num_hidden_layers == 4
    assert st(input_ids=torch.zeros(1, 5, dtype=torch.long)).logits.shape == (1, 5, 64)
    init = make_student(teacher, num_layers=2, init_from_teacher=True)  # keeps layers 0 and 3
    assert torch.equal(init.model.layers[1].mlp.up_proj.weight, teacher.model.layers[3].mlp.up_proj.weight)
    assert torch.equal(init.model.embed_tokens.weight, teacher.model.embed_tokens.weight)
    with pytest.raises(ValueError, match="init_from_teacher: only for a student with the teacher's width"):
        make_student(teacher, hidden_size=16, num_attention_heads=2, init_from_teacher=True)
    with pytest.raises(ValueError, match="hidden_size: 30 is not a multiple"):
        make_student(teacher, hidden_size=30)
    with pytest.raises(TypeError, match="teacher: expected a Llama config or model"):
        make_student("llama")


def test_trainer_distils_keeps_the_teacher_frozen_and_refuses_other_vocabularies():
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    stream = torch.randint(0, 64, (2000,), generator=torch.Generator().manual_seed(0))
    batches = random_windows(stream, 4, 16, 6, seed=0)
    losses = {}
    for alpha in (0.0, 0.5, 1.0):
        st = make_student(teacher, num_layers=1, hidden_size=16, num_attention_heads=2, num_key_value_heads=1)
        tr = DistillationTrainer(st, teacher, alpha=alpha, lr=1e-2, warmup_steps=2, hidden_weight=0.5 * (alpha == 1))
        h = tr.fit(batches, steps=12, progress=False)
        losses[alpha] = [r["loss"] for r in h["train"]]
        assert len(losses[alpha]) == 12 and losses[alpha][-1] < losses[alpha][0]
        assert not teacher.training and all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
        assert all(p.requires_grad for p in teacher.parameters())  # restored
    with pytest.raises(ValueError, match="teacher: predicts over 64 tokens but the student over 80"):
        DistillationTrainer(make_student(_teacher(80)), teacher)
    with pytest.raises(ValueError, match="student: is the teacher itself"):
        DistillationTrainer(teacher, teacher)
    with pytest.raises(ValueError, match="alpha"):
        DistillationTrainer(make_student(teacher), teacher, alpha=-0.1)
    with pytest.raises(ValueError, match="tokenizer: needed"):
        DistillationTrainer(make_student(teacher), teacher, eval_every=5)


def test_check_same_tokenizer_compares_vocabularies():
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return self.vocab

    teacher = _teacher()
    check_same_tokenizer(teacher, teacher, Tok({"a": 0}), Tok({"a": 0}))
    with pytest.raises(ValueError, match="teacher_tokenizer: its vocabulary differs"):
        check_same_tokenizer(teacher, teacher, Tok({"a": 0}), Tok({"b": 0}))


def test_train_distillation_loss_is_kd_loss_at_temperature_one():
    teacher = _teacher()
    st = make_student(teacher, num_layers=1)
    x = torch.randint(0, 64, (2, 8))
    want = kd_loss(st(input_ids=x).logits, teacher(input_ids=x).logits, temperature=1.0)
    assert float(distillation_loss(st, teacher, x)) == pytest.approx(float(want), rel=1e-6)
