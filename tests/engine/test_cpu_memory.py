"""keep_freed_memory: a step's freed activations are reused without page faults (glibc)."""
import platform
import resource
import subprocess
import sys
from pathlib import Path

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


_FRESH = """
import sys
import torch
from tutx.engine.cpu_memory import keep_freed_memory
sys.path.insert(0, sys.argv[2])
from test_cpu_memory import _faults_over_steps
assert keep_freed_memory(sys.argv[1] == "keep") is True
if sys.argv[1] == "engine":  # glibc's defaults, then a CPU engine built
    from tutx.engine import EngineConfig, LLMEngine
    from tutx.models import load_tiny
    LLMEngine(*load_tiny(), EngineConfig(max_num_seqs=2, num_blocks=8))
_faults_over_steps(2)
print(_faults_over_steps())
"""


def _faults_in_a_fresh_process(setting: str) -> int:
    """In a new process: malloc's heap holds no large free chunk yet, which would serve a request
    without a fresh mapping whatever the settings (as it may in a long test session)."""
    done = subprocess.run([sys.executable, "-c", _FRESH, setting, str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=120, check=True)
    return int(done.stdout.split()[-1])


@glibc
def test_freed_memory_is_reused_without_page_faults():
    pages = (10 << 20) // 4096  # one 10 MB buffer's pages
    assert _faults_in_a_fresh_process("defaults") > 8 * pages  # glibc's defaults: mapped afresh every time
    assert _faults_in_a_fresh_process("keep") < pages  # kept in the heap: faulted in once, then reused


def test_bad_argument_raises():
    with pytest.raises(TypeError, match=r"^enabled: expected a bool"):
        keep_freed_memory("yes")


@glibc
def test_a_cpu_engine_sets_it():
    assert _faults_in_a_fresh_process("engine") < (10 << 20) // 4096
