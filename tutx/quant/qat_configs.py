"""Configs for quantization-aware training: which grid :class:`~tutx.quant.FakeQuantLinear` rounds to.

Each mirrors a post-training config exactly, so converting after training is exact:
:class:`Int8WeightOnlyQAT` = :class:`~tutx.quant.Int8WeightOnly`; :class:`Int4WeightOnlyQAT` =
:class:`~tutx.quant.Int4WeightOnly` (or one scale per output channel with ``group_size=None``,
stored in the INT4 module by repeating the row's scale and zero point over its groups).
"""
from __future__ import annotations

from dataclasses import dataclass

from tutx._validate import check_int
from tutx.quant.checks import check_bits
from tutx.quant.configs import GROUP_SIZES, Int4WeightOnly, Int8WeightOnly


@dataclass(frozen=True)
class Int8WeightOnlyQAT:
    """Fake-quantize weights as :class:`~tutx.quant.Int8WeightOnly` does: symmetric INT8, per output channel."""

    bits = 8
    symmetric = True
    group_size = None  # per output channel
    kind = "int8_weight_only_qat"

    def target(self) -> Int8WeightOnly:
        """The post-training config :func:`convert_qat_` converts to."""
        return Int8WeightOnly()


@dataclass(frozen=True)
class Int4WeightOnlyQAT:
    """Fake-quantize weights as :class:`~tutx.quant.Int4WeightOnly` does: asymmetric INT4, min-max per group.

    ``group_size``: 32, 64 or 128 inputs per scale and zero point, or ``None`` for one per output
    channel (coarser, so rounding hurts more — where QAT has the most to recover).
    """

    group_size: int | None = 128
    bits = 4
    symmetric = False
    kind = "int4_weight_only_qat"

    def __post_init__(self):
        if self.group_size is not None and check_int("group_size", self.group_size) not in GROUP_SIZES:
            raise ValueError(f"group_size: expected None (per channel) or one of {GROUP_SIZES}, "
                             f"got {self.group_size!r}")

    def target(self, in_features: int) -> Int4WeightOnly:
        """The config of the converted layer; per channel becomes the largest group size dividing ``in_features``."""
        if self.group_size is not None:
            return Int4WeightOnly(self.group_size)
        return Int4WeightOnly(storage_group(in_features))


QATConfig = Int8WeightOnlyQAT | Int4WeightOnlyQAT


def qat_config(bits: int, group_size: int | None = None) -> QATConfig:
    """The QAT config for ``bits`` (4 or 8); ``group_size`` applies to INT4 only (None: per channel)."""
    check_bits(bits)
    if bits == 8:
        if group_size is not None:
            raise ValueError(f"group_size: INT8 weights are per output channel; expected None, got {group_size!r}")
        return Int8WeightOnlyQAT()
    return Int4WeightOnlyQAT(group_size)


def check_qat_config(config) -> None:
    if isinstance(config, (Int8WeightOnly, Int4WeightOnly)):
        raise TypeError(f"config: {type(config).__name__} is a post-training config; for QAT pass "
                        f"{type(config).__name__}QAT(...) (or qat_config(bits, group_size))")
    if not isinstance(config, (Int8WeightOnlyQAT, Int4WeightOnlyQAT)):
        raise TypeError(f"config: expected Int8WeightOnlyQAT or Int4WeightOnlyQAT, got {type(config).__name__}")


def storage_group(in_features: int, where: str = "") -> int:
    """Largest kernel group size dividing ``in_features``: per-channel INT4 repeats its qparams over these groups."""
    for g in sorted(GROUP_SIZES, reverse=True):
        if in_features % g == 0:
            return g
    raise ValueError(f"in_features: per-channel INT4 is stored as groups of {GROUP_SIZES}; "
                     f"{in_features}{where} is divisible by none of them")


def check_qat_shape(config: QATConfig, in_features: int, fqn: str = "") -> None:
    where = f" of {fqn!r}" if fqn else ""
    if isinstance(config, Int4WeightOnlyQAT):
        if config.group_size is None:
            storage_group(in_features, where)
        elif in_features % config.group_size:
            raise ValueError(f"in_features: {in_features}{where} is not divisible by group_size={config.group_size}")
