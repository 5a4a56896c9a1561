"""Chapter 6's helpers: the step recorder and timeline grid, the load replay, the thread picker."""
import asyncio

import matplotlib
import pytest
import torch

from tutx.engine import EngineConfig, LLMEngine
from tutx.engine.cpu_threads import pick_cpu_threads
from tutx.engine.load import poisson_arrivals, replay
from tutx.engine.timeline import StepRecorder, plot_block_tables, plot_timeline, run_to_end, timeline_grid
from tutx.models import heldout_text, load_tiny

matplotlib.use("Agg")
pytestmark = pytest.mark.usefixtures("one_thread")


def test_recorder_and_timeline_grid_show_preemption():
    model, tok = load_tiny()
    ids = tok.encode(heldout_text()[:20000])
    requests = [(f"r{i}", ids[1000 * i: 1000 * i + p], n) for i, (p, n) in enumerate([(11, 6), (14, 9), (9, 12)])]
    engine = LLMEngine(model, tok, EngineConfig(max_num_seqs=3, block_size=4, num_blocks=11, max_model_len=64))
    rec = StepRecorder(engine)
    out = run_to_end(engine, requests)
    assert set(out) == {"r0", "r1", "r2"} and engine.scheduler.num_preemptions >= 1
    grid = timeline_grid(rec.steps, ["r0", "r1", "r2"])
    assert grid.shape == (3, len(rec)) and (grid == 4).any()  # someone was preempted
    assert (grid[:, 0] == 1).all()  # all three start in the first prefill
    assert sum(len(t) for t in rec.fullest().block_tables.values()) <= 11
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    plot_timeline(ax, rec.steps, ["r0", "r1", "r2"])
    plot_block_tables(rec.fullest().block_tables, 11, "tables")
    plt.close("all")


def test_replay_measures_latency_and_batches():
    arrivals = poisson_arrivals(12, rate=400.0, seed=1)
    assert arrivals[0] == 0 and arrivals == sorted(arrivals) and arrivals == poisson_arrivals(12, 400.0, seed=1)
    result = asyncio.run(replay(lambda batch: [2 * x for x in batch], list(range(12)), arrivals,
                                max_batch_size=4, max_wait_ms=20, units_per_item=3))
    assert 1 <= result["mean batch"] <= 4 and result["mean latency ms"] >= 0
    assert result["p90 latency ms"] >= 0 and result["units/s achieved"] > 0
    with pytest.raises(ValueError, match="arrivals"):
        asyncio.run(replay(lambda b: b, [1, 2], [0.0]))
    with pytest.raises(ValueError, match="rate"):
        poisson_arrivals(3, 0)


def test_pick_cpu_threads_keeps_one_when_not_clearly_faster():
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert pick_cpu_threads(lambda: None, margin=1000.0) == 1  # nothing is 1000x faster
        assert torch.get_num_threads() == 1
        assert pick_cpu_threads(lambda: None, device="cuda") == 1  # off the CPU: unchanged
    finally:
        torch.set_num_threads(n)
