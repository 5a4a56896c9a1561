"""Checks for Chapter 1's exercises (scaling challenges).

Each ``check_…(fn)`` runs your function on real model shapes (and, for the build-it exercise,
on random configurations it draws itself) and compares it with the reference. It prints
``✅ …`` when all cases pass and raises an ``AssertionError`` that names the first failing case
otherwise; an untouched stub prints "not solved yet".
"""
from __future__ import annotations

import math
import random
from functools import lru_cache

from tutx.configs import get_config, get_spec
from tutx.exercises._check import check_fn, run_cases
from tutx.hardware import HARDWARE
from tutx.scaling import ModelSpec

__all__ = ["check_kv_cache_bytes", "check_decode_ceiling", "check_memory_bound_batch", "check_param_count"]


@lru_cache(maxsize=None)
def _specs() -> dict[str, ModelSpec]:
    return {name: get_spec(name) for name in ("GPT-2", "Llama-2-7B", "Llama-3.1-8B", "Mistral-7B")}


# ---- reference solutions (private: the notebook never imports them) --------------------------
def _solution_kv_cache_bytes(num_layers, num_kv_heads, head_dim, batch, seq_len, bytes_per_elem):
    return 2 * num_layers * num_kv_heads * head_dim * batch * seq_len * bytes_per_elem


def _wrong_kv_cache_bytes(num_layers, num_kv_heads, head_dim, batch, seq_len, bytes_per_elem):
    return num_layers * num_kv_heads * head_dim * batch * seq_len * bytes_per_elem  # keys only


def _solution_decode_ceiling(param_bytes_read_per_token, bandwidth_bytes_per_s):
    return bandwidth_bytes_per_s / param_bytes_read_per_token


def _wrong_decode_ceiling(param_bytes_read_per_token, bandwidth_bytes_per_s):
    return param_bytes_read_per_token / bandwidth_bytes_per_s  # seconds per token, not tokens/s


def _solution_memory_bound_batch(spec, hardware, dtype, context_len):
    batch = 1
    while spec.decode_intensity(dtype, batch, context_len) < hardware.ridge_point(dtype):
        batch += 1
    return batch


def _wrong_memory_bound_batch(spec, hardware, dtype, context_len):
    # intensity ≈ 2·B / bytes per weight: right at context 0, blind to the KV cache's bytes
    return math.ceil(hardware.ridge_point(dtype) * {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1}[dtype] / 2)


def _solution_param_count(config):
    h, L = config["hidden_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    d = config.get("head_dim") or h // heads
    i, vocab = config["intermediate_size"], config["vocab_size"]
    attention = h * heads * d + 2 * h * kv_heads * d + heads * d * h  # q, k, v, o
    if config.get("attention_bias"):
        attention += heads * d + 2 * kv_heads * d + h
    mlp = 3 * h * i  # gate, up, down
    layer = attention + mlp + 2 * h  # two RMSNorms
    embeddings = vocab * h
    head = 0 if config.get("tie_word_embeddings") else vocab * h
    return embeddings + L * layer + h + head  # + the final norm


def _wrong_param_count(config):
    return _solution_param_count({**config, "num_key_value_heads": config["num_attention_heads"]})  # no GQA


# ---- checks ------------------------------------------------------------------------------------
def check_kv_cache_bytes(fn) -> None:
    """``fn(num_layers, num_kv_heads, head_dim, batch, seq_len, bytes_per_elem) -> bytes``.

    The KV cache stores a key and a value vector per layer, KV head and cached position.
    """
    cases = [
        (32, 8, 128, 1, 8192, 2),  # Llama-3-8B, 8k context, bf16: 1 GiB
        (32, 32, 128, 1, 4096, 2),  # Llama-2-7B (no GQA), 4k, fp16
        (32, 8, 128, 16, 32768, 1),  # Mistral-7B, batch 16 at 32k, fp8
        (12, 12, 64, 8, 1024, 4),  # GPT-2, fp32
        (3, 1, 40, 5, 11, 0.5),  # odd sizes, multi-query attention, int4
    ]
    run_cases("check_kv_cache_bytes", fn, _solution_kv_cache_bytes, cases, rel_tol=1e-9)


def check_decode_ceiling(fn) -> None:
    """``fn(param_bytes_read_per_token, bandwidth_bytes_per_s) -> tokens/s``.

    At batch 1 every generated token streams the weights from memory once, so memory
    bandwidth, not FLOP/s, sets the ceiling.
    """
    s = _specs()
    combos = [("Llama-3.1-8B", "H100-SXM", "bf16"), ("Llama-3.1-8B", "A100-40GB", "int8"),
              ("Mistral-7B", "L4", "int4"), ("GPT-2", "T4", "fp16"), ("Llama-2-7B", "laptop-cpu", "bf16")]
    cases = [(s[m].decode_bytes_per_token(d), HARDWARE[h].memory_bandwidth) for m, h, d in combos]
    run_cases("check_decode_ceiling", fn, _solution_decode_ceiling, cases, rel_tol=1e-6)


def check_memory_bound_batch(fn) -> None:
    """``fn(spec, hardware, dtype, context_len) -> int``: the smallest decode batch that is no
    longer memory-bound, i.e. whose arithmetic intensity reaches ``hardware.ridge_point(dtype)``.

    Useful pieces: ``spec.decode_flops_per_token(context_len)``,
    ``spec.decode_bytes_per_step(dtype, context_len, batch)`` (or ``spec.decode_intensity``).
    """
    s = _specs()
    cases = [
        (s["Llama-3.1-8B"], HARDWARE["H100-SXM"], "bf16", 0),
        (s["GPT-2"], HARDWARE["A100-40GB"], "bf16", 0),
        (s["Mistral-7B"], HARDWARE["L4"], "fp8", 0),
        (s["GPT-2"], HARDWARE["T4"], "fp32", 0),
        (s["Llama-3.1-8B"], HARDWARE["H100-SXM"], "bf16", 128),  # the KV cache raises the bar
        (s["Llama-2-7B"], HARDWARE["A100-80GB"], "fp16", 64),
    ]
    run_cases("check_memory_bound_batch", fn, _solution_memory_bound_batch, cases, rel_tol=0)


def _random_llama_config(rng: random.Random) -> dict:
    """A Llama-style config.json the learner has never seen: GQA, sometimes head_dim, ties, biases."""
    heads = rng.choice([4, 6, 8, 12, 16, 32])
    kv = rng.choice([k for k in (1, 2, 4, 8, heads) if heads % k == 0])
    d = rng.choice([16, 32, 64, 128])
    h = heads * d if rng.random() < 0.6 else rng.choice([256, 384, 512, 768, 1024])
    config = dict(model_type="llama", vocab_size=rng.randrange(1000, 160000), hidden_size=h,
                  num_hidden_layers=rng.randrange(1, 40), num_attention_heads=heads, num_key_value_heads=kv,
                  intermediate_size=rng.randrange(64, 8 * h), tie_word_embeddings=rng.random() < 0.4,
                  attention_bias=rng.random() < 0.3)
    if h != heads * d or rng.random() < 0.3:
        config["head_dim"] = d  # explicit: it need not be hidden_size / heads
    if rng.random() < 0.2:
        del config["num_key_value_heads"]  # missing: every head keeps its own K and V
    return config


def check_param_count(fn) -> None:
    """``fn(config) -> int``: the exact parameter count of a Llama-style model from its config dict.

    Fields: ``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``num_key_value_heads`` (missing: same as the heads), ``head_dim`` (missing:
    hidden_size / heads), ``intermediate_size``, ``vocab_size``, ``tie_word_embeddings`` and
    ``attention_bias`` (bias on q, k, v and o). Checked on real models, then on random
    configurations drawn here (the same count ``transformers`` builds, see the tests).
    """
    check_fn(fn, "check_param_count")
    tiny = dict(model_type="llama", vocab_size=4096, hidden_size=256, num_hidden_layers=5, num_attention_heads=8,
                num_key_value_heads=2, intermediate_size=640, tie_word_embeddings=True)
    real = [get_config("Llama-3.1-8B"), get_config("Llama-2-7B"), tiny]
    rng = random.Random(20260101)
    cases = [(c,) for c in real + [_random_llama_config(rng) for _ in range(25)]]
    run_cases("check_param_count", fn, _solution_param_count, cases, rel_tol=0)


CONTRACT = {
    "check_kv_cache_bytes": (_solution_kv_cache_bytes, _wrong_kv_cache_bytes),
    "check_decode_ceiling": (_solution_decode_ceiling, _wrong_decode_ceiling),
    "check_memory_bound_batch": (_solution_memory_bound_batch, _wrong_memory_bound_batch),
    "check_param_count": (_solution_param_count, _wrong_param_count),
}
