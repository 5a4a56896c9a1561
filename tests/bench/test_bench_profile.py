"""torch.profiler around a call and around one decode step: top operators, trace, breakdown."""
import json

import pytest
import torch

from _tiny_llama import tiny_llama
from tutx.bench.profile import Profile, decode_step_breakdown, profile_call


def test_profile_call_tables_the_top_operators_and_writes_a_trace(tmp_path):
    a = torch.randn(64, 64)
    prof = profile_call(lambda: (a @ a).relu(), top=3, trace_path=tmp_path / "t" / "trace.json", device="cpu")
    assert isinstance(prof, Profile) and 1 <= len(prof.top_ops) <= 3
    assert {"op", "calls", "self_ms", "self_pct"} <= set(prof.top_ops[0])
    assert any(r["op"] in ("aten::mm", "aten::matmul") for r in prof.top_ops)
    assert prof.top_ops == sorted(prof.top_ops, key=lambda r: -r["self_ms"])
    assert "traceEvents" in json.loads(prof.trace_path.read_text())


def test_decode_step_breakdown_adds_up_to_the_wall_time(tmp_path):
    model = tiny_llama()
    prof = decode_step_breakdown(model, batch=2, prompt_len=6, trace_path=tmp_path / "decode.json")
    parts = prof.breakdown
    assert list(parts) == ["attention", "matmuls", "sampling", "other ops", "python overhead"]
    assert parts["matmuls"] > 0 and parts["attention"] > 0 and parts["sampling"] > 0
    assert sum(parts.values()) == pytest.approx(prof.wall_ms, rel=0.05)
    rows = prof.breakdown_rows()
    assert sum(r["share_pct"] for r in rows) == pytest.approx(100, rel=0.05)
    assert prof.trace_path.is_file()
    # the step is repeatable: the cache was cropped back to the prompt each time
    again = decode_step_breakdown(model, batch=2, prompt_len=6)
    assert again.trace_path is None and again.wall_ms > 0


@pytest.mark.parametrize("call, exc, match", [
    (lambda: profile_call(3), TypeError, "fn"),
    (lambda: profile_call(lambda: None, top=0), ValueError, "top"),
    (lambda: decode_step_breakdown(tiny_llama(layers=1), batch=0), ValueError, "batch"),
    (lambda: decode_step_breakdown(tiny_llama(layers=1), prompt_len=-2), ValueError, "prompt_len"),
])
def test_profile_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
