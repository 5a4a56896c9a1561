"""Mixed precision by sensitivity: spend the weight bytes where quantization hurts most.

Layers are not equally fragile. Quantizing one attention projection may cost nothing while
another, or the last MLP, moves the perplexity noticeably. So instead of one bit width for the
whole model:

1. :func:`layer_sensitivity` — quantize **one layer at a time** (at each candidate bit width),
   measure the model (perplexity, or any ``eval_fn``), put the float layer back;
2. :func:`assign_bits` — choose 4, 8 or 16 bits per layer so the weights fit a byte budget and
   the summed sensitivity is small;
3. :func:`apply_mixed_precision_` — quantize each layer with the existing configs
   (``Int4WeightOnly(group_size)`` / ``Int8WeightOnly()``; 16 = leave the layer as it is);
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
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from tutx.quant.api import select_linears, set_submodule
from tutx.quant.configs import Int4WeightOnly, Int8WeightOnly
from tutx.quant.modules import Int4WeightOnlyLinear, Int8WeightOnlyLinear, model_weight_bytes

CHOICES = (4, 8, 16)
PROBE_CHARS = 4000
"""Default probe text: the first 4,000 characters of the held-out plays (about 1,000 tokens)."""


def _check_choices(choices, name: str = "choices", allow_16: bool = True) -> tuple[int, ...]:
    allowed = CHOICES if allow_16 else (4, 8)
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Iterable):
        raise TypeError(f"{name}: expected a sequence of bit widths from {allowed}, got {choices!r}")
    choices = tuple(choices)
    bad = [c for c in choices if isinstance(c, bool) or c not in allowed]
    if not choices or bad or len(set(choices)) != len(choices):
        raise ValueError(f"{name}: expected distinct bit widths from {allowed}, got {choices!r}")
    return tuple(sorted(choices))


def quantized_layer(linear: nn.Linear, bits: int, group_size: int = 128, fqn: str = "") -> nn.Module:
    """``linear`` at ``bits``: an ``Int4WeightOnlyLinear(group_size)``, an ``Int8WeightOnlyLinear``, or itself (16)."""
    if bits == 16:
        return linear
    if bits == 8:
        return Int8WeightOnlyLinear.from_linear(linear, Int8WeightOnly(), fqn=fqn)
    if bits == 4:
        return Int4WeightOnlyLinear.from_linear(linear, Int4WeightOnly(group_size), fqn=fqn)
    raise ValueError(f"bits: expected one of {CHOICES}, got {bits!r}")


def layer_bytes(model: nn.Module, choices=CHOICES, group_size: int = 128, filter_fn=None) -> dict[str, dict[int, int]]:
    """``{fqn: {bits: bytes}}``: what each selected layer's weights, scales, zeros and bias take at each width.

    Counted on empty modules of the right shapes (meta tensors), so nothing is quantized.
    """
    choices = _check_choices(choices)
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


@dataclass(frozen=True)
class Sensitivity:
    """What :func:`layer_sensitivity` measured.

    ``baseline``: the metric of the model as given; ``scores[fqn][bits]``: the metric with only
    ``fqn`` quantized to ``bits``. :attr:`delta` is the damage, ``score - baseline`` (16 bits: 0).
    """

    baseline: float
    scores: dict[str, dict[int, float]] = field(default_factory=dict)

    @property
    def delta(self) -> dict[str, dict[int, float]]:
        return {fqn: {16: 0.0, **{b: s - self.baseline for b, s in by_bits.items()}}
                for fqn, by_bits in self.scores.items()}

    def ranking(self, bits: int = 4) -> list[tuple[str, float]]:
        """Layers from most to least sensitive at ``bits``: ``[(fqn, delta), ...]``."""
        rows = [(fqn, d[bits]) for fqn, d in self.delta.items() if bits in d]
        if not rows:
            probed = sorted({b for s in self.scores.values() for b in s})
            raise ValueError(f"bits: {bits} was not probed; probed {probed}")
        return sorted(rows, key=lambda r: -r[1])


def output_kl_fn(reference: nn.Module, input_ids: torch.Tensor) -> Callable[[nn.Module], float]:
    """An ``eval_fn``: mean ``KL(reference || model)`` of the next-token distributions on ``input_ids [B, T]``.

    The reference log-probabilities are computed now, once (pass the model before quantizing).
    Never negative and zero for the reference itself, so per-layer damage is not drowned in the
    noise that a perplexity difference on a short text has.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
        got = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids: expected an integer tensor [batch, seq_len], got {got}")
    device = next(reference.parameters()).device
    input_ids = input_ids.to(device)

    def log_probs(m: nn.Module) -> torch.Tensor:
        was_training = m.training
        m.eval()
        try:
            with torch.inference_mode():
                out = m(input_ids=input_ids)
                # float64: the KL of two nearly equal distributions is a small difference of large terms
                return torch.log_softmax(getattr(out, "logits", out).double(), dim=-1).flatten(0, 1)  # [B*T, V]
        finally:
            m.train(was_training)

    ref = log_probs(reference)

    def eval_fn(m: nn.Module) -> float:
        logp = log_probs(m)
        return max(float((ref.exp() * (ref - logp)).sum(-1).mean()), 0.0)

    return eval_fn


def _text_windows(tokenizer, text: str, window: int) -> torch.Tensor:
    """Non-overlapping windows ``[n, window]`` of ``text``'s tokens (one shorter window if the text is short)."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"text: expected a non-empty string, got {text!r}")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]  # [N]
    if ids.numel() < 2:
        raise ValueError(f"text: needs at least 2 tokens, got {ids.numel()}")
    n = ids.numel() // window
    return ids[: n * window].reshape(n, window) if n else ids[None]


METRICS = ("kl", "ppl")


def _make_eval_fn(model, tokenizer_or_eval_fn, metric, text, window, stride) -> Callable[[nn.Module], float]:
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {METRICS}, got {metric!r}")
    if hasattr(tokenizer_or_eval_fn, "encode") or hasattr(tokenizer_or_eval_fn, "convert_tokens_to_ids"):
        from tutx.models import heldout_text, perplexity

        tokenizer = tokenizer_or_eval_fn
        text = heldout_text()[:PROBE_CHARS] if text is None else text
        if metric == "kl":
            return output_kl_fn(model, _text_windows(tokenizer, text, window))
        return lambda m: perplexity(m, tokenizer, text, window=window, stride=stride)
    if callable(tokenizer_or_eval_fn):
        if text is not None:
            raise ValueError("text: only used with a tokenizer; your eval_fn chooses its own data")
        return tokenizer_or_eval_fn
    raise TypeError("tokenizer_or_eval_fn: expected a tokenizer (to score the model on text) or a function "
                    f"eval_fn(model) -> float, lower is better; got {type(tokenizer_or_eval_fn).__name__}")


def _evaluate(eval_fn, model, what: str) -> float:
    value = eval_fn(model)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"eval_fn: returned {value!r} for {what}; expected a finite number (lower is better)")
    return float(value)


@torch.no_grad()
def layer_sensitivity(model: nn.Module, tokenizer_or_eval_fn, candidates=(4, 8), *, metric: str = "kl",
                      text: str | None = None, window: int = 256, stride: int = 256, group_size: int = 128,
                      filter_fn=None, progress: bool = True) -> Sensitivity:
    """Quantize each selected layer alone at each of ``candidates`` bits and measure the model.

    ``tokenizer_or_eval_fn``: a tokenizer, to score the model on ``text`` (default: the first
    :data:`PROBE_CHARS` characters of the held-out plays) in non-overlapping windows of
    ``window=256`` tokens — by ``metric="kl"``, the KL divergence from the unquantized model's
    predictions (:func:`output_kl_fn`; the default: never negative, little noise), or
    ``metric="ppl"``, perplexity (``stride`` as in :func:`~tutx.models.perplexity`). Or a function
    ``eval_fn(model) -> float`` (lower is better), e.g. the output error on calibration batches.
    Layers: as ``quantize_`` selects them (``filter_fn``). Each probe swaps in the real quantized
    module and puts the float layer back afterwards, even on error: ``model`` is unchanged.
    Costs ``1 + layers * len(candidates)`` evaluations.
    """
    candidates = _check_choices(candidates, "candidates", allow_16=False)
    eval_fn = _make_eval_fn(model, tokenizer_or_eval_fn, metric, text, window, stride)
    layers = select_linears(model, filter_fn)
    if not layers:
        raise ValueError("model: no nn.Linear layer selected; nothing to probe")
    baseline = _evaluate(eval_fn, model, "the unquantized model")
    scores: dict[str, dict[int, float]] = {}
    with tqdm(total=len(layers) * len(candidates), desc="sensitivity", unit="probe", disable=not progress) as bar:
        for fqn, lin in layers:
            scores[fqn] = {}
            for bits in candidates:
                set_submodule(model, fqn, quantized_layer(lin, bits, group_size, fqn))
                try:
                    scores[fqn][bits] = _evaluate(eval_fn, model, f"{fqn!r} at {bits} bits")
                finally:
                    set_submodule(model, fqn, lin)  # restore the float layer
                bar.set_postfix_str(fqn, refresh=False)
                bar.update(1)
    return Sensitivity(baseline, scores)


def _check_inputs(sensitivity, sizes, choices) -> tuple[dict, dict, tuple[int, ...]]:
    choices = _check_choices(choices)
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
    if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, float)) or not budget_bytes >= 0:
        raise ValueError(f"budget_bytes: expected a number of bytes >= 0, got {budget_bytes!r}")
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


def _plan_modules(model: nn.Module, plan: Mapping[str, int], group_size: int) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    if not isinstance(plan, Mapping):
        raise TypeError(f"plan: expected a mapping {{fqn: bits}}, got {type(plan).__name__}")
    swaps = []
    for fqn, bits in plan.items():
        if isinstance(bits, bool) or bits not in CHOICES:
            raise ValueError(f"plan: {fqn!r} has bits={bits!r}; expected one of {CHOICES}")
        try:
            module = model.get_submodule(fqn)
        except AttributeError:
            raise ValueError(f"plan: model has no module {fqn!r}") from None
        if bits == 16:
            continue
        if not isinstance(module, nn.Linear):
            raise ValueError(f"plan: {fqn!r} is a {type(module).__name__}, expected an un-quantized nn.Linear")
        swaps.append((fqn, quantized_layer(module, bits, group_size, fqn)))
    return swaps


def apply_mixed_precision_(model: nn.Module, plan: Mapping[str, int], group_size: int = 128) -> nn.Module:
    """Quantize each layer of ``plan`` (``{fqn: 4 | 8 | 16}``) in place; returns ``model``.

    4 → ``Int4WeightOnly(group_size)``, 8 → ``Int8WeightOnly()``, 16 → left as it is. Every
    layer is checked and quantized before any is swapped, so a bad plan leaves the model untouched.
    """
    for fqn, new in _plan_modules(model, plan, group_size):
        set_submodule(model, fqn, new)
    return model


@torch.no_grad()
def frontier(model: nn.Module, tokenizer, budgets: Iterable[int], *, sensitivity: Sensitivity | None = None,
             metric: str = "kl", probe_text: str | None = None, text: str | None = None, window: int = 256,
             stride: int = 256, group_size: int = 128, filter_fn=None, include_uniform: bool = True,
             progress: bool = True) -> list[dict]:
    """Perplexity against weight bytes for mixed-precision plans at each budget (and uniform 4/8/16).

    Returns rows ``{"label", "budget_bytes", "mb", "ppl", "bits"}`` sorted by ``mb``: ``label`` is
    ``"mixed"`` (one per budget) or ``"int4"``/``"int8"``/``"fp"`` (uniform, when
    ``include_uniform``; their ``budget_bytes`` is None); ``mb`` is the selected layers' bytes / 1e6
    under the plan (the LM head and embeddings are left out: they are the same in every row);
    ``bits`` counts layers per width.

    ``sensitivity`` is measured when not given (:func:`layer_sensitivity` with ``metric`` on
    ``probe_text``, default the first :data:`PROBE_CHARS` characters of the held-out plays).
    Perplexity is on ``text``, default the rest of the held-out plays — not the probe text, which
    would reward plans for fitting its noise. ``model`` is unchanged afterwards.
    """
    from tutx.models import heldout_text, perplexity

    text = heldout_text()[PROBE_CHARS:] if text is None else text
    budgets = list(budgets)
    sizes = layer_bytes(model, CHOICES, group_size, filter_fn)
    floor = sum(s[4] for s in sizes.values())
    bad = [b for b in budgets if isinstance(b, bool) or not isinstance(b, (int, float)) or not b >= floor]
    if bad:
        raise ValueError(f"budgets: {bad[:3]} are below {floor:,} bytes (every layer at 4 bits) or not numbers")
    if not budgets and not include_uniform:
        raise ValueError("budgets: empty and include_uniform=False; nothing to measure")
    if sensitivity is None:
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
