"""Chapter 5 and 6: running one model on several devices.

- :mod:`~tutx.parallel.device_map` — device maps: ``plan_device_map`` places whole decoder layers
  on devices within memory budgets (KV cache reserved);
- :mod:`~tutx.parallel.dispatch` — ``dispatch_`` moves them there and adds the hops.

    plan = plan_device_map("Llama-2-70B", {"cuda:0": "40GiB", "cuda:1": "40GiB", "cpu": "100GiB"},
                           reserve_kv=dict(batch=4, seq_len=4096), dtype="bf16")
    print(plan.summary())
"""
from tutx.parallel.dispatch import Dispatch, dispatch_
from tutx.parallel.device_map import DevicePlan, parse_size, plan_device_map, torch_device

__all__ = ["DevicePlan", "Dispatch", "plan_device_map", "dispatch_", "parse_size", "torch_device"]
