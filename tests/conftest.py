"""Test-session set-up shared by every test.

On a machine without CUDA, Triton kernels are exercised through Triton's interpreter on CPU
tensors. Triton decides at *definition* time whether a ``@triton.jit`` function is interpreted,
so the variable is set here, before any ``tutx.kernels`` module is imported. (Notebooks run in
their own ``pytest --nbval`` invocation without it: the interpreter is for tests, not readers.)
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    import pytest

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


import pytest  # noqa: E402


@pytest.fixture(scope="module")
def one_thread():
    """Tiny-model tests: on a shared 2-core machine one torch thread is often many times faster than two.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``; the thread count is restored.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
