"""The offline suite: prefill and decode latency of a causal LM, separately, over a grid.

"Latency" mixes two regimes with different bottlenecks. **Prefill** processes the whole prompt in
one forward pass (compute-bound: many tokens per weight read); **decode** produces one token per
forward pass per sequence (memory-bound: all the weights, and the KV cache, read for a handful of
tokens). :func:`benchmark_model` times them apart for every point of a grid batch × prompt length
× generated length, repeats each point, and reports the median, the p10–p90 spread and a
bootstrap interval of the median, the throughput in tokens/s, and the memory split into weights,
KV cache and activations.

Timing is synchronised correctly: CUDA events around each phase on a GPU (and a synchronise
before reading them), ``perf_counter`` on the CPU — never a wall clock around an asynchronous
launch. ``cold_cache=True`` flushes the GPU's L2 before every timed phase (see
:mod:`tutx.bench.cache`). Works with any Hugging Face causal LM (``model(input_ids,
past_key_values=..., use_cache=True)``).
"""
from __future__ import annotations

import inspect
import itertools
import statistics
import time
from collections.abc import Sequence

import torch

from tutx._validate import check_bool, check_int, check_positive_int
from tutx.bench.cache import flush_l2
from tutx.bench.memory import peak_memory
from tutx.bench.stats import bootstrap_ci
from tutx.bench.tensor_memory import tensor_peak
from tutx.bench.timing import percentile
from tutx.models.kv import kv_cache_nbytes

MB = 2**20


def check_grid(name: str, values) -> list[int]:
    """A non-empty list of positive ints (a grid axis), or a clear error naming ``name``."""
    if isinstance(values, int) and not isinstance(values, bool):
        values = [values]
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name}: expected a list of positive ints, got {type(values).__name__} {values!r}")
    if not values:
        raise ValueError(f"{name}: expected at least one value, got an empty grid")
    return [check_positive_int(f"{name}[{i}]", v) for i, v in enumerate(values)]


def cache_kwarg(model) -> str:
    """The KV-cache argument of ``model.forward``: ``cache`` in transformers 5, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache in a model output, whichever name this transformers version gives it."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the model's parameters and buffers (tied weights counted once)."""
    seen, total = set(), 0
    for t in itertools.chain(model.parameters(), model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


class _Clock:
    """Marks on a timeline: CUDA events on a GPU (read after one synchronise), perf_counter elsewhere."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter())

    def seconds(self, i: int, j: int) -> float:
        a, b = self.marks[i], self.marks[j]
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


@torch.inference_mode()
def generate_timed(model, input_ids: torch.Tensor, gen_len: int, cold_cache: bool = False) -> dict:
    """One prefill and ``gen_len - 1`` greedy decode steps; ``{prefill_s, decode_s: [per step], cache}``.

    The prefill produces the first token; each decode step one more per sequence.
    """
    device = input_ids.device
    clock = _Clock(device)
    if cold_cache:
        flush_l2(device)
    clock.mark()
    out = model(input_ids, use_cache=True)
    clock.mark()
    cache, kw = output_cache(out), cache_kwarg(model)
    token = out.logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
    for _ in range(gen_len - 1):
        if cold_cache:
            flush_l2(device)
            clock.mark()  # after the flush: the flush is not timed
        out = model(token, **{kw: cache}, use_cache=True)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        clock.mark()
    clock.sync()
    decode = [clock.seconds(2 * i + 2 if cold_cache else i + 1, 2 * i + 3 if cold_cache else i + 2)
              for i in range(gen_len - 1)]
    return {"prefill_s": clock.seconds(0, 1), "decode_s": decode, "cache": cache}


def _stats(prefix: str, samples: list[float], seed: int) -> dict:
    ms = [s * 1e3 for s in samples]
    lo, hi = bootstrap_ci(ms, n_resamples=500, seed=seed)
    return {prefix: statistics.median(ms), f"{prefix}_p10": percentile(ms, 10), f"{prefix}_p90": percentile(ms, 90),
            f"{prefix}_ci": [lo, hi]}


def benchmark_model(model, *, batch_sizes=(1, 4), prompt_lens=(64,), gen_lens=(16,), repeat: int = 5,
                    warmup: int = 1, device=None, cold_cache: bool = False, vocab_size: int | None = None,
                    memory: bool = True, seed: int = 0, progress: bool = True) -> list[dict]:
    """One row per grid point: median prefill latency (ms) and decode latency per token (ms), their
    p10/p90 and bootstrap 95% interval of the median (``*_ci``), throughput (``prefill_tok_s``,
    ``decode_tok_s``), and memory in MB: ``weights_mb``, ``kv_cache_mb`` (the cache at the end of
    generation), ``activations_mb`` (peak of one run above the weights, less the KV cache) and
    ``peak_mb`` (weights + that peak). Peaks come from ``tutx.bench.peak_memory`` on CUDA (the
    allocator's counter) and from :func:`~tutx.bench.tensor_peak` elsewhere (every tensor the run
    creates, counted exactly; the resident set would miss memory the allocator reuses).

    Prompts are random token ids (``vocab_size`` defaults to ``model.config.vocab_size``) from a
    seeded generator; ``gen_len`` counts the generated tokens, the first from the prefill. Decode
    samples are the mean step of each repeat. ``warmup`` untimed runs precede each point.
    ``cold_cache`` (GPU only) flushes L2 before every timed phase.
    """
    batch_sizes = check_grid("batch_sizes", batch_sizes)
    prompt_lens = check_grid("prompt_lens", prompt_lens)
    gen_lens = check_grid("gen_lens", gen_lens)
    check_positive_int("repeat", repeat)
    check_int("warmup", warmup, minimum=0)
    check_bool("cold_cache", cold_cache)
    check_bool("memory", memory)
    check_int("seed", seed)
    if min(gen_lens) < 2:
        raise ValueError(f"gen_lens: expected lengths >= 2 (one token comes from the prefill, decode needs one more), "
                         f"got {gen_lens}")
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if vocab_size is None:
        vocab_size = model.config.vocab_size
    check_positive_int("vocab_size", vocab_size)
    grid = list(itertools.product(batch_sizes, prompt_lens, gen_lens))
    from tqdm.auto import tqdm

    rows, w_bytes = [], weight_bytes(model)
    gen = torch.Generator().manual_seed(seed)
    for batch, plen, glen in tqdm(grid, desc="offline suite", disable=not progress, leave=False):
        ids = torch.randint(0, vocab_size, (batch, plen), generator=gen).to(device)  # [B, P]
        for _ in range(warmup):
            generate_timed(model, ids, glen, cold_cache)
        prefill, decode = [], []
        for _ in range(repeat):
            run = generate_timed(model, ids, glen, cold_cache)
            prefill.append(run["prefill_s"])
            decode.append(statistics.fmean(run["decode_s"]))
        row = {"batch": batch, "prompt_len": plen, "gen_len": glen, "repeat": repeat,
               **_stats("prefill_ms", prefill, seed), **_stats("decode_ms", decode, seed)}
        row["prefill_tok_s"] = batch * plen / (row["prefill_ms"] / 1e3)
        row["decode_tok_s"] = batch / (row["decode_ms"] / 1e3)
        kv = kv_cache_nbytes(run["cache"])
        del run
        row.update(weights_mb=w_bytes / MB, kv_cache_mb=kv / MB)
        if memory:
            run_once = lambda: generate_timed(model, ids, glen) and None  # noqa: E731 - result dropped: KV freed
            _, peak = peak_memory(run_once, device) if device.type == "cuda" else tensor_peak(run_once)
            row.update(activations_mb=max(0, peak - kv) / MB, peak_mb=(w_bytes + peak) / MB)
        rows.append(row)
    return rows


def decode_latency_fn(model, prompt_len: int = 32, gen_len: int = 4, vocab_size: int | None = None, seed: int = 0):
    """``measure(batch) -> seconds``: the mean decode step of one generation at that batch size
    (a ``prompt_len`` prompt, ``gen_len`` tokens) — what :func:`~tutx.bench.max_throughput_under_slo` searches over."""
    check_positive_int("prompt_len", prompt_len)
    check_int("gen_len", gen_len, minimum=2)
    device = next(model.parameters()).device
    vocab_size = check_positive_int("vocab_size", vocab_size if vocab_size is not None else model.config.vocab_size)

    def measure(batch: int) -> float:
        check_positive_int("batch", batch)
        gen = torch.Generator().manual_seed(seed + batch)
        ids = torch.randint(0, vocab_size, (batch, prompt_len), generator=gen).to(device)  # [B, P]
        return statistics.fmean(generate_timed(model, ids, gen_len)["decode_s"])

    return measure


def memory_model(model, seq_len: int):
    """``bytes(batch)``: weights plus the KV cache of ``batch`` sequences of ``seq_len`` tokens, from the config
    (``2 * layers * kv_heads * head_dim * bytes`` per token) — the memory limit of an SLO search."""
    check_positive_int("seq_len", seq_len)
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    elem = next(model.parameters()).element_size()
    per_token = 2 * cfg.num_hidden_layers * kv_heads * head_dim * elem
    weights = weight_bytes(model)
    return lambda batch: weights + batch * seq_len * per_token
