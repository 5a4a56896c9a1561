"""keep_freed_memory: a step's freed activations are reused without page faults (glibc)."""
import platform
import resource

import pytest
import torch

from tutx.engine.cpu_memory import keep_freed_memory

glibc = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                           reason="malloc's settings are glibc's")


def _faults_over_steps(steps: int = 12, mb: int = 10) -> int:
    """Minor page faults while allocating, filling and freeing ``mb`` MB ``steps`` times (a step's activations)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        buf = torch.empty(mb << 18)  # mb MB of float32
        buf.fill_(1.0)
        del buf
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc
def test_freed_memory_is_reused_without_page_faults():
    pages = (10 << 20) // 4096  # one 10 MB buffer's pages
    try:
        assert keep_freed_memory(False) is True
        _faults_over_steps(2)
        assert _faults_over_steps() > 8 * pages  # glibc's defaults: mapped afresh every time
        assert keep_freed_memory() is True
        _faults_over_steps(2)
        assert _faults_over_steps() < pages  # kept in the heap: faulted in once, then reused
    finally:
        keep_freed_memory()


def test_bad_argument_raises():
    with pytest.raises(TypeError, match=r"^enabled: expected a bool"):
        keep_freed_memory("yes")


@glibc
def test_a_cpu_engine_sets_it():
    from tutx.engine import EngineConfig, LLMEngine
    from tutx.models import load_tiny

    model, tok = load_tiny()
    keep_freed_memory(False)
    try:
        LLMEngine(model, tok, EngineConfig(max_num_seqs=2, num_blocks=8))
        assert _faults_over_steps(2) >= 0 and _faults_over_steps() < (10 << 20) // 4096
    finally:
        keep_freed_memory()
