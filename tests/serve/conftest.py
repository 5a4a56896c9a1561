"""Fixtures of the serving tests: the tiny model, and an engine + server in this process."""
from __future__ import annotations

import pytest
import torch

from _serve_helpers import make_engine, thread_server


@pytest.fixture(scope="module")
def tiny():
    from tutx.models import load_tiny

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_tiny()
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def server(tiny):
    """``(url, engine, app)``: the default server on the tiny LM, in a thread of this process."""
    from tutx.serve import ServerConfig, create_app

    engine = make_engine(tiny)
    app = create_app(engine, ServerConfig(max_queued=32))
    with thread_server(app) as url:
        yield url, engine, app
