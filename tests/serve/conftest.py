"""Fixtures of the serving tests: the tiny model, and an engine + server in this process."""
from __future__ import annotations

import pytest
import torch

from _serve_helpers import thread_server  # noqa: E402 (tests/serve is on sys.path through rootdir conftest)


@pytest.fixture(scope="module")
def tiny():
    from tutx.models import load_tiny

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_tiny()
    torch.set_num_threads(n)


def make_engine(tiny, **kw):
    from tutx.engine import EngineConfig, LLMEngine

    model, tok = tiny
    return LLMEngine(model, tok, EngineConfig(**{"max_num_seqs": 8, **kw}))


@pytest.fixture(scope="module")
def server(tiny):
    """``(url, engine, app)``: the default server on the tiny LM, in a thread of this process."""
    from tutx.serve import ServerConfig, create_app

    engine = make_engine(tiny)
    app = create_app(engine, ServerConfig(max_queued=32))
    with thread_server(app) as url:
        yield url, engine, app
