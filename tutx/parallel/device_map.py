"""Device maps: spread a model's decoder layers over devices with memory budgets (Chapter 6).

A model too big for one GPU can still run if each device holds a contiguous run of whole
decoder layers (pipeline-style "naive model parallelism", what ``device_map="auto"`` does).
:func:`plan_device_map` decides where every module goes; :func:`~tutx.parallel.dispatch.dispatch_` moves the modules
and adds the hops that carry the hidden states from one device to the next.

Rules of the plan (compare accelerate's ``infer_auto_device_map``):

- a decoder layer is never split; layers fill the devices in the order the budgets are given,
  ``"disk"`` always last (a last resort: offloaded weights are streamed in at every step);
- the embeddings (and parameter-free helpers such as the rotary table) go on the first device,
  the final norm and the ``lm_head`` on the last device used;
- tied weights (``lm_head.weight is embed_tokens.weight``) are counted once, and the tied
  ``lm_head`` is placed *with the embeddings* on the first device — splitting a tied weight
  would mean two copies; the last hidden state hops back to the first device for the logits;
- with ``reserve_kv`` a device must hold its layers' weights *and* their share of the KV
  cache, ``2·batch·seq·Hkv·head_dim·bytes`` per layer. (A disk layer's KV is charged to the disk
  budget — a simplification: such a layer really runs, and keeps its cache, on a GPU.)

- with ``headroom=f`` a fraction ``f`` of every GPU budget (``cuda:N``, ``mps``) is kept out of
  the plan: a GPU also needs memory for the activations of the forward pass, the CUDA context
  (a few hundred MiB per process) and the allocator's fragmentation, none of which the weights
  and the KV reserve count. CPU and disk budgets are planned in full.

Unlike accelerate we keep no spare room on the first GPU for streaming offloaded layers back
in, so the same budgets can give the first device (and the CPU) one layer more.

Devices are budget keys: ``"cuda:N"`` (or an int N), ``"mps"``, ``"cpu"``, ``"disk"``, and
``"cpu:N"`` — *simulated* devices that are all the torch device ``cpu``, so the hops of a
multi-GPU split can be shown and tested on a laptop.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from tutx._validate import check_int, check_number
from tutx.parallel.devices import (accelerate_value, device_label, format_bytes, is_accelerator, parse_size,
                                   short_bytes, to_dtype, torch_device)
from tutx.scaling import DTYPE_BYTES, ModelSpec, kv_cache_bytes

__all__ = ["DevicePlan", "plan_device_map", "parse_size", "torch_device"]

# ---- the model's structure ---------------------------------------------------------------
def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of identical blocks holding the most parameters (``model.layers``, ``transformer.h``)."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            size = sum(p.numel() for p in module.parameters())
            if best is None or size > best[2]:
                best = (name, module, size)
    if best is None:
        raise TypeError(f"model: expected a transformer whose decoder layers are an nn.ModuleList "
                        f"(model.layers, transformer.h), found none in {type(model).__name__}")
    return best[0], best[1]


def _units(model: nn.Module):
    """Split the model into ``(head, layers, tail)`` lists of ``(name, module)``, in run order."""
    layers_name, layers = _decoder_layers(model)
    head, tails, parent, prefix = [], [], model, ""
    for part in layers_name.split("."):
        if next(parent.named_parameters(recurse=False), None) or next(parent.named_buffers(recurse=False), None):
            raise TypeError(f"model: {type(parent).__name__} holds tensors of its own; only weights inside "
                            "submodules can be placed")
        after, tails = False, [[]] + tails  # an inner module's tail runs before its parent's
        for child_name, child in parent.named_children():
            if child_name == part:
                after = True
            elif next(child.parameters(), None) is None:
                head.append((prefix + child_name, child))  # rotary tables, dropout: cheap helpers
            else:
                (tails[0] if after else head).append((prefix + child_name, child))
        parent, prefix = getattr(parent, part), prefix + part + "."
    tail = [unit for level in tails for unit in level]
    head_ids = {id(p) for _, m in head for p in m.parameters()}
    tied = [(n, m) for n, m in tail if any(id(p) in head_ids for p in m.parameters())]
    head += tied  # a tied lm_head lives with the embedding it shares
    tail = [(n, m) for n, m in tail if (n, m) not in tied]
    return head, [(f"{layers_name}.{i}", m) for i, m in enumerate(layers)], tail


def _bytes(modules, seen: set, dtype: torch.dtype | None) -> int:
    """Bytes of the parameters and buffers not counted yet (tied tensors once); floats cast to ``dtype``."""
    total = 0
    for _, module in modules:
        for t in list(module.parameters()) + list(module.buffers()):
            if id(t) in seen:
                continue
            seen.add(id(t))
            size = dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size()
            total += t.numel() * size
    return total


def _kv_per_layer(reserve_kv, config, num_layers: int, weight_bytes: int) -> int:
    """KV-cache bytes one layer must keep free room for."""
    if reserve_kv is None:
        return 0
    if isinstance(reserve_kv, (int, str)):  # total for the whole model, shared evenly
        return math.ceil(parse_size(reserve_kv, "reserve_kv") / num_layers)
    if not isinstance(reserve_kv, Mapping):
        raise TypeError(f"reserve_kv={reserve_kv!r}: expected None, bytes (int or '2GiB') or "
                        "dict(batch=..., seq_len=..., dtype=...)")
    unknown = set(reserve_kv) - {"batch", "seq_len", "dtype"}
    if unknown or not {"batch", "seq_len"} <= set(reserve_kv):
        raise ValueError(f"reserve_kv={dict(reserve_kv)!r}: expected the keys batch and seq_len, and "
                         "optionally dtype")
    batch, seq_len, dtype = reserve_kv["batch"], reserve_kv["seq_len"], reserve_kv.get("dtype")
    for name, value in (("batch", batch), ("seq_len", seq_len)):
        check_int(f"reserve_kv[{name!r}]", value, minimum=1)
    if dtype is None:
        elem = weight_bytes
    elif isinstance(dtype, str) and dtype in DTYPE_BYTES:
        elem = DTYPE_BYTES[dtype]
    else:
        elem = to_dtype(dtype, "reserve_kv['dtype']").itemsize
    if config is None:
        raise TypeError("reserve_kv: a dict needs the model's config (model.config) to know Hkv and head_dim")
    spec = ModelSpec.from_config(config)
    return math.ceil(kv_cache_bytes(1, spec.num_kv_heads, spec.head_dim, batch, seq_len, elem))


def _as_model(model_or_config) -> nn.Module:
    """A model as is; a config (object, dict or a name from :mod:`tutx.configs`) built on ``meta``."""
    if isinstance(model_or_config, nn.Module):
        return model_or_config
    from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

    config = model_or_config
    if isinstance(config, str):
        from tutx.configs import to_hf_config

        config = to_hf_config(config)
    elif isinstance(config, Mapping):
        if "model_type" not in config:
            raise ValueError("model_or_config: a config dict needs a 'model_type' field")
        config = dict(config)
        config = AutoConfig.for_model(config.pop("model_type"), **config)
    if not isinstance(config, PretrainedConfig):
        raise TypeError(f"model_or_config: expected an nn.Module, a transformers config, a config dict "
                        f"or a model name, got {type(model_or_config).__name__}")
    with torch.device("meta"):  # shapes only: a 405B model costs no memory
        return AutoModelForCausalLM.from_config(config)


# ---- the plan ------------------------------------------------------------------------------
@dataclass(repr=False)
class DevicePlan:
    """Where every module goes, and what each device then holds.

    ``device_map`` is in accelerate's format (module name → GPU index, ``"cpu"``, ``"disk"``;
    simulated ``"cpu:N"`` stay strings), so it can be compared with ``infer_auto_device_map`` or
    passed to ``from_pretrained(device_map=...)``. ``placement`` gives the same with our labels.
    """

    device_map: dict[str, int | str]
    placement: dict[str, str]  # module name → device label, in run order
    budgets: dict[str, int]  # label → bytes, in fill order
    weight_bytes: dict[str, int]  # label → bytes of weights placed there
    kv_bytes: dict[str, int]  # label → KV-cache bytes reserved there
    layers: dict[str, list[int]]  # label → indices of its decoder layers
    kv_per_layer: int = 0
    reserved: dict[str, int] = field(default_factory=dict)  # label → bytes of headroom kept free

    def layers_per_device(self) -> dict[str, int]:
        return {label: len(idx) for label, idx in self.layers.items()}

    def used(self, label: str) -> int:
        return self.weight_bytes[label] + self.kv_bytes[label]

    def free(self, label: str) -> int:
        """Room left on ``label`` beyond its weights, KV reserve and headroom."""
        return self.budgets[label] - self.reserved.get(label, 0) - self.used(label)

    def summary(self) -> str:
        """A table: budget, layers, weights, KV and free room per device."""
        rows = [("device", "budget", "layers", "weights", "KV cache", "headroom", "free")]
        for label, budget in self.budgets.items():
            idx = self.layers[label]
            span = "-" if not idx else f"{idx[0]}" if len(idx) == 1 else f"{idx[0]}-{idx[-1]} ({len(idx)})"
            rows.append((label, format_bytes(budget), span, format_bytes(self.weight_bytes[label]),
                         format_bytes(self.kv_bytes[label]), format_bytes(self.reserved.get(label, 0)),
                         format_bytes(self.free(label))))
        widths = [max(len(r[i]) for r in rows) for i in range(7)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        others = [f"{n} → {d}" for n, d in self.placement.items() if not re.search(r"\.\d+$", n)]
        lines.append("other modules: " + ", ".join(others))
        return "\n".join(lines)

    def __repr__(self) -> str:
        split = ", ".join(f"{d}: {n}" for d, n in self.layers_per_device().items() if n)
        total = sum(self.used(d) for d in self.budgets)
        return (f"DevicePlan({sum(self.layers_per_device().values())} layers → {split}; "
                f"{format_bytes(total)} used of {format_bytes(sum(self.budgets.values()))})")


def _check_budgets(budgets) -> dict[str, int]:
    if not isinstance(budgets, Mapping) or not budgets:
        raise TypeError(f"budgets: expected a non-empty dict such as {{'cuda:0': '10GiB', 'cpu': '32GiB'}}, "
                        f"got {budgets!r}")
    out = {}
    for key, value in budgets.items():
        label = device_label(key)
        if label in out:
            raise ValueError(f"budgets: device {key!r} is given twice (as {label!r})")
        out[label] = parse_size(value, f"budgets[{key!r}]")
    if "disk" in out:  # a last resort, whatever the order given
        out["disk"] = out.pop("disk")
    return out


def plan_device_map(model_or_config, budgets: Mapping, reserve_kv=None, dtype=None,
                    headroom: float = 0.0) -> DevicePlan:
    """Place whole decoder layers on the devices of ``budgets``, in order (see the module docstring).

    ``model_or_config``: a model (on ``meta`` is fine), a transformers config, a config dict or a
    name from :mod:`tutx.configs` (built on ``meta``). ``reserve_kv``: None, total KV bytes
    (int or ``"2GiB"``, shared evenly by the layers) or ``dict(batch=, seq_len=, dtype=)``.
    ``dtype``: size floating weights as this dtype (``torch.bfloat16``/``"bf16"``); None keeps theirs.
    ``headroom``: the fraction of each GPU budget kept free for activations and the CUDA context
    (e.g. 0.1; 0 plans the whole budget, as accelerate does with explicit ``max_memory``).
    """
    budgets = _check_budgets(budgets)
    check_number("headroom", headroom, minimum=0, maximum=0.9)
    reserved = {label: int(b * headroom) if is_accelerator(label) else 0 for label, b in budgets.items()}
    cap = {label: b - reserved[label] for label, b in budgets.items()}
    dtype = to_dtype(dtype)
    model = _as_model(model_or_config)
    head, layers, tail = _units(model)
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    elem = dtype.itemsize if dtype is not None else first.element_size() if first is not None else 2
    kv = _kv_per_layer(reserve_kv, getattr(model, "config", None), len(layers), elem)
    seen: set = set()
    units = [("the embeddings", head, _bytes(head, seen, dtype), 0)]
    units += [(f"decoder layer {i}", [layer], _bytes([layer], seen, dtype), kv) for i, layer in enumerate(layers)]
    if tail:
        units.append(("the final norm and lm_head", tail, _bytes(tail, seen, dtype), 0))

    labels = list(budgets)
    weights, kvs = dict.fromkeys(labels, 0), dict.fromkeys(labels, 0)
    layer_idx: dict[str, list[int]] = {label: [] for label in labels}
    placement: dict[str, str] = {}
    d = 0
    for u, (what, modules, w, k) in enumerate(units):
        while weights[labels[d]] + kvs[labels[d]] + w + k > cap[labels[d]]:
            label, used = labels[d], weights[labels[d]] + kvs[labels[d]]
            need = f"{format_bytes(w)} of weights" + (f" + {format_bytes(k)} of KV cache" if k else "")
            have = f" next to the {format_bytes(used)} already placed there" if used else ""
            short = short_bytes(used + w + k - cap[label])
            given = format_bytes(budgets[label]) + (f" less {format_bytes(reserved[label])} headroom"
                                                    if reserved[label] else "")
            if u == 0:
                raise ValueError(f"budgets[{label!r}]={given}: the first device holds "
                                 f"{what} ({need}); short by {short}")
            if what.startswith("decoder") and not layer_idx[label]:
                raise ValueError(f"budgets[{label!r}]={given}: cannot hold a single decoder "
                                 f"layer ({need}){have}; short by {short}. Raise it or leave the device out")
            d += 1
            if d == len(labels):
                rest = sum(x[2] + x[3] for x in units[u:])
                left = sum(x[0].startswith("decoder") for x in units[u:])
                short = short_bytes(used + rest - cap[label])
                raise ValueError(f"the model does not fit the budgets: {left} decoder layer(s)"
                                 f"{' and the final norm and lm_head' if tail else ''} ({format_bytes(rest)}) are left "
                                 f"after filling {', '.join(labels)}; short by {short} (raise "
                                 f"budgets[{label!r}] by that much, or add a device)"
                                 + (f"; each GPU keeps headroom={headroom:g} of its budget free" if headroom else ""))
        label = labels[d]
        weights[label] += w
        kvs[label] += k
        if what.startswith("decoder"):
            layer_idx[label].append(u - 1)
        placement.update((name, label) for name, _ in modules)
    order = [n for n, _ in head] + [n for n, _ in layers] + [n for n, _ in tail]
    placement = {n: placement[n] for n in order}
    return DevicePlan({n: accelerate_value(v) for n, v in placement.items()}, placement, budgets,
                      weights, kvs, layer_idx, kv, reserved)
