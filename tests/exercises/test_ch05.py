"""Chapter 5's checks accept right answers, reject wrong ones and say "not solved yet" to stubs."""
import pytest
import torch

from tutx.exercises import ch05
from tutx.kernels._triton import tl, triton


@triton.jit
def _add_relu_kernel_64(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    s = tl.load(x_ptr + offs, mask=mask) + tl.load(y_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, tl.where(s > 0, s, 0.0), mask=mask)


@triton.jit
def _add_relu_kernel_unmasked(x_ptr, y_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    s = tl.load(x_ptr + offs) + tl.load(y_ptr + offs)
    tl.store(out_ptr + offs, tl.maximum(s, 0.0))


def _launch(kernel, grid_fn):
    def add_relu(x, y):
        out = torch.empty_like(x)
        kernel[(grid_fn(x.numel()),)](x, y, out, x.numel(), BLOCK=64)
        return out
    return add_relu


def test_a_kernel_with_another_block_size_passes(capsys):
    ch05.check_fused_add_relu(_launch(_add_relu_kernel_64, lambda n: triton.cdiv(n, 64)))
    assert "✅" in capsys.readouterr().out


def test_too_few_programs_leave_the_tail_unwritten():
    with pytest.raises(AssertionError, match="check_fused_add_relu: case"):
        ch05.check_fused_add_relu(_launch(_add_relu_kernel_64, lambda n: max(1, n // 64)))


def test_column_shard_rejects_the_row_split_and_names_the_case():
    def row_split(weight, bias, world_size, rank):
        k = weight.shape[1] // world_size
        return weight[:, rank * k:(rank + 1) * k], bias
    with pytest.raises(AssertionError, match=r"check_column_shard: case 1/.*shape"):
        ch05.check_column_shard(row_split)


def test_collective_and_bucket_accept_independent_answers(capsys):
    ch05.check_recombine_collective(lambda split: "all_gather" if split == "column" else "all_reduce")
    ch05.check_graph_bucket(lambda b, sizes: min((s for s in sizes if s >= b), default=None))
    assert capsys.readouterr().out.count("✅") == 2
    with pytest.raises(AssertionError, match="check_graph_bucket"):
        ch05.check_graph_bucket(lambda b, sizes: max(sizes))


def test_only_checks_are_public():
    assert ch05.__all__ == ["check_fused_add_relu", "check_column_shard", "check_recombine_collective",
                            "check_graph_bucket"]
