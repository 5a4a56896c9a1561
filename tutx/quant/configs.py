"""Quantization configs for :func:`tutx.quant.quantize_`: frozen dataclasses that check themselves.

Each names one scheme for the ``nn.Linear`` layers it is applied to:

* :class:`Int8WeightOnly` — int8 weights, symmetric, one scale per output channel; activations
  stay in floating point. Halves the weight bytes of bf16 (quarter of fp32) at almost no loss.
* :class:`Int4WeightOnly` — 4-bit weights, asymmetric, one scale and zero point per group of
  ``group_size`` inputs of each output channel; two weights per byte. Groups keep an outlier from
  ruining the resolution of a whole row.
* :class:`Int8DynamicActivationInt8Weight` — W8A8: int8 weights as above, and activations
  quantized on the fly, one scale per token (row), so the matmul itself runs in int8.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from tutx._validate import check_choice, check_int

GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class Int8WeightOnly:
    """INT8 symmetric per-output-channel weights; floating-point activations."""

    kind = "int8_weight_only"


@dataclass(frozen=True)
class Int4WeightOnly:
    """INT4 asymmetric weights with one scale and zero point per ``group_size`` inputs (32, 64 or 128)."""

    group_size: int = 128
    kind = "int4_weight_only"

    def __post_init__(self):
        check_choice("group_size", check_int("group_size", self.group_size), GROUP_SIZES)


@dataclass(frozen=True)
class Int8DynamicActivationInt8Weight:
    """W8A8: INT8 per-channel weights and INT8 per-token activations quantized at run time."""

    kind = "int8_dynamic_activation_int8_weight"


QuantConfig = Int8WeightOnly | Int4WeightOnly | Int8DynamicActivationInt8Weight
_BY_KIND = {cls.kind: cls for cls in (Int8WeightOnly, Int4WeightOnly, Int8DynamicActivationInt8Weight)}


def check_config(config) -> None:
    if not isinstance(config, tuple(_BY_KIND.values())):
        raise TypeError(f"config: expected one of {sorted(c.__name__ for c in _BY_KIND.values())}, "
                        f"got {type(config).__name__}")


def config_to_dict(config) -> dict:
    """A JSON-friendly description, stored in saved checkpoints: ``{"kind": ..., **fields}``."""
    check_config(config)
    return {"kind": config.kind, **asdict(config)}


def config_from_dict(d: dict):
    """Inverse of :func:`config_to_dict`."""
    if not isinstance(d, dict) or d.get("kind") not in _BY_KIND:
        raise ValueError(f"config: expected a dict with 'kind' in {sorted(_BY_KIND)}, got {d!r}")
    fields = {k: v for k, v in d.items() if k != "kind"}
    return _BY_KIND[d["kind"]](**fields)
