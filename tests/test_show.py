import pytest

import tutx
from tutx.bench import timeit


def test_show_prints_the_real_source(capsys):
    assert tutx.show(timeit) is None  # a notebook must not show the source twice
    out = capsys.readouterr().out
    src = tutx.show(timeit, print_it=False)
    assert src.startswith("def timeit(") and "perf_counter" in src
    assert out.strip() == src.strip()


def test_show_classes_and_quiet_mode(capsys):
    src = tutx.show(tutx.bench.Timing, print_it=False)
    assert src.startswith("@dataclass") and "class Timing" in src
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("bad", ["timeit", 3, None])
def test_show_rejects_non_code(bad):
    with pytest.raises(TypeError, match="show\\(obj\\)"):
        tutx.show(bad)


def test_show_unwraps_triton_kernels(capsys):
    from tutx.kernels import attention

    tutx.show(attention.flash_attention_kernel)  # autotuned @triton.jit: the Python source underneath
    assert "def flash_attention_kernel" in capsys.readouterr().out
