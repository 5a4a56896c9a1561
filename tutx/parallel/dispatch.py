"""``dispatch_``: put a planned model on its devices and add the hops between them.

The plan comes from :func:`~tutx.parallel.device_map.plan_device_map`. Each module moves to its
device; a forward pre-hook on each moves the incoming tensors there (the hidden state, the
rotary cos/sin, masks), so one forward pass walks the devices in layer order. Outputs come back
on the device of the inputs. Simulated devices (``"cpu:N"``) all run on the CPU but are recorded
in ``Dispatch.trace``, so the hops can be seen on a machine without GPUs.
"""
from __future__ import annotations

import torch
from torch import nn

from tutx.parallel.device_map import DevicePlan, torch_device


def _move(obj, device: torch.device):
    """Tensors (also inside plain tuples, lists and dicts) moved to ``device``; anything else as is."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.device == device else obj.to(device)
    if type(obj) in (tuple, list):
        return type(obj)(_move(o, device) for o in obj)
    if type(obj) is dict:
        return {k: _move(v, device) for k, v in obj.items()}
    return obj


class Dispatch:
    """What :func:`dispatch_` installed: the hooks, a count of hops, and :meth:`remove`.

    ``trace`` lists the device labels of the placed modules in the order the last forward ran
    them; ``hops`` counts the changes of device over all forwards (on ``cpu:N`` devices they are
    the hops a real multi-GPU run would make, though no bytes move).
    """

    def __init__(self, plan: DevicePlan):
        self.plan, self.handles, self.trace, self.hops = plan, [], [], 0
        self._input_device = None

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __repr__(self) -> str:
        return f"Dispatch({len(self.handles)} hooks, {self.hops} hops, last forward: {' → '.join(self.trace)})"


def dispatch_(model: nn.Module, plan: DevicePlan) -> Dispatch:
    """Move each module of ``plan`` to its device and hook in the device hops (in place).

    Each placed module gets a forward pre-hook that moves its tensor inputs (hidden states,
    masks, rotary cos/sin) to its own device; the whole model returns its outputs on the device
    its inputs came from, as accelerate's ``io_same_device`` does. The KV cache of each layer
    is created on that layer's device. Dispatching again replaces the earlier hooks.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(plan, DevicePlan):
        raise TypeError(f"plan: expected a DevicePlan from plan_device_map, got {type(plan).__name__}")
    if "disk" in plan.placement.values():
        raise ValueError("plan: puts modules on 'disk'; dispatch_ keeps every weight in memory — use "
                         "accelerate's dispatch_model(..., offload_dir=...) for disk offload")
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("model: its weights are on the meta device; load them first (or pass "
                         "plan.device_map to from_pretrained(device_map=...))")
    modules = dict(model.named_modules())
    missing = [name for name in plan.placement if name not in modules]
    if missing:
        raise ValueError(f"plan: made for another model; this one has no module {missing[0]!r}")
    if getattr(model, "_tutx_dispatch", None) is not None:
        model._tutx_dispatch.remove()
    state = Dispatch(plan)
    devices = {label: torch_device(label) for label in set(plan.placement.values())}

    def root_pre(module, args, kwargs):
        state.trace = []
        first = next((t for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor)), None)
        state._input_device = None if first is None else first.device

    def root_post(module, args, kwargs, output):
        if state._input_device is None:
            return output
        if isinstance(output, dict):  # a ModelOutput: move its tensors, leave the cache where it is
            for key, value in output.items():
                output[key] = _move(value, state._input_device)
            return output
        return _move(output, state._input_device)

    def pre_hook(label):
        device = devices[label]

        def hook(module, args, kwargs):
            if state.trace and state.trace[-1] != label:
                state.hops += 1
            state.trace.append(label)
            return _move(args, device), _move(kwargs, device)
        return hook

    for name, label in plan.placement.items():
        modules[name].to(devices[label])
        state.handles.append(modules[name].register_forward_pre_hook(pre_hook(label), with_kwargs=True))
    state.handles.append(model.register_forward_pre_hook(root_pre, with_kwargs=True))
    state.handles.append(model.register_forward_hook(root_post, with_kwargs=True))
    model._tutx_dispatch = state
    model.hf_device_map = dict(plan.device_map)
    return state
