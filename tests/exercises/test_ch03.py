"""Chapter 3's checks accept right answers, say "not solved yet" for stubs, and reject wrong ones."""
import pytest
import torch

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


def test_multiplying_by_the_reciprocal_passes_too(capsys):
    def by_reciprocal(w):
        codes, scale = per_channel_int8(w)
        return torch.clamp(torch.round(w * scale.reciprocal()[:, None]), -127, 127).to(torch.int8), scale

    ch03.check_quantize_per_channel_int8(by_reciprocal)
    assert "✅" in capsys.readouterr().out


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


# ------------------------------------------------------------------ the build-it exercises
def _ste_forward(w, scale, zero, qmin, qmax):
    return scale * (torch.clamp(torch.round(w / scale) + zero, qmin, qmax) - zero)


def test_ste_needs_a_straight_through_gradient():
    with pytest.raises(AssertionError, match=r"check_fake_quant_ste: case 1/4 .*output 1: values differ"):
        ch03.check_fake_quant_ste(_ste_forward)  # autograd through round: zero gradient everywhere

    def detached(w, scale, zero, qmin, qmax):
        with torch.no_grad():
            return _ste_forward(w, scale, zero, qmin, qmax)

    with pytest.raises(AssertionError, match="carries no gradient"):
        ch03.check_fake_quant_ste(detached)


def test_ste_with_an_identity_gradient_everywhere_fails_where_weights_are_clipped():
    reference, wrong = ch03.CONTRACT["check_fake_quant_ste"]
    with pytest.raises(AssertionError, match=r"case 2/4 .*output 1: values differ"):  # case 1 clips nothing
        ch03.check_fake_quant_ste(wrong)


def test_mse_clip_search(capsys):
    reference, wrong = ch03.CONTRACT["check_mse_clip_scale"]
    ch03.check_mse_clip_scale(reference)
    assert "✅ check_mse_clip_scale: all 4 cases passed" in capsys.readouterr().out

    def coarse_grid(w, bits):  # only every tenth ratio: misses the optimum
        qmax = 2 ** (bits - 1) - 1
        cands = [k / 100 * float(w.abs().max()) / qmax for k in range(20, 101, 10)]
        errs = [float(((s * torch.clamp(torch.round(w / s), -qmax, qmax) - w) ** 2).mean()) for s in cands]
        s = cands[errs.index(min(errs))]
        return s * torch.clamp(torch.round(w / s), -qmax, qmax)

    with pytest.raises(AssertionError, match="check_mse_clip_scale: case"):
        ch03.check_mse_clip_scale(coarse_grid)


def test_public_names_are_the_checks():
    assert all(n.startswith("check_") for n in ch03.__all__) and set(ch03.CONTRACT) == set(ch03.__all__)
