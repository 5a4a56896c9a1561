"""Measure CPU inference: ONNX Runtime fp32 and INT8 against PyTorch eager, ``torch.compile`` and
PyTorch dynamic INT8, in one process, interleaved.

Each round runs every backend once, in an order rotated from round to round, so a noisy
neighbour on a shared machine slows all of them alike; we report medians over rounds and the
ratio to PyTorch eager fp32 measured in the same run. All backends get the same thread count.
Tiny LM: forward latency at batch 1, sequence 128 (the prompt pass, KV cache returned) and
greedy decode tokens/s (prefill + ``decode_tokens`` steps through the cache). MiniLM: latency
of one batch. Each row also says how far its outputs are from PyTorch eager fp32.
"""
from __future__ import annotations

import contextlib
import statistics
import time
import warnings
from pathlib import Path

import torch

from tutx._validate import check_choice, check_int, check_positive_int
from tutx.cpu.compare import cosine_similarity, max_abs_diff, torch_greedy
from tutx.cpu.onnx_export import CausalLMWithCache, cache_shape, export_causal_lm, export_encoder
from tutx.cpu.ort_models import OrtCausalLM, OrtEncoder
from tutx.cpu.quantize import quantize_onnx_int8, torch_dynamic_int8
from tutx.cpu.runtime import check_threads, physical_cores

BACKENDS = ("pytorch_eager", "torch_compile", "pytorch_int8", "ort_fp32", "ort_int8")
"""What :func:`measure_cpu_inference` compares (PyTorch eager fp32 is the baseline of every ratio)."""
LABELS = {"pytorch_eager": "PyTorch eager fp32", "torch_compile": "torch.compile fp32",
          "pytorch_int8": "PyTorch dynamic INT8", "ort_fp32": "ONNX Runtime fp32", "ort_int8": "ONNX Runtime INT8"}
"""A readable name for each of ``BACKENDS``."""
MODEL_FILES = {"tiny_lm": "tiny_lm.onnx", "tiny_lm_int8": "tiny_lm.int8.onnx",
               "minilm": "minilm.onnx", "minilm_int8": "minilm.int8.onnx"}
"""File names :func:`export_models` writes, by key."""


def export_models(out_dir: str | Path, exporter: str = "dynamo") -> dict:
    """Export the tiny LM and MiniLM to ``out_dir`` and quantize both (ORT dynamic INT8).

    Returns ``{name: path}`` for the keys of ``MODEL_FILES``, plus ``"export_s"``: seconds per export.
    """
    from tutx.models import load_minilm, load_tiny

    out = Path(out_dir)
    paths, seconds = {k: out / v for k, v in MODEL_FILES.items()}, {}
    for name, load, export in (("tiny_lm", load_tiny, export_causal_lm), ("minilm", load_minilm, export_encoder)):
        model = load()[0]
        start = time.perf_counter()
        export(model, paths[name], exporter=exporter)
        seconds[name] = time.perf_counter() - start
        quantize_onnx_int8(paths[name], paths[f"{name}_int8"])
    return {**paths, "export_s": seconds}


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def _interleave(fns: dict, rounds: int, inner: int) -> dict:
    """``{name: [seconds per call, one per round]}``: each round calls every fn ``inner`` times, rotating the order."""
    names, times = list(fns), {n: [] for n in fns}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            for _ in range(inner):
                fns[name]()
            times[name].append((time.perf_counter() - start) / inner)
    return times


@contextlib.contextmanager
def _torch_threads(n: int):
    """PyTorch gets the same intra-op thread count as ORT for the duration."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(before)


def _try(fn, errors: dict, name: str):
    try:
        return fn()
    except Exception as err:  # noqa: BLE001 -- a backend that cannot run (e.g. no compiler) is reported, not fatal
        errors[name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
        return None


def _lm_backends(model, paths, threads, backends, errors):
    """``{name: (forward(ids) -> logits, step for torch_greedy or an OrtCausalLM)}``."""
    out = {}
    for name in backends:
        if name == "pytorch_eager":
            step = CausalLMWithCache(model)
        elif name == "torch_compile":
            step = _try(lambda: torch.compile(CausalLMWithCache(model), dynamic=True), errors, name)
        elif name == "pytorch_int8":
            step = CausalLMWithCache(torch_dynamic_int8(model))
        else:
            step = OrtCausalLM(paths["tiny_lm" if name == "ort_fp32" else "tiny_lm_int8"], threads=threads)
        if step is not None:
            out[name] = step
    return out


@torch.no_grad()
def measure_tiny_lm(paths: dict, *, threads: int, rounds: int, seq: int, decode_prompt: int,
                    decode_tokens: int, backends=BACKENDS, errors: dict | None = None) -> list[dict]:
    """Rows for area ``cpu_tiny_lm`` (see :func:`measure_cpu_inference`); needs ``paths["tiny_lm"]`` and
    ``paths["tiny_lm_int8"]`` only for the ORT backends."""
    from tutx.models import load_tiny

    errors = {} if errors is None else errors
    with _torch_threads(check_threads("threads", threads)):
        return _measure_tiny_lm(load_tiny(), paths, threads, rounds, seq, decode_prompt, decode_tokens,
                                backends, errors)


def _measure_tiny_lm(loaded, paths, threads, rounds, seq, decode_prompt, decode_tokens, backends, errors):
    from tutx.models import heldout_text

    model, tok = loaded
    ids = torch.tensor([tok.encode(heldout_text())[:max(seq, decode_prompt)]])  # [1, T]
    fwd_ids, prompt = ids[:, :seq], ids[:, :decode_prompt]
    layers, kv_heads, head_dim = cache_shape(model.config)
    empty = [torch.zeros(1, kv_heads, 0, head_dim) for _ in range(2 * layers)]
    steps = _lm_backends(model, paths, threads, backends, errors)

    def forward(step):
        return (lambda: step.forward(fwd_ids)[0]) if isinstance(step, OrtCausalLM) else (lambda: step(fwd_ids, *empty)[0])

    def decode(step):
        if isinstance(step, OrtCausalLM):
            return lambda: step.generate(prompt, decode_tokens)
        return lambda: torch_greedy(model, prompt, decode_tokens, step=step)

    fwd, dec, ref_logits, ref_tokens = {}, {}, None, None
    for name, step in steps.items():  # warm up (and compile) outside the timed rounds; keep the outputs
        logits = _try(lambda: [forward(step)() for _ in range(2)][-1], errors, name)
        tokens = _try(lambda: [decode(step)() for _ in range(2)][-1], errors, name) if logits is not None else None
        if tokens is None:
            continue
        fwd[name], dec[name] = (forward(step), logits), (decode(step), tokens)
        if name == "pytorch_eager":
            ref_logits, ref_tokens = logits, tokens
    fwd_t = _interleave({n: f for n, (f, _) in fwd.items()}, rounds, inner=3)
    dec_t = _interleave({n: f for n, (f, _) in dec.items()}, rounds, inner=1)
    base_f = _median_ms(fwd_t["pytorch_eager"]) if "pytorch_eager" in fwd_t else None
    base_d = decode_tokens / statistics.median(dec_t["pytorch_eager"]) if "pytorch_eager" in dec_t else None
    rows = []
    for name in fwd:
        ms, tok_s = _median_ms(fwd_t[name]), decode_tokens / statistics.median(dec_t[name])
        row = {"backend": name, "label": LABELS[name], "threads": threads, "batch": 1, "seq": seq,
               "forward_ms": round(ms, 3), "decode_tokens": decode_tokens, "decode_tok_s": round(tok_s, 1),
               "forward_speedup": round(base_f / ms, 3) if base_f else None,
               "decode_speedup": round(tok_s / base_d, 3) if base_d else None}
        if ref_logits is not None:
            logits = torch.as_tensor(fwd[name][1])
            row["max_abs_logit_diff"] = round(max_abs_diff(logits, ref_logits), 6)
            row["top1_agree"] = round(float((logits.argmax(-1) == ref_logits.argmax(-1)).float().mean()), 4)
            row["greedy_tokens_agree"] = round(float((torch.as_tensor(dec[name][1]) == ref_tokens).float().mean()), 4)
        rows.append(row)
    return rows


@torch.no_grad()
def measure_minilm(paths: dict, *, threads: int, rounds: int, batch: int, seq: int, backends=BACKENDS,
                   errors: dict | None = None) -> list[dict]:
    """Rows for area ``cpu_minilm`` (see :func:`measure_cpu_inference`)."""
    from tutx.models import load_minilm

    errors = {} if errors is None else errors
    with _torch_threads(check_threads("threads", threads)):
        return _measure_minilm(load_minilm(), paths, threads, rounds, batch, seq, backends, errors)


def _measure_minilm(loaded, paths, threads, rounds, batch, seq, backends, errors):
    from tutx.models import heldout_text

    model, tok = loaded
    lines = [ln for ln in heldout_text().splitlines() if len(ln.split()) > 3][:batch * 40]
    texts = [" ".join(lines[i::batch]) for i in range(batch)]  # long enough to fill ``seq`` tokens
    enc = tok(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    fns = {}
    for name in backends:
        if name.startswith("ort"):
            session = OrtEncoder(paths["minilm" if name == "ort_fp32" else "minilm_int8"], threads=threads)
            fns[name] = lambda s=session: torch.from_numpy(s(*args))
        else:
            m = {"pytorch_eager": lambda: model, "pytorch_int8": lambda: torch_dynamic_int8(model),
                 "torch_compile": lambda: torch.compile(model)}[name]()
            fns[name] = lambda m=m: m(*args).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()  # [B, T, 1]
    outs = {}
    for name in list(fns):
        hidden = _try(lambda: [fns[name]() for _ in range(2)][-1], errors, name)
        if hidden is None:
            del fns[name]
        else:
            outs[name] = (hidden * mask).sum(1) / mask.sum(1)  # mean pooling [B, H]
    times = _interleave(fns, rounds, inner=1)
    base = _median_ms(times["pytorch_eager"]) if "pytorch_eager" in times else None
    rows = []
    for name in fns:
        ms = _median_ms(times[name])
        row = {"backend": name, "label": LABELS[name], "threads": threads, "batch": batch, "seq": seq,
               "latency_ms": round(ms, 3), "sequences_per_s": round(batch / ms * 1e3, 1),
               "speedup": round(base / ms, 3) if base else None}
        if "pytorch_eager" in outs:
            row["min_cosine"] = round(float(cosine_similarity(outs[name], outs["pytorch_eager"]).min()), 5)
        rows.append(row)
    return rows


def measure_cpu_inference(paths: dict, *, threads: int | None = None, rounds: int = 5, seq: int = 128,
                          decode_prompt: int = 16, decode_tokens: int = 32, minilm_batch: int = 8,
                          minilm_seq: int = 128, backends=BACKENDS) -> dict:
    """``{"cpu_tiny_lm": rows, "cpu_minilm": rows, "errors": {...}}`` for the models in ``paths``
    (from :func:`export_models`), every backend with ``threads`` threads (default: physical cores).

    Tiny LM rows: ``forward_ms`` (batch 1, ``seq`` tokens), ``decode_tok_s`` (greedy, ``decode_tokens``
    after a ``decode_prompt``-token prompt), speed-ups over PyTorch eager fp32, and against it
    ``max_abs_logit_diff``, ``top1_agree`` (share of the ``seq`` positions whose argmax agrees) and
    ``greedy_tokens_agree`` (one early difference changes every later token). MiniLM rows: ``latency_ms`` of one
    ``[minilm_batch, minilm_seq]`` batch, speed-up, ``min_cosine`` of the mean-pooled embeddings.
    A backend that fails (e.g. ``torch.compile`` without a C++ compiler) is left out and named in "errors".
    """
    threads = physical_cores() if threads is None else check_threads("threads", threads)
    for name, value in (("rounds", rounds), ("seq", seq), ("decode_prompt", decode_prompt),
                        ("decode_tokens", decode_tokens), ("minilm_batch", minilm_batch)):
        check_positive_int(name, value)
    check_int("minilm_seq", minilm_seq, minimum=2, maximum=512)
    for b in backends:
        check_choice("backends", b, BACKENDS)
    if not isinstance(paths, dict) or any(k not in paths for k in MODEL_FILES):
        raise ValueError(f"paths: expected the dict export_models() returns, with keys {list(MODEL_FILES)}")
    errors = {}
    lm = measure_tiny_lm(paths, threads=threads, rounds=rounds, seq=seq, decode_prompt=decode_prompt,
                         decode_tokens=decode_tokens, backends=backends, errors=errors)
    enc = measure_minilm(paths, threads=threads, rounds=rounds, batch=minilm_batch, seq=minilm_seq,
                         backends=backends, errors=errors)
    return {"cpu_tiny_lm": lm, "cpu_minilm": enc, "errors": errors}


__all__ = ["BACKENDS", "LABELS", "MODEL_FILES", "export_models", "measure_tiny_lm", "measure_minilm",
           "measure_cpu_inference"]
