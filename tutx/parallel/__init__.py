"""Chapter 5 and 6: running one model on several devices.

- :mod:`~tutx.parallel.device_map` — device maps: ``plan_device_map`` places whole decoder layers
  on devices within memory budgets (KV cache reserved);
- :mod:`~tutx.parallel.dispatch` — ``dispatch_`` moves them there and adds the hops;
- :mod:`~tutx.parallel.tensor_parallel` (Chapter 5) — ``tensor_parallel_`` splits every layer over
  the ranks of a process group (Megatron's column/row-parallel pairing, layers in
  :mod:`~tutx.parallel.tp_layers`, the split and its communication in :mod:`~tutx.parallel.tp_plan`),
  ``dtensor_parallel_`` does it with PyTorch's DTensor; ``run_torchrun`` launches a job from Python.

    plan = plan_device_map("Llama-2-70B", {"cuda:0": "40GiB", "cuda:1": "40GiB", "cpu": "100GiB"},
                           reserve_kv=dict(batch=4, seq_len=4096), dtype="bf16")
    print(plan.summary())
"""
from tutx.parallel.dispatch import Dispatch, dispatch_
from tutx.parallel.device_map import DevicePlan, parse_size, plan_device_map, torch_device

# Tensor parallelism (Chapter 5)
from tutx.parallel.launch import run_torchrun
from tutx.parallel.tensor_parallel import allgather_parallel_, dtensor_parallel_, shard_, tensor_parallel_
from tutx.parallel.tp_layers import ColumnParallelLinear, RowParallelLinear
from tutx.parallel.tp_plan import TPPlan, comm_per_token, plan_tensor_parallel

__all__ = ["DevicePlan", "Dispatch", "plan_device_map", "dispatch_", "parse_size", "torch_device",
           "ColumnParallelLinear", "RowParallelLinear", "TPPlan", "plan_tensor_parallel", "comm_per_token",
           "tensor_parallel_", "shard_", "dtensor_parallel_", "allgather_parallel_", "run_torchrun"]
