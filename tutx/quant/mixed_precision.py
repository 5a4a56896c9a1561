"""Mixed precision by sensitivity: spend the weight bytes where quantization hurts most.

Layers are not equally fragile. So instead of one bit width for the whole model:

1. :func:`~tutx.quant.sensitivity.layer_sensitivity` — the damage of quantizing each layer alone;
2. :func:`assign_bits` — choose 4, 8 or 16 bits per layer so the weights fit a byte budget and
   the summed sensitivity is small;
3. :func:`apply_mixed_precision_` — turn the plan into ``{fqn: config}`` and call
   :func:`~tutx.quant.quantize_` with it (16 = leave the layer as it is);
4. :func:`frontier` — the (bytes, perplexity) curve over several budgets, to plot against the
   uniform INT8 and INT4 models.

Summing one-layer sensitivities assumes the errors of different layers add up independently —
a first-order approximation that is good when each error is small, and the reason to check the
final plan with a real perplexity measurement (``frontier`` does).

"16" means *unquantized*: the layer keeps its floating-point weights in the model's dtype, so
for the fp32 tiny model it costs 4 bytes per weight, for a bf16 model 2.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from tutx._validate import check_number, check_str
from tutx.quant.api import quantize_, select_linears, set_submodule
from tutx.quant.configs import Int4WeightOnly
from tutx.quant.modules import Int4WeightOnlyLinear, Int8WeightOnlyLinear, model_weight_bytes
from tutx.quant.sensitivity import CHOICES, Sensitivity, check_bit_choices, config_for_bits, layer_sensitivity


def layer_bytes(model: nn.Module, choices=CHOICES, group_size: int = 128, filter_fn=None) -> dict[str, dict[int, int]]:
    """``{fqn: {bits: bytes}}``: what each selected layer's weights, scales, zeros and bias take at each width.

    Counted on empty modules of the right shapes (meta tensors), so nothing is quantized.
    """
    choices = check_bit_choices(choices)
    Int4WeightOnly(group_size)  # validates group_size
    out = {}
    for fqn, lin in select_linears(model, filter_fn):
        args = (lin.in_features, lin.out_features, lin.bias is not None)
        sizes = {}
        for bits in choices:
            if bits == 16:
                sizes[bits] = model_weight_bytes(lin)
            elif bits == 8:
                sizes[bits] = model_weight_bytes(Int8WeightOnlyLinear(*args, device="meta", dtype=lin.weight.dtype))
            else:
                if lin.in_features % group_size:
                    raise ValueError(f"in_features: {lin.in_features} of {fqn!r} is not divisible by "
                                     f"group_size={group_size}")
                sizes[bits] = model_weight_bytes(Int4WeightOnlyLinear(*args, device="meta", dtype=lin.weight.dtype,
                                                                      group_size=group_size))
        out[fqn] = sizes
    return out


def _check_inputs(sensitivity, sizes, choices) -> tuple[dict, dict, tuple[int, ...]]:
    choices = check_bit_choices(choices)
    delta = sensitivity.delta if isinstance(sensitivity, Sensitivity) else sensitivity
    if not isinstance(delta, Mapping) or not delta:
        raise TypeError(f"sensitivity: expected a Sensitivity or a non-empty {{fqn: {{bits: damage}}}} mapping, "
                        f"got {type(sensitivity).__name__}")
    if not isinstance(sizes, Mapping) or set(sizes) != set(delta):
        missing = sorted(set(delta) - set(sizes or {})) if isinstance(sizes, Mapping) else []
        extra = sorted(set(sizes) - set(delta)) if isinstance(sizes, Mapping) else []
        raise ValueError(f"layer_bytes: expected {{fqn: {{bits: bytes}}}} for the same layers as sensitivity "
                         f"(missing {missing[:3]}, extra {extra[:3]})")
    d_out, s_out = {}, {}
    for fqn in delta:
        d = {16: 0.0, **delta[fqn]}
        for bits in choices:
            if bits not in d:
                raise ValueError(f"sensitivity: no value for {fqn!r} at {bits} bits; probe it or drop {bits} "
                                 "from choices")
            if bits not in sizes[fqn]:
                raise ValueError(f"layer_bytes: no size for {fqn!r} at {bits} bits")
            if not math.isfinite(d[bits]) or sizes[fqn][bits] < 0:
                raise ValueError(f"sensitivity/layer_bytes: bad value for {fqn!r} at {bits} bits")
        d_out[fqn] = {b: float(d[b]) for b in choices}
        s_out[fqn] = {b: int(sizes[fqn][b]) for b in choices}
    return d_out, s_out, choices


def upgrade_path(sensitivity, layer_bytes: Mapping[str, Mapping[int, int]], choices=CHOICES
                 ) -> list[tuple[str, int, int, int]]:
    """The greedy sequence of upgrades from all-lowest to all-highest bits: ``[(fqn, from, to, total_bytes)]``.

    Start with every layer at the lowest choice; repeatedly take the upgrade (one layer, to any
    higher width) that removes the most sensitivity per extra byte. Ties go to the earlier layer.
    Upgrades that cost no bytes come first; those that make things *worse* (negative damage
    removed, measurement noise) come last, so the path always ends with every layer at the top.
    """
    delta, sizes, choices = _check_inputs(sensitivity, layer_bytes, choices)
    order = {fqn: i for i, fqn in enumerate(delta)}
    current = {fqn: choices[0] for fqn in delta}
    total = sum(sizes[fqn][choices[0]] for fqn in delta)
    path = []
    while True:
        best, best_key = None, None
        for fqn, cur in current.items():
            for to in (b for b in choices if b > cur):
                gain = delta[fqn][cur] - delta[fqn][to]
                extra = sizes[fqn][to] - sizes[fqn][cur]
                ratio = math.inf if extra <= 0 else gain / extra
                key = (ratio, -order[fqn], -to)
                if best_key is None or key > best_key:
                    best, best_key = (fqn, cur, to, extra), key
        if best is None:
            return path
        fqn, cur, to, extra = best
        current[fqn] = to
        total += extra
        path.append((fqn, cur, to, total))


def assign_bits(sensitivity, layer_bytes: Mapping[str, Mapping[int, int]], budget_bytes: int,
                choices=CHOICES) -> dict[str, int]:
    """Bits per layer (``{fqn: 4 | 8 | 16}``) whose weights fit ``budget_bytes``.

    ``sensitivity``: a :class:`Sensitivity` or ``{fqn: {bits: damage}}``; ``layer_bytes``:
    ``{fqn: {bits: bytes}}`` (see :func:`layer_bytes`). The plan is the longest prefix of
    :func:`upgrade_path` that fits — greedy by sensitivity removed per byte, like a fractional
    knapsack. Because every budget takes a prefix of the same path, the plans are *nested*:
    a larger budget never gives any layer fewer bits, and the budget that fits everything at
    the top width leaves every layer there. Raises ``ValueError`` if even the all-lowest plan
    does not fit.
    """
    delta, sizes, choices = _check_inputs(sensitivity, layer_bytes, choices)
    check_number("budget_bytes", budget_bytes, minimum=0)
    floor = sum(s[choices[0]] for s in sizes.values())
    if budget_bytes < floor:
        raise ValueError(f"budget_bytes: {budget_bytes:,} is below {floor:,}, the size with every layer at "
                         f"{choices[0]} bits; nothing smaller is possible with choices={choices}")
    plan = {fqn: choices[0] for fqn in delta}
    for fqn, _, to, total in upgrade_path(delta, sizes, choices):
        if total > budget_bytes:
            break
        plan[fqn] = to
    return plan


def plan_bytes(plan: Mapping[str, int], layer_bytes: Mapping[str, Mapping[int, int]]) -> int:
    """Bytes of the planned layers: ``sum(layer_bytes[fqn][plan[fqn]])``."""
    try:
        return sum(int(layer_bytes[fqn][bits]) for fqn, bits in plan.items())
    except KeyError as err:
        raise ValueError(f"plan: {err.args[0]!r} has no entry in layer_bytes") from None


def mixed_precision_configs(plan: Mapping[str, int], group_size: int = 128) -> dict:
    """``{fqn: config}`` for :func:`~tutx.quant.quantize_` from a plan ``{fqn: 4 | 8 | 16}`` (16: left out)."""
    if not isinstance(plan, Mapping):
        raise TypeError(f"plan: expected a mapping {{fqn: bits}}, got {type(plan).__name__}")
    Int4WeightOnly(group_size)  # validates group_size
    configs = {}
    for fqn, bits in plan.items():
        if isinstance(bits, bool) or bits not in CHOICES:
            raise ValueError(f"plan: {fqn!r} has bits={bits!r}; expected one of {CHOICES}")
        if bits != 16:
            configs[fqn] = config_for_bits(bits, group_size)
    return configs


def apply_mixed_precision_(model: nn.Module, plan: Mapping[str, int], group_size: int = 128) -> nn.Module:
    """Quantize each layer of ``plan`` (``{fqn: 4 | 8 | 16}``) in place; returns ``model``.

    4 → ``Int4WeightOnly(group_size)``, 8 → ``Int8WeightOnly()``, 16 → left as it is: one
    :func:`~tutx.quant.quantize_` call with a ``{fqn: config}`` dict, so a bad plan leaves the
    model untouched.
    """
    return quantize_(model, mixed_precision_configs(plan, group_size))


@torch.no_grad()
def frontier(model: nn.Module, tokenizer, budgets: Iterable[int], *, text: str, sensitivity: Sensitivity | None = None,
             metric: str = "kl", probe_text: str | None = None, window: int = 256,
             stride: int = 256, group_size: int = 128, filter_fn=None, include_uniform: bool = True,
             progress: bool = True) -> list[dict]:
    """Perplexity against weight bytes for mixed-precision plans at each budget (and uniform 4/8/16).

    Returns rows ``{"label", "budget_bytes", "mb", "ppl", "bits"}`` sorted by ``mb``: ``label`` is
    ``"mixed"`` (one per budget) or ``"int4"``/``"int8"``/``"fp"`` (uniform, when
    ``include_uniform``; their ``budget_bytes`` is None); ``mb`` is the selected layers' bytes / 1e6
    under the plan (the LM head and embeddings are left out: they are the same in every row);
    ``bits`` counts layers per width.

    ``sensitivity`` is measured when not given (:func:`layer_sensitivity` with ``metric`` on
    ``probe_text``, which is then required). Perplexity is on ``text`` (held-out text; ideally not
    the probe text, which would reward plans for fitting its noise). ``model`` is unchanged afterwards.
    """
    from tutx.models.perplexity import perplexity

    check_str("text", text)
    budgets = list(budgets)
    sizes = layer_bytes(model, CHOICES, group_size, filter_fn)
    floor = sum(s[4] for s in sizes.values())
    bad = [b for b in budgets if isinstance(b, bool) or not isinstance(b, (int, float)) or not b >= floor]
    if bad:
        raise ValueError(f"budgets: {bad[:3]} are below {floor:,} bytes (every layer at 4 bits) or not numbers")
    if not budgets and not include_uniform:
        raise ValueError("budgets: empty and include_uniform=False; nothing to measure")
    if sensitivity is None:
        if probe_text is None:
            raise ValueError("probe_text: needed to measure the sensitivity; or pass sensitivity=")
        sensitivity = layer_sensitivity(model, tokenizer, (4, 8), metric=metric, text=probe_text, window=window,
                                        stride=stride, group_size=group_size, filter_fn=filter_fn, progress=progress)
    plans = [("mixed", b, assign_bits(sensitivity, sizes, b)) for b in budgets]
    if include_uniform:
        plans += [(label, None, {fqn: bits for fqn in sizes}) for label, bits in (("int4", 4), ("int8", 8), ("fp", 16))]
    rows = []
    for label, budget, plan in tqdm(plans, desc="frontier", unit="plan", disable=not progress):
        originals = {fqn: model.get_submodule(fqn) for fqn in plan}
        try:
            apply_mixed_precision_(model, plan, group_size)
            ppl = perplexity(model, tokenizer, text, window=window, stride=stride)
        finally:
            for fqn, module in originals.items():
                set_submodule(model, fqn, module)
        counts = {b: sum(1 for v in plan.values() if v == b) for b in CHOICES}
        rows.append({"label": label, "budget_bytes": budget, "mb": plan_bytes(plan, sizes) / 1e6, "ppl": ppl,
                     "bits": counts})
    return sorted(rows, key=lambda r: (r["mb"], r["label"]))
