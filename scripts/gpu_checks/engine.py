"""GPU check for Chapter 6: the paged-decode kernel at a real size, then the engine against ``generate``.

``run(results)`` (called by the shared GPU-check driver) appends rows to ``results["engine"]``:

- ``op="paged decode"``: our paged flash-decoding Triton kernel (bf16, B=16, Hq=32, Hkv=8, D=128,
  about 2k cached tokens per sequence in pages of 16 scattered over the pool) — its max error
  against ``paged_decode_attention_ref`` (fp32 math on the same bf16 inputs), its time, and the
  time of the dense flash-decoding kernel :func:`tutx.kernels.decode.decode_attention` on the same
  keys and values stored contiguously (the price of paging), and of the PyTorch reference;
- ``op="generate"``: requested tokens per second on the tiny LM in fp16 on CUDA, on the workload
  of the Chapter 6 notebook (64 requests, prompts of 16–256 held-out tokens, outputs of 8–128
  tokens, greedy, end-of-sequence ignored): our ``LLMEngine``, Hugging Face ``generate`` in static
  batches of 16 and 64 (left-padded; each batch runs to its longest request and only requested
  tokens are counted), and sequential ``generate`` on the first 16 requests (a rate, so comparable;
  the row says how many requests it ran). ``ratio`` is the engine's speed-up over each row, and
  ``identical`` counts requests whose tokens equal the engine's (fp16 may flip near-ties).

Chapter 5 (:func:`bench_decode_graphs`) adds ``results["ch05_decode_profile_gpu"]`` (how much of
an eager decode step is CPU overhead, from the profiler) and ``results["ch05_decode_graphs_gpu"]``
(decode tokens/s with CUDA graphs against eager, batch 1..32, tokens compared).

Run alone on a GPU: ``PYTHONPATH=. python scripts/gpu_checks/engine.py [out.json]``; a CPU smoke
test of every code path at toy sizes (no timings worth reading): ``... engine.py --smoke``.
"""
from __future__ import annotations

import json
import sys
import time

import torch

from tutx.bench import run_steps, timeit
from tutx.engine import EngineConfig, LLMEngine, SamplingParams, pad_batch
from tutx.engine.load import benchmark_requests
from tutx.kernels.paged_decode import paged_decode_attention, paged_decode_attention_ref
from tutx.kernels.decode import decode_attention
from tutx.models import load_tiny

PAGED_CASE = dict(batch=16, hq=32, hkv=8, head_dim=128, max_len=2048, block_size=16)
SMOKE_CASE = dict(batch=3, hq=4, hkv=2, head_dim=32, max_len=80, block_size=16)


def paged_inputs(batch, hq, hkv, head_dim, max_len, block_size, device, dtype, seed=0):
    """A scattered paged cache and the same keys/values as a dense ``[B, Hkv, S_max, D]`` cache."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    lengths = torch.randint(max_len // 2, max_len + 1, (batch,), generator=gen, dtype=torch.int32)  # [B]
    pages = -(-max_len // block_size)
    num_blocks = batch * pages + 7
    perm = torch.randperm(num_blocks, generator=gen)[: batch * pages].view(batch, pages)  # scattered pages
    block_tables = perm.to(torch.int32)  # [B, pages]
    q = torch.randn(batch, hq, head_dim, generator=gen).to(device, dtype)  # [B, Hq, D]
    k_pool = torch.randn(num_blocks, block_size, hkv, head_dim, generator=gen).to(device, dtype)  # [N, bs, Hkv, D]
    v_pool = torch.randn(num_blocks, block_size, hkv, head_dim, generator=gen).to(device, dtype)
    block_tables, lengths = block_tables.to(device), lengths.to(device)
    k_dense = k_pool[block_tables.long()].flatten(1, 2).transpose(1, 2).contiguous()  # [B, Hkv, S_max, D]
    v_dense = v_pool[block_tables.long()].flatten(1, 2).transpose(1, 2).contiguous()
    return q, k_pool, v_pool, block_tables, lengths, k_dense, v_dense


def check_paged_decode(rows: list, device: str = "cuda", dtype=torch.bfloat16, case=PAGED_CASE,
                       repeat: int = 50) -> None:
    """Error of the paged kernel against its reference, and its time against the dense kernel."""
    q, k_pool, v_pool, tables, lengths, k_dense, v_dense = paged_inputs(**case, device=device, dtype=dtype)
    ref = paged_decode_attention_ref(q, k_pool, v_pool, tables, lengths).float()  # [B, Hq, D]
    ours = paged_decode_attention(q, k_pool, v_pool, tables, lengths).float()
    dense = decode_attention(q, k_dense, v_dense, lengths).float()
    paged_ms = timeit(lambda: paged_decode_attention(q, k_pool, v_pool, tables, lengths, validate=False),
                      warmup=5, repeat=repeat, device=device).median * 1e3
    checked_ms = timeit(lambda: paged_decode_attention(q, k_pool, v_pool, tables, lengths),
                        warmup=2, repeat=repeat, device=device).median * 1e3
    dense_ms = timeit(lambda: decode_attention(q, k_dense, v_dense, lengths), warmup=5, repeat=repeat,
                      device=device).median * 1e3
    ref_ms = timeit(lambda: paged_decode_attention_ref(q, k_pool, v_pool, tables, lengths, validate=False),
                    warmup=2, repeat=max(3, repeat // 5), device=device).median * 1e3
    tokens = int(lengths.sum())
    kv_bytes = 2 * case["hkv"] * case["head_dim"] * tokens * k_pool.element_size()
    shape = (f"B{case['batch']} Hq{case['hq']} Hkv{case['hkv']} D{case['head_dim']} S_max{case['max_len']} "
             f"page{case['block_size']}")
    rows.append({"op": "paged decode", "shape": shape, "dtype": str(dtype), "tokens": tokens,
                 "max_abs_err": (ours - ref).abs().max().item(),
                 "max_abs_err_dense_vs_ref": (dense - ref).abs().max().item(),
                 "ms": paged_ms, "ms_with_validation": checked_ms, "kv_gbps": kv_bytes / paged_ms / 1e6,
                 "baseline": "dense decode_attention", "baseline_ms": dense_ms, "ratio": dense_ms / paged_ms,
                 "ref_ms": ref_ms})


# ---- the engine against generate ------------------------------------------------------------
def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def hf_generate(model, prompts, output_lens, batch_size, pad_id, device):
    """Static batches of ``batch_size`` (1: sequential), left-padded; requested tokens only."""
    outs = []
    for i in range(0, len(prompts), batch_size):
        lens = output_lens[i:i + batch_size]
        input_ids, mask = pad_batch(prompts[i:i + batch_size], pad_id, side="left")  # [B, S_max]
        n = max(lens)
        out = model.generate(input_ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=n, min_new_tokens=n, pad_token_id=pad_id)
        outs += [row[:k] for row, k in zip(out[:, input_ids.shape[1]:].tolist(), lens)]
    return outs


def engine_generate(model, tok, prompts, output_lens, max_num_seqs=64):
    engine = LLMEngine(model, tok, EngineConfig(max_num_seqs=max_num_seqs))
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in output_lens]
    return [o.token_ids for o in engine.generate(prompts, params, progress=False)], engine.runner.attention_backend


def bench_generate(rows: list, device: str = "cuda", dtype=torch.float16, n_requests: int = 64,
                   n_sequential: int = 16) -> None:
    model, tok = load_tiny(device, dtype)
    prompts, output_lens = benchmark_requests(tok, n_requests)
    pad = tok.pad_token_id
    warm = ([p[:16] for p in prompts[:4]], [4] * 4)  # compile kernels, warm the allocator: not timed
    engine_generate(model, tok, *warm)
    hf_generate(model, *warm, 4, pad, device)
    runs = [("continuous batching, LLMEngine", n_requests, lambda: engine_generate(model, tok, prompts, output_lens)),
            ("static batches of 16, HF generate", n_requests,
             lambda: hf_generate(model, prompts, output_lens, 16, pad, device)),
            ("static batch of 64, HF generate", n_requests,
             lambda: hf_generate(model, prompts, output_lens, 64, pad, device)),
            ("sequential HF generate", n_sequential,
             lambda: hf_generate(model, prompts[:n_sequential], output_lens[:n_sequential], 1, pad, device))]
    measured, engine_tokens, backend = [], None, None
    for name, n, fn in runs:
        _sync(device)
        start = time.perf_counter()
        out = fn()
        _sync(device)
        seconds = time.perf_counter() - start
        if engine_tokens is None:
            out, backend = out
            engine_tokens = out
        measured.append((name, n, seconds, sum(output_lens[:n]) / seconds,
                         sum(a == b for a, b in zip(out, engine_tokens[:n]))))
    engine_tps = measured[0][3]
    for name, n, seconds, tps, same in measured:
        rows.append({"op": "generate", "method": name, "model": f"tiny LM {str(dtype).split('.')[-1]}",
                     "requests": n, "requested_tokens": sum(output_lens[:n]), "seconds": seconds,
                     "tokens_per_s": tps, "ratio": engine_tps / tps, "identical": same,
                     **({"attention_backend": backend} if name.startswith("continuous") else {})})


def bench_decode_graphs(results: dict, device: str = "cuda", dtype=torch.float16, batches=(1, 2, 4, 8, 16, 32),
                        max_tokens: int = 64) -> None:
    """Chapter 5: the launch overhead of an eager decode step (profiler) and CUDA-graph decode
    (``EngineConfig(enforce_eager=False)``) against eager, tokens/s per batch size, tokens compared."""
    from tutx.engine.graph_bench import compare_decode, profile_decode_step
    from tutx.models import heldout_text

    model, tok = load_tiny(device)
    model = model.to(dtype)
    ids = tok.encode(heldout_text())
    results.setdefault("ch05_decode_profile_gpu", []).extend(
        dict(profile_decode_step(model, ids, b), dtype=str(dtype)) for b in (1, max(batches)))
    rows = results.setdefault("ch05_decode_graphs_gpu", [])
    for b in batches:
        rows.append(dict(compare_decode(model, ids, b, max_tokens=max_tokens), dtype=str(dtype)))


def run(results: dict) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError("scripts/gpu_checks/engine.py needs a CUDA GPU (use --smoke for a CPU test)")
    rows = results.setdefault("engine", [])
    run_steps(rows, (lambda: check_paged_decode(rows), lambda: bench_generate(rows),
                     lambda: bench_decode_graphs(results)), "engine")


def smoke() -> dict:
    """Every code path on the CPU at toy sizes (the wrappers fall back to their references there)."""
    torch.set_num_threads(1)  # toy sizes on a possibly shared CPU: one thread is the fast setting
    rows: list = []
    check_paged_decode(rows, device="cpu", dtype=torch.float32, case=SMOKE_CASE, repeat=2)
    bench_generate(rows, device="cpu", dtype=torch.float32, n_requests=4, n_sequential=2)
    return {"engine": rows}


if __name__ == "__main__":
    if sys.argv[1:] == ["--smoke"]:
        print(json.dumps(smoke(), indent=1, default=str))
    else:
        out: dict = {}
        run(out)
        text = json.dumps(out, indent=1, default=str)
        if sys.argv[1:]:
            open(sys.argv[1], "w").write(text + "\n")
        print(text)
