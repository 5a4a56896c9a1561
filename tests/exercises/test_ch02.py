"""Chapter 2's checks accept right answers, reject wrong ones, and their references agree with tutx.compress."""
import pytest
import torch

from tutx.compress import kd_loss
from tutx.exercises import ch02


def test_kd_loss_written_out_passes_and_without_t_squared_fails(capsys):
    def mine(s, t, labels, T, alpha):
        keep = labels != -100
        s, t = s[keep], t[keep]
        pt = torch.softmax(t / T, -1)
        kl = (pt * (torch.log_softmax(t / T, -1) - torch.log_softmax(s / T, -1))).sum(-1).mean()
        ce = torch.nn.functional.cross_entropy(s, labels[keep])
        return alpha * T * T * kl + (1 - alpha) * ce

    ch02.check_kd_loss(mine)
    assert "✅" in capsys.readouterr().out
    with pytest.raises(AssertionError):
        ch02.check_kd_loss(lambda s, t, labels, T, alpha: mine(s, t, labels, T, alpha) / (T * T) if T != 1 else
                           mine(s, t, labels, T, alpha) + 1)


def test_o_proj_reference_matches_the_llama_head_layout():
    """Zeroing heads' outputs before o_proj == o_proj on the kept columns only."""
    H, D, hidden = 4, 3, 10
    o_proj = torch.nn.Linear(H * D, hidden, bias=False)
    x = torch.randn(2, 5, H, D)  # [B, S, H, D], as LlamaAttention has it before reshape
    remove = [1, 3]
    masked = x.clone()
    masked[:, :, remove] = 0
    want = o_proj(masked.reshape(2, 5, H * D))
    cols = ch02._solution_o_proj_columns(H, D, remove)
    kept = x[:, :, [h for h in range(H) if h not in remove]].reshape(2, 5, -1)
    assert torch.allclose(kept @ o_proj.weight[:, cols].T, want, atol=1e-6)


def test_solutions_are_private_and_the_stub_is_not_solved(capsys):
    assert ch02.__all__ == ["check_kd_loss", "check_head_importance", "check_o_proj_columns"]
    assert ch02._solution_kd_loss is not kd_loss

    def stub(mask_grads):
        ...

    ch02.check_head_importance(stub)
    assert "not solved yet" in capsys.readouterr().out
