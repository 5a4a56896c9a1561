"""Measure launch overhead and what static-shape decode (``enforce_eager=False``) removes.

Two measurements, used by ``scripts/engine_graphs.py`` (CPU) and the GPU check
(``scripts/gpu_checks/engine.py``):

- :func:`profile_decode_step`: one decode step of the engine under ``torch.profiler``: its wall
  time, the time spent inside operators (CPU self time, or CUDA kernel time on a GPU) and the
  number of operator calls. The rest of the wall time is Python and dispatch — the overhead.
- :func:`compare_forward`: the decode forward pass alone, eager against static-shape, call by call.
- :func:`compare_decode`: the same greedy requests through an eager engine and a graph/compiled
  one, interleaved rounds; decode tokens per second of each (decode steps only, from the
  engine's own step records) and whether the tokens are identical.
"""
from __future__ import annotations

import statistics
import time

import torch

from tutx.engine.config import EngineConfig
from tutx.engine.llm_engine import LLMEngine
from tutx.engine.sampling import SamplingParams
from tutx.bench.profile import quiet_native_stderr as _quiet_stderr  # the profiler's C++ start/stop lines


def _prompts(ids: list[int], batch: int, prompt_len: int) -> list[list[int]]:
    return [ids[(300 * i) % (len(ids) - prompt_len):][:prompt_len] for i in range(batch)]


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


# The engine's PyTorch path: every layer as PyTorch operators (no C kernels, no prepacked weights on
# a CPU), the path that static shapes (CUDA graphs, torch.compile) speed up.
PYTORCH_PATH = {"attention_backend": "sdpa", "prepack_weights": False}


def profile_decode_step(model, ids: list[int], batch: int, prompt_len: int = 32, steps: int = 10,
                        **config) -> dict:
    """Profile ``steps`` eager decode steps of ``batch`` sequences (after ``prompt_len`` prompt tokens).

    The engine runs its PyTorch path (:data:`PYTORCH_PATH`) unless ``config`` says otherwise.
    """
    from torch.profiler import ProfilerActivity, profile

    device = next(model.parameters()).device
    config = {**PYTORCH_PATH, **config} if device.type == "cpu" else config
    engine = LLMEngine(model, None, EngineConfig(max_num_seqs=max(batch, 1), **config))
    for p in _prompts(ids, batch, prompt_len):
        engine.add_request(p, SamplingParams(max_tokens=steps + 8, temperature=0.0, ignore_eos=True))
    engine.step()  # the prefill
    seqs, _ = engine.scheduler.schedule()  # a decode batch, its blocks allocated
    runner = engine.runner
    with torch.inference_mode():
        for _ in range(3):
            runner.run(seqs, False)
        _sync(device)
        cuda = device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        with _quiet_stderr(), profile(activities=activities) as prof:
            start = time.perf_counter()
            for _ in range(steps):
                runner.run(seqs, False)
            _sync(device)
            wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    if cuda:
        busy = sum(getattr(e, "self_device_time_total", 0) for e in events) / steps / 1e6
        calls = sum(e.count for e in events if getattr(e, "self_device_time_total", 0) > 0) / steps
    else:
        busy = sum(e.self_cpu_time_total for e in events) / steps / 1e6
        calls = sum(e.count for e in events) / steps
    return {"batch": batch, "step_ms": wall * 1e3, "op_ms": busy * 1e3, "op_calls": calls,
            "overhead_frac": max(0.0, 1 - busy / wall),
            "op_time": "CUDA kernel time" if cuda else "CPU self time of the operators"}


def compare_forward(model, ids: list[int], batch: int, prompt_len: int = 32, repeats: int = 30) -> dict:
    """The decode *forward pass* alone (no scheduling, no sampling): eager against static-shape,
    interleaved call by call on the same batch, medians; plus the largest logit difference."""
    engine = LLMEngine(model, None, EngineConfig(max_num_seqs=batch, enforce_eager=False, graph_batch_sizes=(batch,)))
    for p in _prompts(ids, batch, prompt_len):
        engine.add_request(p, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True))
    engine.step()  # the prefill
    seqs, _ = engine.scheduler.schedule()
    runner, graphs = engine.runner, engine.runner.graphs
    device = runner.device
    with torch.inference_mode():
        meta = runner._prepare_decode(seqs)
        start = time.perf_counter()
        static = graphs(meta)  # compiles or captures
        warmup = time.perf_counter() - start
        eager = runner.decode_logits(meta)
        times = {True: [], False: []}
        for _ in range(repeats):  # the same step again and again: it rewrites the same cache slots
            for is_eager in (True, False):
                _sync(device)
                start = time.perf_counter()
                runner.decode_logits(meta) if is_eager else graphs(meta)
                _sync(device)
                times[is_eager].append(time.perf_counter() - start)
    eager_ms, static_ms = (statistics.median(times[k]) * 1e3 for k in (True, False))
    return {"batch": batch, "backend": type(graphs).__name__, "eager_ms": eager_ms, "static_ms": static_ms,
            "speedup": eager_ms / static_ms, "max_abs_logit_diff": (static.float() - eager).abs().max().item(),
            "same_argmax": bool(torch.equal(static.argmax(-1), eager.argmax(-1))), "warmup_s": warmup,
            "num_compiles": getattr(graphs, "num_compiles", None), "repeats": repeats}


def compare_decode(model, ids: list[int], batch: int, prompt_len: int = 32, max_tokens: int = 32,
                   rounds: int = 3, **config) -> dict:
    """Decode tokens/s of an eager and a static-shape engine (``enforce_eager=False``), interleaved.

    The first round of the static engine compiles or captures (its time is ``warmup_s``); the
    medians are over the ``rounds`` rounds after it. Both run the engine's PyTorch path
    (:data:`PYTORCH_PATH` on a CPU), so the comparison is about static shapes alone.
    """
    config = {**PYTORCH_PATH, **config} if next(model.parameters()).device.type == "cpu" else config
    prompts = _prompts(ids, batch, prompt_len)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    engines = {eager: LLMEngine(model, None, EngineConfig(max_num_seqs=batch, enforce_eager=eager, **config))
               for eager in (True, False)}
    rates, tokens, warmup = {True: [], False: []}, {}, {}
    for r in range(rounds + 1):
        for eager, engine in engines.items():
            decode = []
            engine.add_step_hook(hook := lambda s, d=decode: d.append(s) if not s.is_prefill else None)
            start = time.perf_counter()
            out = engine.generate(prompts, params)
            if r == 0:
                warmup[eager] = time.perf_counter() - start
                tokens[eager] = [o.token_ids for o in out]
            else:
                rates[eager].append(sum(s.num_tokens for s in decode) / sum(s.duration_s for s in decode))
            engine.remove_step_hook(hook)
    graphs = engines[False].runner.graphs
    eager_rate, graph_rate = statistics.median(rates[True]), statistics.median(rates[False])
    return {"batch": batch, "backend": type(graphs).__name__ if graphs is not None else "eager",
            "eager_tok_s": eager_rate, "graph_tok_s": graph_rate, "speedup": graph_rate / eager_rate,
            "identical": tokens[True] == tokens[False], "warmup_s": warmup[False],
            "num_compiles": getattr(graphs, "num_compiles", None),
            "eager_fallback_steps": getattr(graphs, "eager_steps", None), "rounds": rounds}


__all__ = ["profile_decode_step", "compare_forward", "compare_decode", "PYTORCH_PATH"]
