"""Chapter 3's checks accept right answers, say "not solved yet" for stubs, and reject wrong ones."""
import pytest
import torch

import tutx.exercises
from tutx.exercises import ch03

EPS = torch.finfo(torch.float32).eps


def per_channel_int8(w):
    scale = (w.abs().amax(dim=1) / 127).clamp(min=EPS)  # [N]
    codes = torch.clamp(torch.round(w / scale[:, None]), -127, 127).to(torch.int8)  # [N, K]
    return codes, scale


def per_channel_int8_no_eps(w):
    """Wrong for an all-zero row: scale 0, codes 0/0."""
    scale = w.abs().amax(dim=1) / 127
    return torch.clamp(torch.round(w / scale[:, None]).nan_to_num(0), -127, 127).to(torch.int8), scale


def per_tensor_int8(w):
    scale = (w.abs().max() / 127).clamp(min=EPS)
    return torch.round(w / scale).to(torch.int8), scale.expand(w.shape[0]).clone()


def pack(codes):
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def pack_high_first(codes):
    return (codes[:, 0::2] << 4) | codes[:, 1::2]


def unpack(packed):
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def stub(x):
    ...


def test_ch03_loads_lazily():
    assert tutx.exercises.ch03 is ch03


def test_correct_solutions_pass(capsys):
    ch03.check_quantize_per_channel_int8(per_channel_int8)
    ch03.check_pack_int4(pack)
    ch03.check_unpack_int4(unpack)
    out = capsys.readouterr().out
    assert "✅ check_quantize_per_channel_int8: all 5 cases passed" in out
    assert "✅ check_pack_int4: all 4 cases passed" in out
    assert "✅ check_unpack_int4: all 4 cases passed" in out


def test_multiplying_by_the_reciprocal_passes_too(capsys):
    def by_reciprocal(w):
        codes, scale = per_channel_int8(w)
        return torch.clamp(torch.round(w * scale.reciprocal()[:, None]), -127, 127).to(torch.int8), scale

    ch03.check_quantize_per_channel_int8(by_reciprocal)
    assert "✅" in capsys.readouterr().out


@pytest.mark.parametrize("check", [ch03.check_quantize_per_channel_int8, ch03.check_pack_int4, ch03.check_unpack_int4])
def test_stubs_are_not_solved_yet(check, capsys):
    check(stub)  # does not raise
    assert "not solved yet" in capsys.readouterr().out


def test_wrong_answers_name_the_case():
    with pytest.raises(AssertionError, match=r"check_quantize_per_channel_int8: case 4/5 .*output 1: values differ"):
        ch03.check_quantize_per_channel_int8(per_channel_int8_no_eps)
    with pytest.raises(AssertionError, match=r"check_quantize_per_channel_int8: case 1/5 .*output 0: values differ"):
        ch03.check_quantize_per_channel_int8(per_tensor_int8)
    with pytest.raises(AssertionError, match=r"case 1/5 .*returned 1 value\(s\), expected 2"):
        ch03.check_quantize_per_channel_int8(lambda w: per_channel_int8(w)[0])
    with pytest.raises(AssertionError, match=r"case 1/5 .*output 0 returned .*torch.float32, expected .*torch.int8"):
        ch03.check_quantize_per_channel_int8(lambda w: (per_channel_int8(w)[0].float(), per_channel_int8(w)[1]))
    with pytest.raises(AssertionError, match=r"check_pack_int4: case 1/4 .*values differ"):
        ch03.check_pack_int4(pack_high_first)
    with pytest.raises(AssertionError, match=r"check_unpack_int4: case 1/4 .*values differ"):
        ch03.check_unpack_int4(lambda p: unpack(p).flip(-1))
    with pytest.raises(AssertionError, match=r"check_pack_int4: case 1/4 .*raised"):
        ch03.check_pack_int4(lambda c: c.view(3))


def test_not_a_function():
    with pytest.raises(TypeError, match="check_pack_int4\\(fn\\): expected a function"):
        ch03.check_pack_int4("pack")
