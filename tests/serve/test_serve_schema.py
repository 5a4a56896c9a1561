"""schemathesis against the app's own OpenAPI schema: no generated request gets a 5xx.

Hypothesis drives each operation's schemathesis strategy directly (schemathesis' pytest plugin
does not load under this pytest); the check is the same: no status >= 500.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tutx.serve import ServerConfig, create_app

from _serve_helpers import make_engine, thread_server


@pytest.fixture(scope="module")
def served(tiny):
    # A short context keeps generated requests cheap (max_tokens beyond it is a 400, not a long run).
    app = create_app(make_engine(tiny, max_model_len=48, max_num_seqs=8), ServerConfig(max_n=4, max_queued=64))
    with thread_server(app) as url:
        yield url, schemathesis.openapi.from_url(f"{url}/openapi.json")


def test_no_server_errors(served):
    url, schema = served
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/tokenize"}
    seen = []
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=20, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call(base_url=url, timeout=30)
            seen.append(response.status_code)
            assert response.status_code < 500, (op.path, case.body, response.text[:300])

        run()
    assert len(seen) >= 2 * len(operations) and any(code == 200 for code in seen)
