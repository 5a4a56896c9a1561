"""The tensor-parallel check on the tiny LM, run as one rank of a ``torchrun`` job (Chapter 5).

    torchrun --nproc-per-node 2 -m tutx.parallel.tp_demo            # or, from Python:
    tutx.parallel.run_torchrun("tutx.parallel.tp_demo", nproc=2)

Every rank loads the tiny LM, computes the unsharded logits and greedy tokens, then shards a copy
with :func:`~tutx.parallel.tensor_parallel.tensor_parallel_`, another with PyTorch's DTensor
(:func:`~tutx.parallel.tensor_parallel.dtensor_parallel_`) and a third the seed's way
(:func:`~tutx.parallel.tensor_parallel.allgather_parallel_`), and compares; it also times one
all-reduce of a decode token's hidden vector and the generation speed of each version. Each rank reports what it holds and what it measured (see :func:`run_checks`).
Backend: NCCL when every rank has its own GPU, gloo otherwise.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
import torch.distributed as dist

from tutx.parallel.launch import write_report
from tutx.parallel.tensor_parallel import allgather_parallel_, dtensor_parallel_, tensor_parallel_
from tutx.parallel.tp_layers import ColumnParallelLinear, RowParallelLinear

__all__ = ["run_checks", "main", "PROMPT", "LOGITS_ATOL"]

PROMPT = "ROMEO:\nBut soft, what light through yonder window breaks?"
LOGITS_ATOL = 1e-4
"""Tolerance on the largest ``abs(sharded - unsharded)`` logit in fp32, and on the gradients relative to their
largest value: the shards only change the order of the float sums (about 1e-5 measured)."""


def _param_counts(model) -> dict:
    """Parameters this rank holds: in sharded linears (and their full size), and replicated."""
    local = full = 0
    sharded_ids = set()
    for module in model.modules():
        if isinstance(module, (ColumnParallelLinear, RowParallelLinear)):
            local += module.weight.numel()
            full += (module.out_features * module.weight.shape[1] if isinstance(module, ColumnParallelLinear)
                     else module.weight.shape[0] * module.in_features)
            sharded_ids.update(id(p) for p in module.parameters())
    replicated = sum(p.numel() for p in model.parameters() if id(p) not in sharded_ids)
    return {"sharded_local": local, "sharded_full": full, "replicated": replicated,
            "bytes_local": sum(p.numel() * p.element_size() for p in model.parameters())}


def _greedy(model, ids, new_tokens: int, eos: int) -> list[int]:
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, pad_token_id=eos,
                         attention_mask=torch.ones_like(ids))
    return out[0, ids.shape[1]:].tolist()


def _allreduce_us(numel: int, device, iters: int) -> float:
    """Median time of one all-reduce of ``numel`` fp32 values, in microseconds."""
    x = torch.ones(numel, device=device)
    times = []
    dist.barrier()
    for i in range(iters + 5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        dist.all_reduce(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 5:  # warm-up calls excluded
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


@torch.enable_grad()
def _grad_rel_diff(model, tp, ids) -> float:
    """Largest ``abs(sharded - unsharded)`` gradient of the LM loss, relative to the largest gradient, over
    the (replicated) embedding and this rank's slice of the first q_proj: checks Megatron's f and g."""
    grads = []
    for m in (model, tp):
        m.zero_grad(set_to_none=True)
        m(ids, labels=ids).loss.backward()
        grads.append((m.model.embed_tokens.weight.grad, m.model.layers[0].self_attn.q_proj.weight.grad))
    (ref_embed, ref_q), (tp_embed, tp_q) = grads
    start, stop = tp.tutx_tp_plan.q_rows(dist.get_rank())
    diff = max((tp_embed - ref_embed).abs().max().item(), (tp_q - ref_q[start:stop]).abs().max().item())
    scale = max(ref_embed.abs().max().item(), ref_q.abs().max().item())
    for m in (model, tp):
        m.zero_grad(set_to_none=True)
    return diff / scale


def _ms_per_token(models: dict, ids, new_tokens: int, eos: int, repeats: int) -> dict:
    """Median milliseconds per generated token (greedy, KV cache) of each model, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            dist.barrier()  # both ranks start together: the sharded models wait for each other anyway
            start = time.perf_counter()
            _greedy(model, ids, new_tokens, eos)
            times[name].append((time.perf_counter() - start) * 1e3 / new_tokens)
    return {name: statistics.median(t) for name, t in times.items()}


@torch.no_grad()
def run_checks(new_tokens: int = 16, dtensor: bool = True, allreduce_iters: int = 50, timing_repeats: int = 3) -> dict:
    """This rank's report: what it holds, the largest logit differences, greedy tokens, all-reduce times."""
    from tutx.models import load_tiny

    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if dist.get_backend() == "nccl" else "cpu")
    model, tokenizer = load_tiny(device)
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids.to(device)  # [1, S]
    eos = tokenizer.eos_token_id
    ref_logits = model(ids).logits  # [1, S, vocab]
    report = {"rank": rank, "world_size": world, "backend": dist.get_backend(), "device": str(device),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "prompt_tokens": ids.shape[1],
              "logits_atol": LOGITS_ATOL, "params_unsharded": sum(p.numel() for p in model.parameters()),
              "tokens_ref": _greedy(model, ids, new_tokens, eos)}

    tp = tensor_parallel_(copy.deepcopy(model))
    rows = [m for m in tp.modules() if isinstance(m, RowParallelLinear)]
    for m in rows:
        m.allreduce_calls = m.allreduce_bytes = 0
    tp_logits = tp(ids).logits
    report.update(params=_param_counts(tp), max_abs_diff_tp=(tp_logits - ref_logits).abs().max().item(),
                  allreduce_calls_per_forward=sum(m.allreduce_calls for m in rows),
                  allreduce_bytes_per_token=sum(m.allreduce_bytes for m in rows) // ids.shape[1],
                  tokens_tp=_greedy(tp, ids, new_tokens, eos),
                  kv_heads_local=tp.tutx_tp_plan.local_kv_heads, heads_local=tp.tutx_tp_plan.local_heads)
    report["grad_rel_diff_tp"] = _grad_rel_diff(model, tp, ids)

    ag = allgather_parallel_(copy.deepcopy(model))  # the seed's design, for comparison
    cols = [m for m in ag.modules() if isinstance(m, ColumnParallelLinear)]
    ag_logits = ag(ids).logits
    report.update(max_abs_diff_allgather=(ag_logits - ref_logits).abs().max().item(),
                  allgather_calls_per_forward=sum(m.allgather_calls for m in cols),
                  allgather_bytes_per_token=sum(m.allgather_bytes for m in cols) // ids.shape[1],
                  tokens_allgather=_greedy(ag, ids, new_tokens, eos))
    report["ms_per_token"] = _ms_per_token({"unsharded": model, "megatron": tp, "allgather": ag}, ids, new_tokens,
                                           eos, timing_repeats)
    if dtensor:
        dt = dtensor_parallel_(copy.deepcopy(model))
        dt_logits = dt(ids).logits
        report.update(max_abs_diff_dtensor=(dt_logits - ref_logits).abs().max().item(),
                      max_abs_diff_tp_vs_dtensor=(dt_logits - tp_logits).abs().max().item(),
                      tokens_dtensor=_greedy(dt, ids, new_tokens, eos))
    hidden = model.config.hidden_size
    report["allreduce_decode_us"] = _allreduce_us(hidden, device, allreduce_iters)  # one token's [hidden]
    report["allreduce_prefill_us"] = _allreduce_us(ids.shape[1] * hidden, device, allreduce_iters)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=16, help="greedy tokens to generate")
    parser.add_argument("--no-dtensor", action="store_true", help="skip the DTensor comparison")
    parser.add_argument("--allreduce-iters", type=int, default=50, help="timed all-reduce calls")
    parser.add_argument("--timing-repeats", type=int, default=3, help="timed generations per model")
    args = parser.parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_nccl = torch.cuda.is_available() and torch.cuda.device_count() >= world
    if use_nccl:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_nccl else "gloo")
    try:
        write_report(run_checks(args.new_tokens, not args.no_dtensor, args.allreduce_iters, args.timing_repeats))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
