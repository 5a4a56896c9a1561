"""Accelerator datasheets and the roofline model.

A kernel (or a whole decode step) does some FLOPs and moves some bytes; its *arithmetic
intensity* is FLOPs per byte. Below the hardware's *ridge point* (peak FLOP/s ÷ bandwidth) it
is memory-bound and runs at ``intensity × bandwidth``; above it, compute-bound at peak FLOP/s.
That one ``min`` explains most of Chapter 1 — batch-1 decoding sits far left of every ridge.

All numbers are the vendors' **dense** peaks (the datasheets headline 2:4-sparsity rates, twice
as large, which ordinary models never see) and theoretical bandwidths. Memory sizes are as the
datasheet states them, in decimal bytes. Real kernels reach perhaps 60–90 % of these peaks.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

import numpy as np

from tutx._validate import check_number, check_positive, check_str

#: Dtypes a peak rate may be given for ("tf32" is a tensor-core math mode for fp32 data).
COMPUTE_DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")

T = 1e12
G = 1e9


@dataclass(frozen=True, repr=False)
class Hardware:
    """One accelerator: dense peak FLOP/s per dtype, memory bandwidth and size, and its source."""

    name: str
    peak_flops: Mapping[str, float]  # FLOP/s (OP/s for int8), dense
    memory_bandwidth: float  # bytes/s
    memory_bytes: float
    source: str  # where the numbers come from

    def __post_init__(self):
        check_str("name", self.name)
        if not isinstance(self.peak_flops, Mapping):
            raise TypeError(f"peak_flops: expected a dict of FLOP/s by dtype, got {type(self.peak_flops).__name__}")
        if not self.peak_flops:
            raise ValueError(
                f"peak_flops={self.peak_flops!r}: expected a non-empty dict of FLOP/s by dtype"
            )
        for dtype, rate in self.peak_flops.items():
            if dtype not in COMPUTE_DTYPES:
                raise ValueError(
                    f"peak_flops key {dtype!r}: expected one of {', '.join(COMPUTE_DTYPES)}"
                )
            check_positive(f"peak_flops[{dtype!r}]", rate)
        check_positive("memory_bandwidth", self.memory_bandwidth)
        check_positive("memory_bytes", self.memory_bytes)
        check_str("source", self.source)  # the datasheet's URL or title
        # Read-only copy, so the frozen dataclass really is frozen.
        object.__setattr__(self, "peak_flops", MappingProxyType(dict(self.peak_flops)))

    def peak(self, dtype: str) -> float:
        """Dense peak FLOP/s for ``dtype``; a dtype the chip has no rate for is an error."""
        if dtype not in self.peak_flops:
            raise ValueError(
                f"dtype={dtype!r}: {self.name} lists no peak rate for it; "
                f"known for {self.name}: {', '.join(self.peak_flops)}"
            )
        return self.peak_flops[dtype]

    def ridge_point(self, dtype: str = "bf16") -> float:
        """FLOP/byte at which the memory roof meets the compute roof."""
        return self.peak(dtype) / self.memory_bandwidth

    def attainable_flops(self, intensity, dtype: str = "bf16"):
        """The roofline: ``min(peak, intensity × bandwidth)``; ``intensity`` in FLOP/byte.

        Accepts a number or an array (for plotting a whole roofline at once).
        """
        peak = self.peak(dtype)
        if isinstance(intensity, (int, float)) and not isinstance(intensity, bool):
            check_number("intensity", intensity, minimum=0)  # FLOP/byte
            return min(peak, intensity * self.memory_bandwidth)
        arr = np.asarray(intensity, dtype=float)
        if arr.size and (np.isnan(arr).any() or arr.min() < 0):
            raise ValueError(f"intensity: expected FLOP/byte values >= 0, got {intensity!r}")
        return np.minimum(peak, arr * self.memory_bandwidth)

    def __repr__(self) -> str:
        top = "bf16" if "bf16" in self.peak_flops else "fp16" if "fp16" in self.peak_flops else "fp32"
        return (
            f"Hardware({self.name!r}, {top} {self.peak_flops[top] / T:g} TFLOP/s, "
            f"{self.memory_bandwidth / G:g} GB/s, {self.memory_bytes / G:g} GB)"
        )


_NV = "https://www.nvidia.com/content/dam/en-zz/Solutions"

# The two A100s differ only in memory size and bandwidth.
_A100_PEAKS = {"fp32": 19.5 * T, "tf32": 156 * T, "fp16": 312 * T, "bf16": 312 * T, "int8": 624 * T}
_A100_SOURCE = f"{_NV}/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf"

HARDWARE: dict[str, Hardware] = {
    h.name: h
    for h in [
        # Turing, sm_75: fp16 tensor cores only — no bf16, no tf32.
        Hardware(
            "T4",
            {"fp32": 8.1 * T, "fp16": 65 * T, "int8": 130 * T},
            320 * G,
            16 * G,
            f"{_NV}/Data-Center/tesla-t4/t4-tensor-core-datasheet-951643.pdf",
        ),
        # Ada, sm_89. Datasheet rates are with sparsity; dense is half.
        Hardware(
            "L4",
            {"fp32": 30.3 * T, "tf32": 60 * T, "fp16": 121 * T, "bf16": 121 * T,
             "fp8": 242.5 * T, "int8": 242.5 * T},
            300 * G,
            24 * G,
            "https://resources.nvidia.com/en-us-data-center-overview/l4-gpu-datasheet",
        ),
        # Ampere, sm_80 (SXM; the 40GB PCIe card has the same rates and bandwidth).
        Hardware(
            "A100-40GB",
            _A100_PEAKS,
            1555 * G,
            40 * G,
            _A100_SOURCE,
        ),
        Hardware(
            "A100-80GB",
            _A100_PEAKS,
            2039 * G,
            80 * G,
            _A100_SOURCE,
        ),
        # Hopper, sm_90. Dense rates from the H100 whitepaper (datasheet's sparse ÷ 2).
        Hardware(
            "H100-SXM",
            {"fp32": 66.9 * T, "tf32": 494.7 * T, "fp16": 989.4 * T, "bf16": 989.4 * T,
             "fp8": 1978.9 * T, "int8": 1978.9 * T},
            3.35 * T,
            80 * G,
            "https://resources.nvidia.com/en-us-tensor-core/gtc22-whitepaper-hopper "
            "(H100 SXM5 dense peaks) and the H100 datasheet",
        ),
        # Same Hopper die as H100 SXM, with 141 GB of HBM3e.
        Hardware(
            "H200",
            {"fp32": 66.9 * T, "tf32": 494.7 * T, "fp16": 989.4 * T, "bf16": 989.4 * T,
             "fp8": 1978.9 * T, "int8": 1978.9 * T},
            4.8 * T,
            141 * G,
            "https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM datasheet)",
        ),
        # An ESTIMATE, not a datasheet line: 8-core Zen 4 laptop (e.g. Ryzen 7 7840U) with
        # dual-channel DDR5-5600 (2 × 8 B × 5.6 GT/s = 89.6 GB/s theoretical; sustained is
        # lower). fp32: 8 cores × 2 FMA pipes × 8 lanes × 2 FLOP × ~3.0 GHz all-core;
        # bf16 (AVX512-BF16) and int8 (AVX512-VNNI) at 2× and 4× that.
        Hardware(
            "laptop-cpu",
            {"fp32": 0.768 * T, "bf16": 1.536 * T, "int8": 3.072 * T},
            89.6 * G,
            32 * G,
            "estimate from https://www.amd.com/en/products/processors/laptop/ryzen/7000-series/"
            "amd-ryzen-7-7840u.html and the DDR5-5600 transfer rate (JEDEC JESD79-5)",
        ),
    ]
}


_AWS = "https://awsdocs-neuron.readthedocs-hosted.com/en/latest/general/arch/neuron-hardware"

#: Accelerators beyond the GPU (Chapter 5), per chip, from the vendors' documentation: Google TPUs
#: (systolic matrix units, bf16 in, fp32 accumulate), AWS Trainium and Inferentia (NeuronCores
#: with systolic tensor engines), Intel Gaudi (matrix engines + programmable TPCs), and Apple
#: silicon (a GPU sharing one unified memory with the CPU). Kept apart from :data:`HARDWARE`
#: (the GPUs the course runs on); :func:`get_hardware` finds both.
ACCELERATORS: dict[str, Hardware] = {
    h.name: h
    for h in [
        # Google Cloud TPU docs, "TPU v5e": 197 TFLOP/s bf16, 394 TOP/s int8, 16 GB HBM2e at 819 GB/s per chip.
        Hardware("TPU-v5e", {"bf16": 197 * T, "int8": 394 * T}, 819 * G, 16 * G,
                 "https://cloud.google.com/tpu/docs/v5e (system architecture, per chip)"),
        # "TPU v5p": 459 TFLOP/s bf16, 918 TOP/s int8, 95 GB HBM2e at 2765 GB/s per chip.
        Hardware("TPU-v5p", {"bf16": 459 * T, "int8": 918 * T}, 2765 * G, 95 * G,
                 "https://cloud.google.com/tpu/docs/v5p (system architecture, per chip)"),
        # "TPU v6e" (Trillium): 918 TFLOP/s bf16, 1836 TOP/s int8, 32 GB HBM at 1640 GB/s per chip.
        Hardware("TPU-v6e", {"bf16": 918 * T, "int8": 1836 * T}, 1640 * G, 32 * G,
                 "https://cloud.google.com/tpu/docs/v6e (system architecture, per chip)"),
        # AWS Neuron docs, Trainium (trn1): per chip 190 TFLOP/s fp16/bf16, 47.5 fp32, 32 GB HBM at 820 GB/s.
        Hardware("Trainium", {"fp32": 47.5 * T, "fp16": 190 * T, "bf16": 190 * T}, 820 * G, 32 * G,
                 f"{_AWS}/trainium.html (per chip)"),
        # Trainium2 (trn2): per chip 667 TFLOP/s bf16 and 1299 fp8 dense, 96 GB HBM at 2.9 TB/s.
        Hardware("Trainium2", {"bf16": 667 * T, "fp8": 1299 * T}, 2.9 * T, 96 * G,
                 f"{_AWS}/trainium2.html (per chip)"),
        # Inferentia2 (inf2): per chip 190 TFLOP/s fp16/bf16, 380 TOP/s int8, 32 GB HBM at 820 GB/s.
        Hardware("Inferentia2", {"fp32": 47.5 * T, "fp16": 190 * T, "bf16": 190 * T, "int8": 380 * T},
                 820 * G, 32 * G, f"{_AWS}/inferentia2.html (per chip)"),
        # Intel Gaudi 2: matrix engines 432 TFLOP/s bf16, 865 fp8; 96 GB HBM2e at 2.45 TB/s.
        Hardware("Gaudi2", {"bf16": 432 * T, "fp8": 865 * T}, 2.45 * T, 96 * G,
                 "Intel Gaudi 2 AI accelerator white paper / product brief (habana.ai)"),
        # Intel Gaudi 3: 1835 TFLOP/s bf16 and fp8 (matrix engines), 128 GB HBM2e at 3.7 TB/s.
        Hardware("Gaudi3", {"bf16": 1835 * T, "fp8": 1835 * T}, 3.7 * T, 128 * G,
                 "Intel Gaudi 3 AI Accelerator White Paper (2024)"),
        # Apple M1 Ultra: "64-core GPU ... 21 teraflops", 800 GB/s unified memory, up to 128 GB.
        # Apple gives the fp32 rate only; the fp16 entry assumes the same rate (no faster matrix
        # units on this GPU), so treat its ridge point as approximate.
        Hardware("M1-Ultra", {"fp32": 21 * T, "fp16": 21 * T}, 800 * G, 128 * G,
                 "https://www.apple.com/newsroom/2022/03/apple-unveils-m1-ultra-the-worlds-most-powerful-chip-for-a-personal-computer/"),
    ]
}


def get_hardware(name: str) -> Hardware:
    """Look up a :data:`HARDWARE` or :data:`ACCELERATORS` entry by name, ignoring case (``"h100-sxm"`` works)."""
    if isinstance(name, Hardware):
        return name
    if not isinstance(name, str):
        raise TypeError(f"name={name!r}: expected a hardware name string or a Hardware")
    for key, hw in (*HARDWARE.items(), *ACCELERATORS.items()):
        if key.lower() == name.strip().lower():
            return hw
    raise ValueError(f"name={name!r}: unknown hardware; known: {', '.join([*HARDWARE, *ACCELERATORS])}")
