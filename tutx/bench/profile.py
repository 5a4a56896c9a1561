"""Profile first: ``torch.profiler`` around one model forward or one engine step.

:func:`profile_call` runs a callable under the profiler and returns a :class:`Profile`: the top
operators by self time (a table of row dicts), and a Chrome trace written to disk (open it in
``chrome://tracing`` or https://ui.perfetto.dev). :func:`decode_step_breakdown` profiles one
decode step of a Hugging Face causal LM and splits its time into attention (the attention core:
scores, softmax, weighted sum, rotary embedding, cache update), matmuls (every matrix product,
the attention's projections included), sampling (choosing the next
token from the logits), other operators, and Python/framework overhead (the wall time not spent
inside any operator: the interpreter, module calls, the dispatcher). The profiler's own
bookkeeping inflates the overhead share a little; the split is a guide to where to look, not a
stopwatch.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from tutx._validate import check_int, check_positive_int
from tutx.bench.model import cache_kwarg, output_cache

MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::baddbmm"}
_LABELS = {"attention", "sampling", "step"}


@dataclass
class Profile:
    """What :func:`profile_call` measured: top operators by self time, and where the trace went."""

    top_ops: list  # [{op, calls, self_ms, self_pct}]
    wall_ms: float
    trace_path: Path | None
    breakdown: dict = field(default_factory=dict)  # category -> ms (decode_step_breakdown only)

    def breakdown_rows(self) -> list[dict]:
        """The breakdown as table rows ``{part, ms, share}`` (share of the wall time, %)."""
        return [{"part": k, "ms": v, "share_pct": 100 * v / self.wall_ms} for k, v in self.breakdown.items()]


def _self_us(evt, cuda: bool) -> float:
    return evt.self_device_time_total if cuda else evt.self_cpu_time_total


@contextmanager
def quiet_native_stderr():
    """Silence file descriptor 2 (the profiler's C++ start/stop log lines); Python's ``sys.stderr`` is untouched."""
    try:
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 (some embedded interpreters)
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _run_profiled(fn: Callable, device: torch.device, warmup: int):
    cuda = device.type == "cuda"
    for _ in range(warmup):
        fn()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with quiet_native_stderr(), profile(activities=activities) as prof:
        t0 = time.perf_counter()
        with record_function("step"):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    return prof, wall


def _top(prof, cuda: bool, top: int) -> list[dict]:
    avgs = [a for a in prof.key_averages() if a.key not in _LABELS]
    total = sum(_self_us(a, cuda) for a in avgs) or 1.0
    avgs.sort(key=lambda a: _self_us(a, cuda), reverse=True)
    return [{"op": a.key, "calls": a.count, "self_ms": _self_us(a, cuda) / 1e3, "self_pct": 100 * _self_us(a, cuda) / total}
            for a in avgs[:top]]


def profile_call(fn: Callable[[], object], *, trace_path: str | Path | None = None, top: int = 10, warmup: int = 1,
                 device: str | torch.device | None = None) -> Profile:
    """Profile one call of ``fn()`` (after ``warmup`` unprofiled calls): top ``top`` operators by self
    time (CPU time on the CPU, device time on CUDA), the wall time, and a Chrome trace at ``trace_path``."""
    if not callable(fn):
        raise TypeError(f"fn: expected a callable, got {type(fn).__name__}")
    check_positive_int("top", top)
    check_int("warmup", warmup, minimum=0)
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    prof, wall = _run_profiled(fn, device, warmup)
    path = None
    if trace_path is not None:
        path = Path(trace_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(path))
    return Profile(_top(prof, device.type == "cuda", top), wall * 1e3, path)


def _attention_modules(model) -> list:
    return [m for m in model.modules() if type(m).__name__.endswith("Attention")]


def decode_step_breakdown(model, batch: int = 1, prompt_len: int = 32, *, trace_path: str | Path | None = None,
                          top: int = 10, seed: int = 0) -> Profile:
    """Profile one greedy decode step of ``model`` (a HF causal LM; KV cache of ``prompt_len`` tokens)
    and split its wall time into ``attention``, ``matmuls``, ``sampling``, ``other ops`` and
    ``python overhead``. Attention is what runs inside modules whose class name ends in ``Attention``."""
    check_positive_int("batch", batch)
    check_positive_int("prompt_len", prompt_len)
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), generator=gen).to(device)  # [B, P]
    with torch.inference_mode():
        prefill = model(ids, use_cache=True)
    cache, kw = output_cache(prefill), cache_kwarg(model)
    token = prefill.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]

    def step():
        extra = cache.get_seq_length() - prompt_len
        if extra > 0:
            cache.crop(-extra)  # the same step each time: the cache back to the prompt
        with torch.inference_mode():
            logits = model(token, **{kw: cache}, use_cache=True).logits
            with record_function("sampling"):
                return logits[:, -1].argmax(-1, keepdim=True)

    ranges: list = []
    handles = []
    for m in _attention_modules(model):
        handles.append(m.register_forward_pre_hook(lambda mod, args: ranges.append(record_function("attention").__enter__())))
        handles.append(m.register_forward_hook(lambda mod, args, out: ranges.pop().__exit__(None, None, None)))
    try:
        prof, wall = _run_profiled(step, device, warmup=1)
    finally:
        for h in handles:
            h.remove()
    events = list(prof.events())
    spans = {lab: [(e.time_range.start, e.time_range.end) for e in events if e.name == lab] for lab in ("attention", "sampling")}

    def inside(e, label):
        return any(s <= e.time_range.start and e.time_range.end <= t for s, t in spans[label])

    parts = {"attention": 0.0, "matmuls": 0.0, "sampling": 0.0, "other ops": 0.0}
    for e in events:
        if e.name in _LABELS:
            continue
        us = _self_us(e, cuda)
        if e.name in MATMUL_OPS:  # the projections inside attention too
            parts["matmuls"] += us
        elif inside(e, "attention"):
            parts["attention"] += us
        elif inside(e, "sampling"):
            parts["sampling"] += us
        else:
            parts["other ops"] += us
    breakdown = {k: v / 1e3 for k, v in parts.items()}
    breakdown["python overhead"] = max(0.0, wall * 1e3 - sum(breakdown.values()))
    path = None
    if trace_path is not None:
        path = Path(trace_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(path))
    return Profile(_top(prof, cuda, top), wall * 1e3, path, breakdown)
